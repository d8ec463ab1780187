"""Tests for core.segmentation.metrics: hand-computed Dice/HD95/sensitivity/specificity, BraTS empty rules, volumes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from core.segmentation import metrics
from core.segmentation.metrics import (
    HD95_EMPTY,
    class_volumes_ml,
    dice,
    hd95,
    region_metrics,
    sensitivity,
    specificity,
    volumes_ml,
)


def _box(shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


def _brute_hd95(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Independent HD95: explicit surface points and all pairwise distances."""
    def surface_points(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, 1)
        core = padded[1:-1, 1:-1, 1:-1].copy()
        for axis in range(3):
            for shift in (-1, 1):
                core &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(mask & ~core) * np.asarray(spacing)

    p, r = surface_points(pred), surface_points(ref)
    d = cdist(p, r)
    return float(max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95)))


def test_dice_two_boxes_known_overlap() -> None:
    a = _box((10, 10, 10), (0, 0, 0), (4, 4, 4))   # 64 voxels
    b = _box((10, 10, 10), (2, 0, 0), (6, 4, 4))   # 64 voxels, overlap 2*4*4 = 32
    assert dice(a, b) == pytest.approx(2 * 32 / 128)
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0


def test_sensitivity_specificity_by_hand() -> None:
    ref = _box((10, 10, 10), (0, 0, 0), (5, 2, 2))     # 20 voxels
    pred = _box((10, 10, 10), (3, 0, 0), (8, 2, 2))    # 20 voxels, 2*2*2 = 8 in ref
    assert sensitivity(pred, ref) == pytest.approx(8 / 20)
    # negatives of ref: 1000 - 20 = 980; false positives 12.
    assert specificity(pred, ref) == pytest.approx((980 - 12) / 980)


def test_empty_mask_rules() -> None:
    empty = np.zeros((6, 6, 6), dtype=bool)
    some = _box((6, 6, 6), (1, 1, 1), (3, 3, 3))
    assert dice(empty, empty) == 1.0
    assert hd95(empty, empty) == 0.0
    assert dice(some, empty) == 0.0 and dice(empty, some) == 0.0
    assert hd95(some, empty) == HD95_EMPTY == 373.13
    assert hd95(empty, some) == HD95_EMPTY
    assert sensitivity(empty, empty) == 1.0
    assert sensitivity(some, empty) == 0.0
    assert sensitivity(empty, some) == 0.0
    assert specificity(empty, empty) == 1.0
    full = np.ones((6, 6, 6), dtype=bool)
    assert specificity(full, full) == 1.0  # no reference negatives


def test_hd95_two_points_anisotropic_spacing() -> None:
    a = np.zeros((8, 8, 8), dtype=bool)
    b = np.zeros((8, 8, 8), dtype=bool)
    a[1, 2, 3] = True
    b[4, 6, 3] = True
    spacing = (0.5, 2.0, 3.0)
    expected = float(np.hypot(3 * 0.5, 4 * 2.0))
    assert hd95(a, b, spacing) == pytest.approx(expected)
    assert hd95(b, a, spacing) == pytest.approx(expected)


@pytest.mark.parametrize("k", [1, 3])
def test_hd95_cube_vs_shifted_cube(k: int) -> None:
    a = _box((20, 16, 16), (4, 4, 4), (10, 10, 10))  # 6^3 cube, 152 surface voxels
    # The 36 voxels of the leading face (24% > 5% of the surface) are exactly k voxels from
    # the shifted cube's surface, every other surface voxel is closer: HD95 = k * spacing.
    b = np.roll(a, k, axis=0)
    assert hd95(a, b) == pytest.approx(k)
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(2.0 * k)
    assert hd95(a, np.roll(a, k, axis=1), (2.0, 1.0, 1.0)) == pytest.approx(k)
    assert hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(_brute_hd95(a, b, (2.0, 1.0, 1.0)))
    assert hd95(a, a) == 0.0


def test_hd95_is_max_of_directed_percentiles() -> None:
    # ref = one voxel; pred = that voxel + one at distance 10: directed pred->ref = {0, 10}
    # (95th pct 9.5), ref->pred = {0}. Pooled distances would give 9.0 instead.
    ref = np.zeros((3, 3, 14), dtype=bool)
    ref[1, 1, 1] = True
    pred = ref.copy()
    pred[1, 1, 11] = True
    assert hd95(pred, ref) == pytest.approx(9.5)


def test_hd95_matches_brute_force_on_random_blobs() -> None:
    rng = np.random.default_rng(3)
    for _ in range(3):
        a = rng.random((14, 12, 10)) > 0.8
        b = rng.random((14, 12, 10)) > 0.85
        spacing = tuple(rng.uniform(0.5, 2.0, 3))
        assert hd95(a, b, spacing) == pytest.approx(_brute_hd95(a, b, spacing))


