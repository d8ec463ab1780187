"""Benchmarks of the U-Net segmentation: end-to-end and forward-pass speed, precision, inference context, metrics."""
