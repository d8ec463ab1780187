"""Segmentation metrics (Dice, HD95, sensitivity, specificity) and tumour volumes.

Empty masks follow the legacy BraTS evaluation rules:

==========================  ======  ==============  ===========  ===========
case                        Dice    HD95            sensitivity  specificity
==========================  ======  ==============  ===========  ===========
pred and ref empty          1       0               1            computed
one empty, the other not    0       ``HD95_EMPTY``  0 or 1 [#]_  computed
==========================  ======  ==============  ===========  ===========

.. [#] Sensitivity with an empty reference is 1 when the prediction is empty too and 0
   otherwise (nothing to find: any prediction is a miss); with an empty prediction and a
   non-empty reference it is 0 by the formula. Specificity with no reference negatives
   (reference fills the volume) is 1.

HD95 is the maximum of the two directed 95th percentiles of surface distances
(prediction surface -> reference surface and back), the definition of MONAI's
``compute_hausdorff_distance(percentile=95)`` and DeepMind's ``surface-distance``. The
surface of a mask is the mask minus its 6-connected erosion (voxels beyond the volume
count as background); distances are Euclidean in mm via ``distance_transform_edt`` with
``sampling=spacing``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from core.io.labels import CLASS_NAMES, ED, ET, NCR, NUM_CLASSES, REGION_CLASSES, REGIONS, region_mask
from core.preprocessing.preprocess import bounding_box

HD95_EMPTY = 373.13
"""HD95 (mm) when exactly one of prediction and reference is empty (BraTS legacy rule)."""

METRICS: tuple[str, ...] = ("dice", "hd95", "sensitivity", "specificity")

Spacing = Sequence[float]


def _pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} shapes differ")
    return pred, ref


def _counts(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    """True positives, predicted positives, reference positives."""
    return (int(np.count_nonzero(pred & ref)), int(np.count_nonzero(pred)), int(np.count_nonzero(ref)))


def _dice(tp: int, n_pred: int, n_ref: int) -> float:
    return 1.0 if n_pred + n_ref == 0 else 2.0 * tp / (n_pred + n_ref)


def _sensitivity(tp: int, n_pred: int, n_ref: int) -> float:
    if n_ref == 0:
        return 1.0 if n_pred == 0 else 0.0
    return tp / n_ref


def _specificity(tp: int, n_pred: int, n_ref: int, n_total: int) -> float:
    negatives = n_total - n_ref
    if negatives == 0:
        return 1.0
    false_pos = n_pred - tp
    return (negatives - false_pos) / negatives


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice overlap ``2|P∩R| / (|P| + |R|)`` of two masks (non-zero = foreground); 1 if both empty."""
    return _dice(*_counts(*_pair(pred, ref)))


def region_dice(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Dice of WT / TC / ET between two internal label maps (0..3), from one joint label histogram.

    The same numbers as :func:`dice` on each region's masks in one pass over the volume (the Edit
    mask page shows them after every stroke). Both regions empty: 1.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"shape mismatch: {pred.shape} vs {ref.shape}")
    joint = _sparse_histogram(_valid_classes(pred).astype(np.uint8, copy=False).ravel() * np.uint8(NUM_CLASSES)
                              + _valid_classes(ref).astype(np.uint8, copy=False).ravel(),
                              NUM_CLASSES * NUM_CLASSES).reshape(NUM_CLASSES, NUM_CLASSES)
    out = {}
    for region in REGIONS:
        members = list(REGION_CLASSES[region])
        both, in_pred, in_ref = joint[np.ix_(members, members)].sum(), joint[members].sum(), joint[:, members].sum()
        out[region] = 1.0 if in_pred + in_ref == 0 else float(2 * both / (in_pred + in_ref))
    return out


def sensitivity(pred: np.ndarray, ref: np.ndarray) -> float:
    """True-positive rate ``|P∩R| / |R|``; with an empty reference 1 if the prediction is empty, else 0."""
    return _sensitivity(*_counts(*_pair(pred, ref)))


def specificity(pred: np.ndarray, ref: np.ndarray) -> float:
    """True-negative rate ``|¬P∩¬R| / |¬R|``; 1 when the reference has no negatives."""
    pred, ref = _pair(pred, ref)
    return _specificity(*_counts(pred, ref), n_total=ref.size)


def _check_spacing(spacing: Spacing, ndim: int) -> tuple[float, ...]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or not all(s > 0 for s in sp):
        raise ValueError(f"spacing needs {ndim} positive voxel sizes (mm), got {tuple(spacing)}")
    return sp