def test_hd95_mask_touching_volume_border() -> None:
    # Cropping to the bounding box must not change the result at the volume border.
    a = _box((10, 10, 10), (0, 0, 0), (10, 3, 3))
    b = _box((10, 10, 10), (0, 0, 0), (10, 5, 3))
    assert hd95(a, b) == pytest.approx(_brute_hd95(a, b, (1.0, 1.0, 1.0)))


def test_shape_and_spacing_errors() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="spacing"):
        hd95(np.ones((2, 2, 2)), np.ones((2, 2, 2)), (1.0, 1.0))


def test_region_metrics_regions_and_values() -> None:
    ref = np.zeros((20, 20, 20), dtype=np.uint8)
    ref[5:15, 5:15, 5:15] = 2          # ED
    ref[8:12, 8:12, 8:12] = 1          # NCR
    ref[8:12, 8:12, 10:12] = 3         # ET
    pred = ref.copy()
    pred[8:12, 8:12, 10:12] = 1        # ET predicted as NCR: WT and TC unchanged, ET missed
    pred[0, 0, 0] = 2                  # one false-positive WT voxel far away
    out = region_metrics(pred, ref, spacing=(1.0, 1.0, 1.0))
    assert set(out) == {"WT", "TC", "ET"}
    assert set(out["WT"]) == set(metrics.METRICS)
    n_wt = 1000
    assert out["WT"]["dice"] == pytest.approx(2 * n_wt / (2 * n_wt + 1))
    assert out["WT"]["sensitivity"] == 1.0
    assert out["WT"]["specificity"] == pytest.approx((8000 - 1000 - 1) / (8000 - 1000))
    assert out["TC"]["dice"] == 1.0 and out["TC"]["hd95"] == 0.0
    assert out["ET"]["dice"] == 0.0 and out["ET"]["hd95"] == HD95_EMPTY
    assert out["ET"]["sensitivity"] == 0.0
    assert out["ET"]["specificity"] == 1.0
    # The bounding-box shortcut agrees with the single-mask functions on the full grid.
    wt_pred, wt_ref = pred > 0, ref > 0
    assert out["WT"]["hd95"] == pytest.approx(hd95(wt_pred, wt_ref))
    assert out["WT"]["specificity"] == pytest.approx(specificity(wt_pred, wt_ref))


def test_region_metrics_both_empty() -> None:
    empty = np.zeros((5, 5, 5), dtype=np.uint8)
    out = region_metrics(empty, empty)
    for region in ("WT", "TC", "ET"):
        assert out[region] == {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "specificity": 1.0}


def test_volumes_anisotropic_spacing() -> None:
    labels = np.zeros((10, 10, 10), dtype=np.uint8)
    labels.flat[:30] = 1   # NCR 30 voxels
    labels.flat[30:80] = 2  # ED 50
    labels.flat[80:100] = 3  # ET 20
    spacing = (0.5, 2.0, 3.0)  # 3 mm^3 per voxel
    assert class_volumes_ml(labels, spacing) == pytest.approx({"NCR": 0.09, "ED": 0.15, "ET": 0.06})
    assert volumes_ml(labels, spacing) == pytest.approx({"WT": 0.3, "TC": 0.15, "ET": 0.06})
    with pytest.raises(ValueError, match="0..3"):
        volumes_ml(np.full((2, 2, 2), 4, dtype=np.uint8))


# ------------------------------------------------------------------------------ lesion-wise (BraTS 2023)
def _cube(mask: np.ndarray, corner: tuple[int, int, int], size: int) -> None:
    mask[tuple(slice(c, c + size) for c in corner)] = True


def test_lesion_wise_scores_missed_and_false_positive_lesions():
    from core.segmentation.metrics import HD95_EMPTY, lesion_wise_region

    ref = np.zeros((60, 60, 60), bool)
    pred = np.zeros_like(ref)
    _cube(ref, (5, 5, 5), 6)  # found exactly
    _cube(ref, (40, 40, 40), 6)  # missed
    _cube(pred, (5, 5, 5), 6)
    _cube(pred, (5, 40, 40), 5)  # false positive far from any reference lesion
    out = lesion_wise_region(pred, ref)
    assert out["lesions"] == 2 and out["false_positives"] == 1
    assert out["dice"] == pytest.approx(1 / 3)
    assert out["hd95"] == pytest.approx(2 * HD95_EMPTY / 3)


def test_lesion_wise_ignores_small_lesions_and_merges_close_ones():
    from core.segmentation.metrics import lesion_wise_region

    ref = np.zeros((50, 50, 50), bool)
    _cube(ref, (10, 10, 10), 5)
    _cube(ref, (10, 10, 17), 5)  # 2 voxels apart: merged with the first into one lesion
    pred = ref.copy()
    _cube(pred, (40, 40, 40), 3)  # 27 voxels < 50: ignored, not a false positive
    out = lesion_wise_region(pred, ref)
    assert out == {"dice": 1.0, "hd95": 0.0, "lesions": 1, "false_positives": 0}
    empty = np.zeros_like(ref)
    assert lesion_wise_region(empty, empty)["dice"] == 1.0
    assert lesion_wise_region(empty, ref)["dice"] == 0.0


