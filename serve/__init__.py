"""Serving BraTS Studio: a REST API (``serve.api``) and a Ray batch runner (``serve.batch``).

``serve`` imports ``core``; ``core`` never imports ``serve``, FastAPI or Ray.
"""