def _grow(box: tuple[slice, ...], shape: tuple[int, ...], margin: int = 1) -> tuple[slice, ...]:
    """Bounding box grown by ``margin`` voxels, clipped to the volume."""
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape))


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Spacing = (1.0, 1.0, 1.0)) -> float:
    """95th-percentile symmetric Hausdorff distance (mm) between two masks.

    Computed on the bounding box of both masks plus one voxel (exact: every surface voxel
    lies inside it and the EDT is exact). Both empty -> 0, one empty -> ``HD95_EMPTY``.

    Args:
        pred: predicted mask.
        ref: reference mask.
        spacing: voxel size per axis in mm.
    """
    pred, ref = _pair(pred, ref)
    sp = _check_spacing(spacing, pred.ndim)
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return 0.0
    if has_pred != has_ref:
        return HD95_EMPTY
    box = _grow(bounding_box(pred | ref), pred.shape)  # type: ignore[arg-type]
    surf_pred, surf_ref = _surface(pred[box]), _surface(ref[box])
    to_ref = ndimage.distance_transform_edt(~surf_ref, sampling=sp)[surf_pred]
    to_pred = ndimage.distance_transform_edt(~surf_pred, sampling=sp)[surf_ref]
    return float(max(np.percentile(to_ref, 95), np.percentile(to_pred, 95)))


def region_metrics(pred_labels: np.ndarray, ref_labels: np.ndarray,
                   spacing: Spacing = (1.0, 1.0, 1.0)) -> dict[str, dict[str, float]]:
    """Dice, HD95, sensitivity and specificity for the BraTS regions WT, TC and ET.

    Args:
        pred_labels: predicted internal label map (0..3).
        ref_labels: reference internal label map (0..3), same shape.
        spacing: voxel size in mm.

    Returns:
        ``{"WT": {"dice": ..., "hd95": ..., "sensitivity": ..., "specificity": ...}, "TC": ..., "ET": ...}``.
    """
    pred_labels = np.asarray(pred_labels)
    ref_labels = np.asarray(ref_labels)
    if pred_labels.shape != ref_labels.shape:
        raise ValueError(f"prediction {pred_labels.shape} and reference {ref_labels.shape} "
                         "label maps differ in shape")
    # All regions live inside the tumour bounding box: work there (specificity uses the full count).
    n_total = ref_labels.size
    box = bounding_box((pred_labels != 0) | (ref_labels != 0))
    if box is not None:
        box = _grow(box, pred_labels.shape)
        pred_labels, ref_labels = pred_labels[box], ref_labels[box]
    out: dict[str, dict[str, float]] = {}
    for region in REGIONS:
        pred, ref = region_mask(pred_labels, region), region_mask(ref_labels, region)
        counts = _counts(pred, ref)
        out[region] = {
            "dice": _dice(*counts),
            "hd95": hd95(pred, ref, spacing),
            "sensitivity": _sensitivity(*counts),
            "specificity": _specificity(*counts, n_total=n_total),
        }
    return out


