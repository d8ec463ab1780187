"""BraTS label conventions in one place.

Internally every label map is stored in the *model class order*, which equals the
BraTS 2023 convention:

=====  =====================  ==========  ==========
index  class                  BraTS 2020  BraTS 2023
=====  =====================  ==========  ==========
0      background             0           0
1      NCR necrotic core      1           1
2      ED peritumoral edema   2           2
3      ET enhancing tumour    4           3
=====  =====================  ==========  ==========

Regions evaluated by BraTS: WT (whole tumour) = NCR+ED+ET, TC (tumour core) = NCR+ET,
ET = ET.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Convention = Literal["2020", "2023"]
CONVENTIONS: tuple[str, ...] = ("2020", "2023")

BACKGROUND, NCR, ED, ET = 0, 1, 2, 3
NUM_CLASSES = 4
CLASS_NAMES: dict[int, str] = {0: "background", 1: "NCR", 2: "ED", 3: "ET"}
CLASS_LONG_NAMES: dict[int, str] = {
    0: "background",
    1: "necrotic / non-enhancing core",
    2: "peritumoral edema",
    3: "enhancing tumour",
}
# RGB colours per internal class (ITK-SNAP-like: red NCR, green ED, yellow ET).
CLASS_COLOURS: dict[int, tuple[int, int, int]] = {
    0: (0, 0, 0),
    1: (230, 50, 50),
    2: (60, 200, 80),
    3: (250, 220, 40),
}

# Stored value of each internal class per convention.
_VALUES: dict[str, tuple[int, int, int, int]] = {"2020": (0, 1, 2, 4), "2023": (0, 1, 2, 3)}

REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
REGION_CLASSES: dict[str, tuple[int, ...]] = {"WT": (NCR, ED, ET), "TC": (NCR, ET), "ET": (ET,)}
REGION_COLOURS: dict[str, tuple[int, int, int]] = {
    "WT": (60, 200, 80),
    "TC": (230, 50, 50),
    "ET": (250, 220, 40),
}


def check_convention(convention: str) -> Convention:
    """Return ``convention`` as ``"2020"`` or ``"2023"``; raise ``ValueError`` otherwise."""
    c = str(convention)
    if c not in CONVENTIONS:
        raise ValueError(f"Unknown label convention {convention!r}: use '2020' (0/1/2/4) or '2023' (0/1/2/3).")
    return c  # type: ignore[return-value]


def label_values(convention: str) -> tuple[int, ...]:
    """Stored label values (background, NCR, ED, ET) for a convention."""
    return _VALUES[check_convention(convention)]


def present_values(seg: np.ndarray) -> set[float]:
    """Set of the distinct values in ``seg`` (fast path for small non-negative integer label maps)."""
    seg = np.asarray(seg)
    if seg.size == 0:
        return set()
    if seg.dtype.kind in "biu":
        lo, hi = int(seg.min()), int(seg.max())
        if hi - lo <= 8:  # a few equality tests beat sorting a 9M-voxel volume
            return {v for v in range(lo, hi + 1) if v in (lo, hi) or bool(np.any(seg == v))}
    return set(np.unique(seg).tolist())


def detect_convention(seg: np.ndarray) -> Convention | None:
    """Guess the convention of a stored label map from its values.

    Returns ``"2020"`` if label 4 occurs, ``"2023"`` if label 3 occurs, ``None`` when only
    0/1/2 occur (both conventions agree then).

    Raises:
        ValueError: unknown labels, or both 3 and 4 present.
    """
    values = present_values(seg)
    unknown = values - {0, 1, 2, 3, 4}
    if unknown:
        shown = sorted(unknown)
        listed = (f"{shown[:10]} ... ({len(shown)} distinct unknown values: an image, not a label map?)"
                  if len(shown) > 10 else f"{shown}")
        raise ValueError(f"unknown label values {listed}; BraTS uses 0/1/2/4 (2020) or 0/1/2/3 (2023)")
    if 3 in values and 4 in values:
        raise ValueError("labels 3 and 4 both present: mixes the 2023 (ET=3) and 2020 (ET=4) conventions")
    if 4 in values:
        return "2020"
    if 3 in values:
        return "2023"
    return None


def to_internal(seg: np.ndarray, convention: str | None = None) -> np.ndarray:
    """Convert a stored label map to internal classes 0..3 (uint8).

    Args:
        seg: integer label map in the 2020 or 2023 convention.
        convention: the map's convention; detected from the values when ``None``.

    Raises:
        ValueError: a value that is not a label of the convention (checked before any cast, so
            e.g. 259 or -1 never wrap around into a valid class).
    """
    seg = np.asarray(seg)
    if convention is None:
        convention = detect_convention(seg) or "2023"
    allowed = label_values(convention)
    unknown = present_values(seg) - set(allowed)
    if unknown:
        shown = sorted(unknown)[:10]
        raise ValueError(
            f"label values {shown} are not part of the {convention} convention {'/'.join(map(str, allowed))}"
        )
    out = seg.astype(np.uint8, copy=True)
    if convention == "2020":
        out[out == 4] = ET
    return out


def from_internal(labels: np.ndarray, convention: str) -> np.ndarray:
    """Convert internal classes 0..3 to stored values of ``convention`` (uint8)."""
    values = np.asarray(label_values(convention), dtype=np.uint8)
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError("internal label maps hold classes 0..3 only")
    return values[labels.astype(np.intp)]


def convert(seg: np.ndarray, source: str, target: str) -> np.ndarray:
    """Convert a stored label map between conventions."""
    return from_internal(to_internal(seg, source), target)


def region_mask(labels: np.ndarray, region: str) -> np.ndarray:
    """Boolean mask of a BraTS region (``"WT"``, ``"TC"`` or ``"ET"``) of an internal label map."""
    if region not in REGION_CLASSES:
        raise ValueError(f"unknown region {region!r}; use one of {REGIONS}")
    return np.isin(labels, REGION_CLASSES[region])


def regions(labels: np.ndarray) -> dict[str, np.ndarray]:
    """All three region masks of an internal label map."""
    return {r: region_mask(labels, r) for r in REGIONS}


def region_probabilities(class_probabilities: np.ndarray) -> np.ndarray:
    """Probability of each BraTS region, ``(X, Y, Z, 3)`` for WT, TC, ET, from class probabilities ``(4, X, Y, Z)``.

    WT = 1 - P(background), TC = P(NCR) + P(ET), ET = P(ET): the probability that a voxel lies in the region (for a
    region U-Net, WT is its WT sigmoid and TC, ET the products of the nested sigmoids). So WT >= TC >= ET voxel by
    voxel.
    """
    probs = np.asarray(class_probabilities, dtype=np.float32)
    if probs.ndim != 4 or probs.shape[0] != NUM_CLASSES:
        raise ValueError(f"class probabilities must be ({NUM_CLASSES}, X, Y, Z), got shape {probs.shape}")
    out = np.stack([1.0 - probs[BACKGROUND], probs[NCR] + probs[ET], probs[ET]], axis=-1)
    return np.clip(out, 0.0, 1.0, out=out)
