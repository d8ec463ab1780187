"""Benchmarks of serving: the REST API under concurrent clients and Ray batch segmentation."""
