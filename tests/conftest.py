"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_ROOT = ROOT.parent / "shared" / "data" / "brats-real"

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def real_root() -> Path:
    """Folder of the real BraTS cases beside the project; skips the test when absent."""
    if not REAL_ROOT.is_dir():
        pytest.skip(f"real BraTS cases not found at {REAL_ROOT}")
    return REAL_ROOT