def _valid_classes(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError("volumes need an internal label map with classes 0..3 "
                         "(convert with core.io.labels.to_internal)")
    return labels


def _sparse_histogram(codes: np.ndarray, bins: int) -> np.ndarray:
    """``np.bincount(codes, minlength=bins)`` of small non-negative codes, counting only the non-zero ones.

    A tumour is a few percent of a scan: ~7x faster than a bincount over every voxel (which first widens
    them all to intp), so the Edit mask page's tables keep up with each stroke.
    """
    codes = np.asarray(codes).ravel()
    nonzero = codes[codes != 0]
    counts = np.bincount(nonzero, minlength=bins)
    counts[0] = codes.size - nonzero.size
    return counts


def _class_counts(labels: np.ndarray) -> np.ndarray:
    return _sparse_histogram(_valid_classes(labels).astype(np.uint8, copy=False), NUM_CLASSES)


def _voxel_ml(spacing: Spacing) -> float:
    return float(np.prod(_check_spacing(spacing, 3))) / 1000.0


def _class_ml(counts: np.ndarray, voxel: float) -> dict[str, float]:
    return {CLASS_NAMES[c]: float(counts[c]) * voxel for c in (NCR, ED, ET)}


def _region_ml(counts: np.ndarray, voxel: float) -> dict[str, float]:
    return {r: float(sum(counts[c] for c in REGION_CLASSES[r])) * voxel for r in REGIONS}


def class_volumes_ml(labels: np.ndarray, spacing: Spacing = (1.0, 1.0, 1.0)) -> dict[str, float]:
    """Volume in mL of each tumour class: ``{"NCR": ..., "ED": ..., "ET": ...}``."""
    return _class_ml(_class_counts(labels), _voxel_ml(spacing))


def volumes_ml(labels: np.ndarray, spacing: Spacing = (1.0, 1.0, 1.0)) -> dict[str, float]:
    """Volume in mL of each BraTS region: ``{"WT": ..., "TC": ..., "ET": ...}`` (voxels x prod(spacing) / 1000)."""
    return _region_ml(_class_counts(labels), _voxel_ml(spacing))


def region_and_class_volumes_ml(labels: np.ndarray, spacing: Spacing = (1.0, 1.0, 1.0)) -> dict[str, float]:
    """:func:`volumes_ml` and :func:`class_volumes_ml` from one count of the volume: WT, TC, ET, NCR, ED (mL)."""
    counts, voxel = _class_counts(labels), _voxel_ml(spacing)
    return {**_region_ml(counts, voxel), **_class_ml(counts, voxel)}


# ------------------------------------------------------------------------ lesion-wise (BraTS 2023)
LESION_DILATION = 3  # voxels a reference lesion is grown by when matching predicted lesions (BraTS 2023 glioma)
LESION_MIN_VOXELS = 50  # lesions smaller than this are ignored on both sides (BraTS 2023)
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


def _lesions(mask: np.ndarray, min_voxels: int) -> tuple[np.ndarray, list[int]]:
    """26-connected components of ``mask`` and the ids of those with at least ``min_voxels`` voxels."""
    components, n = ndimage.label(mask, structure=_CONNECTIVITY)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    return components, [i for i in range(1, n + 1) if sizes[i] >= min_voxels]


def lesion_wise_region(pred: np.ndarray, ref: np.ndarray, spacing: Spacing = (1.0, 1.0, 1.0), *,
                       dilation: int = LESION_DILATION, min_voxels: int = LESION_MIN_VOXELS) -> dict[str, float]:
    """Lesion-wise Dice and HD95 of one binary region, as defined by the BraTS 2023 challenge.

    Reference lesions (26-connected components of at least ``min_voxels``) whose ``dilation``-voxel
    dilations touch are merged first. Each reference lesion is matched with every predicted lesion
    that meets its dilation; its Dice and HD95 are computed against the union of those. Predicted
    lesions matched to no reference lesion are false positives (Dice 0, HD95 ``HD95_EMPTY``); missed
    reference lesions score the same. Scores are averaged over reference lesions + false positives;
    with neither, Dice 1 and HD95 0. (Re-implemented: the official ``brats-evaluation`` /
    ``panoptica`` packages pin numpy < 2.3 and pandas < 3, which conflict with this project's stack.)

    Returns:
        ``{"dice": ..., "hd95": ..., "lesions": n_ref, "false_positives": n_fp}``.
    """
    pred, ref = _pair(pred, ref)
    sp = _check_spacing(spacing, pred.ndim)
    pred_cc, pred_ids = _lesions(pred, min_voxels)
    ref_cc, ref_ids = _lesions(ref, min_voxels)
    # merge reference lesions whose dilations touch (the official "combined by dilation" step)
    kept_ref = np.isin(ref_cc, ref_ids)
    grown = ndimage.binary_dilation(kept_ref, structure=_CONNECTIVITY, iterations=dilation)
    grown_cc, _ = ndimage.label(grown, structure=_CONNECTIVITY)
    merged = np.where(kept_ref, grown_cc, 0)
    merged_ids = [int(i) for i in np.unique(merged) if i]
    kept_pred = np.where(np.isin(pred_cc, pred_ids), pred_cc, 0)
    dices, hds, matched = [], [], set()
    for lesion_id in merged_ids:
        lesion = merged == lesion_id
        reach = (grown_cc == lesion_id)  # the lesion's dilation (its merged group)
        hits = [int(i) for i in np.unique(kept_pred[reach]) if i]
        matched.update(hits)
        matched_pred = np.isin(kept_pred, hits) if hits else np.zeros_like(lesion)
        counts = _counts(matched_pred, lesion)
        dices.append(_dice(*counts))
        hds.append(hd95(matched_pred, lesion, sp))
    false_positives = len(set(pred_ids) - matched)
    n = len(merged_ids) + false_positives
    if n == 0:
        return {"dice": 1.0, "hd95": 0.0, "lesions": 0, "false_positives": 0}
    return {"dice": float(sum(dices) / n), "hd95": float((sum(hds) + false_positives * HD95_EMPTY) / n),
            "lesions": len(merged_ids), "false_positives": false_positives}


def lesion_wise_metrics(pred_labels: np.ndarray, ref_labels: np.ndarray, spacing: Spacing = (1.0, 1.0, 1.0)
                        ) -> dict[str, dict[str, float]]:
    """BraTS 2023 lesion-wise Dice / HD95 (:func:`lesion_wise_region`) for WT, TC and ET."""
    pred_labels, ref_labels = np.asarray(pred_labels), np.asarray(ref_labels)
    if pred_labels.shape != ref_labels.shape:
        raise ValueError(f"prediction {pred_labels.shape} and reference {ref_labels.shape} label maps differ in shape")
    return {r: lesion_wise_region(region_mask(pred_labels, r), region_mask(ref_labels, r), spacing) for r in REGIONS}