def test_lesion_wise_metrics_cover_the_three_regions():
    from core.segmentation.metrics import lesion_wise_metrics

    ref = np.zeros((30, 30, 30), np.uint8)
    ref[5:15, 5:15, 5:15] = 2
    ref[8:12, 8:12, 8:12] = 3
    pred = ref.copy()
    pred[8:12, 8:12, 8:12] = 2  # ET called edema: WT perfect, TC and ET missed
    out = lesion_wise_metrics(pred, ref)
    assert out["WT"]["dice"] == 1.0 and out["TC"]["dice"] == 0.0 and out["ET"]["dice"] == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        lesion_wise_metrics(pred[:-1], ref)


def test_region_dice_equals_dice_of_the_region_masks() -> None:
    from core.io.labels import region_mask
    from core.segmentation.metrics import region_dice

    rng = np.random.default_rng(3)
    pred = rng.integers(0, 4, (20, 18, 9)).astype(np.uint8)
    ref = np.where(rng.random(pred.shape) < 0.7, pred, rng.integers(0, 4, pred.shape)).astype(np.uint8)
    fast = region_dice(pred, ref)
    assert fast == pytest.approx({r: dice(region_mask(pred, r), region_mask(ref, r)) for r in ("WT", "TC", "ET")})
    no_et = np.where(pred == 3, 1, pred).astype(np.uint8)
    assert region_dice(no_et, no_et)["ET"] == 1.0  # both empty
    with pytest.raises(ValueError):
        region_dice(pred, ref[:-1])


def test_a_reference_without_enhancing_tumour_is_scored_the_brats_way():
    """BraTS: empty reference + empty prediction = Dice 1 / HD95 0; empty reference + any prediction = 0 / 373.13
    (legacy per-region scores, what train.evaluate reports first); lesion-wise (2023) ignores predicted lesions
    under 50 voxels, so a few stray ET voxels cost nothing there and a larger ET blob counts as a false positive."""
    from core.segmentation.metrics import HD95_EMPTY, lesion_wise_metrics, region_dice, region_metrics

    ref = np.zeros((40, 40, 40), np.uint8)
    ref[5:25, 5:25, 5:25] = 2  # oedema
    ref[10:20, 10:20, 10:20] = 1  # non-enhancing core, no ET at all
    pred = ref.copy()
    assert region_metrics(pred, ref)["ET"]["dice"] == 1.0 and region_metrics(pred, ref)["ET"]["hd95"] == 0.0
    assert region_dice(pred, ref)["ET"] == 1.0 and lesion_wise_metrics(pred, ref)["ET"]["dice"] == 1.0
    few = pred.copy()
    few[12:14, 12:14, 12:14] = 3  # 8 stray ET voxels
    assert region_metrics(few, ref)["ET"]["dice"] == 0.0 and region_metrics(few, ref)["ET"]["hd95"] == HD95_EMPTY
    assert region_dice(few, ref)["ET"] == 0.0
    assert lesion_wise_metrics(few, ref)["ET"]["dice"] == 1.0  # below the 50-voxel lesion size
    blob = pred.copy()
    blob[11:16, 11:16, 11:16] = 3  # 125 voxels
    assert lesion_wise_metrics(blob, ref)["ET"] == {"dice": 0.0, "hd95": HD95_EMPTY, "lesions": 0,
                                                    "false_positives": 1}
    assert region_metrics(blob, ref)["TC"]["dice"] == 1.0  # ET inside the core leaves TC unchanged


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64])
def test_class_volumes_and_region_dice_count_every_voxel_of_any_integer_map(dtype) -> None:
    """The Edit page's tables count only non-zero voxels (speed): the totals must still be those of a full count."""
    from core.segmentation.metrics import region_and_class_volumes_ml, region_dice

    rng = np.random.default_rng(7)
    labels = np.where(rng.random((16, 12, 10)) < 0.9, 0, rng.integers(1, 4, (16, 12, 10))).astype(dtype)
    spacing = (1.0, 2.0, 0.5)
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=4)
    assert class_volumes_ml(labels, spacing) == pytest.approx(
        {"NCR": counts[1] / 1000, "ED": counts[2] / 1000, "ET": counts[3] / 1000})
    assert region_and_class_volumes_ml(labels, spacing) == {**volumes_ml(labels, spacing),
                                                           **class_volumes_ml(labels, spacing)}
    empty = np.zeros_like(labels)
    assert region_dice(labels, empty) == {"WT": 0.0, "TC": 0.0, "ET": 0.0}
    assert region_dice(empty, empty) == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    with pytest.raises(ValueError, match="classes 0..3"):
        region_dice(np.where(labels == 3, 4, labels), labels)  # BraTS 2020's ET value, not converted
