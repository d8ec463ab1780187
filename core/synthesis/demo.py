"""The built-in demo case: a synthetic glioma phantom on the BraTS grid, nothing downloaded.

Generated deterministically with a fixed seed by :func:`core.synthesis.phantom.generate_phantom` on first
use and kept in memory; every call returns an independent copy.
"""

from __future__ import annotations

import copy
import functools

from core.io.case import Case

DEMO_SEED = 20240
DEMO_NAME = "BraTS-Studio-demo"


@functools.lru_cache(maxsize=1)
def _demo_case() -> Case:
    from core.synthesis.phantom import generate_phantom

    case = generate_phantom(DEMO_SEED)
    case.name = DEMO_NAME
    return case


def demo_case() -> Case:
    """The demo case (image, reference segmentation, BraTS affine); a fresh copy per call."""
    return copy.deepcopy(_demo_case())
