"""Tests for core.preprocessing.preprocess: brain mask, z-score, CropBox round trip, crop_to_brain, prepare_input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from core.preprocessing.preprocess import (
    CropBox,
    bounding_box,
    brain_mask,
    crop_to_brain,
    fill_holes,
    prepare_input,
    zscore,
)


def _ball_image(shape: tuple[int, int, int], radius: float, seed: int = 0, channels: int = 4) -> np.ndarray:
    """Skull-stripped-like image: positive random intensities in a ball, exactly 0 outside."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    centre = np.asarray(shape, dtype=np.float32).reshape(3, 1, 1, 1) / 2
    inside = np.sqrt(((grid - centre) ** 2).sum(0)) < radius
    scale = (np.arange(channels, dtype=np.float32) + 1)[:, None, None, None]
    image = rng.uniform(10, 500, size=(channels, *shape)).astype(np.float32) * scale
    return image * inside


def test_brain_mask_fills_internal_hole() -> None:
    image = _ball_image((24, 26, 20), radius=9)
    solid = (image != 0).any(0)
    image[:, 10:13, 11:14, 9:11] = 0  # cavity in every modality (e.g. a resection cavity)
    mask = brain_mask(image)
    assert mask.dtype == bool and mask.shape == (24, 26, 20)
    assert np.array_equal(mask, solid)
    assert not mask[0, 0, 0]


def test_brain_mask_any_modality() -> None:
    image = np.zeros((4, 6, 6, 6), dtype=np.float32)
    image[3, 1, 1, 1] = 5.0   # only FLAIR is non-zero here
    image[0, 4, 4, 4] = -2.0  # negative intensities count too
    mask = brain_mask(image)
    assert mask[1, 1, 1] and mask[4, 4, 4] and mask.sum() == 2


def test_fill_holes_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    for _ in range(5):
        mask = rng.random((15, 12, 17)) > 0.35
        assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
    assert not fill_holes(np.zeros((3, 3, 3), bool)).any()


def test_zscore_inside_mask_and_zero_outside() -> None:
    image = _ball_image((20, 22, 18), radius=8)
    image[image == 0] = 1000.0  # outside values must not leak into the statistics
    mask = brain_mask(np.where(image == 1000.0, 0, image))
    out = zscore(image, mask)
    assert out.dtype == np.float32 and out.shape == image.shape
    for c in range(4):
        assert out[c][mask].mean() == pytest.approx(0.0, abs=1e-5)
        assert out[c][mask].std() == pytest.approx(1.0, abs=1e-4)
    assert not out[:, ~mask].any()


def test_zscore_constant_channel_and_empty_mask() -> None:
    image = _ball_image((10, 10, 10), radius=4)
    mask = image[0] != 0
    image[2][mask] = 7.0  # constant inside the brain
    out = zscore(image, mask)
    assert np.isfinite(out).all()
    assert not out[2].any()
    assert not zscore(image, np.zeros((10, 10, 10), bool)).any()


def test_zscore_rejects_nan_and_shape_mismatch() -> None:
    image = _ball_image((8, 8, 8), radius=3)
    mask = image[0] != 0
    with pytest.raises(ValueError, match="do not match"):
        zscore(image, mask[:-1])
    image[1, 4, 4, 4] = np.nan
    with pytest.raises(ValueError, match="channel 1"):
        zscore(image, mask)


@pytest.mark.parametrize(
    ("shape", "lo", "hi"),
    [
        ((37, 50, 23), (10, 12, 5), (20, 30, 15)),   # interior, odd shape
        ((37, 50, 23), (0, 0, 0), (37, 50, 23)),     # mask touches every border
        ((37, 50, 23), (30, 1, 20), (37, 4, 23)),    # margin clipped at the far border
        ((5, 40, 9), (1, 2, 3), (4, 38, 7)),         # axes shorter than 16: padding beyond the volume
    ],
)
@pytest.mark.parametrize("margin", [0, 3, 8])
def test_crop_box_round_trip(shape: tuple[int, int, int], lo: tuple[int, ...], hi: tuple[int, ...],
                             margin: int) -> None:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    box = crop_to_brain(mask, margin=margin, multiple=16)
    assert all(s % 16 == 0 and s > 0 for s in box.out_shape)
    # The crop contains the mask plus its (clipped) margin.
    for axis in range(3):
        assert box.start[axis] <= max(lo[axis] - margin, 0)
        assert box.stop[axis] >= min(hi[axis] + margin, shape[axis])
        # Padding only where the axis is shorter than the output side.
        if box.pad_before[axis] or box.pad_after[axis]:
            assert (box.start[axis], box.stop[axis]) == (0, shape[axis])
            assert abs(box.pad_before[axis] - box.pad_after[axis]) <= 1

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *shape)).astype(np.float32) + 5
    y = box.apply(x)
    assert y.shape == (2, *box.out_shape)
    padding = np.ones(box.out_shape, bool)
    padding[box.inner_slices] = False
    assert not y[:, padding].any()  # padding is zero
    back = box.invert(y, fill=-1.0)
    inside = np.zeros(shape, bool)
    inside[box.slices] = True
    assert np.array_equal(back[:, inside], x[:, inside])
    assert (back[:, ~inside] == -1.0).all()
    # 3-D arrays and dtypes are kept.
    labels = (x[0] > 5).astype(np.uint8)
    assert box.invert(box.apply(labels)).dtype == np.uint8
    assert np.array_equal(box.invert(box.apply(labels))[inside], labels[inside])


def test_crop_box_exact_whole_volume_and_per_channel_fill() -> None:
    shape = (37, 50, 23)
    box = crop_to_brain(np.ones(shape, bool), margin=8, multiple=16)
    assert box.out_shape == (48, 64, 32)
    assert box.pad_before == (5, 7, 4) and box.pad_after == (6, 7, 5)
    x = np.random.default_rng(2).normal(size=shape)
    assert np.array_equal(box.invert(box.apply(x)), x)  # whole volume kept: exact inverse
    inner = crop_to_brain(_ball_image(shape, 6)[0] != 0, margin=2)
    probs = np.zeros((4, *inner.out_shape), np.float32)
    full = inner.invert(probs, fill=(1.0, 0.0, 0.0, 0.0))
    outside = np.ones(shape, bool)
    outside[inner.slices] = False
    assert (full[0][outside] == 1).all() and not full[1:][:, outside].any()


def test_crop_to_brain_empty_mask_and_bad_args() -> None:
    box = crop_to_brain(np.zeros((20, 33, 16), bool))
    assert (box.start, box.stop) == ((0, 0, 0), (20, 33, 16))
    assert box.out_shape == (32, 48, 16)
    with pytest.raises(ValueError):
        crop_to_brain(np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="does not end with"):
        box.invert(np.zeros((20, 33, 16)))


def test_crop_box_json_round_trip_and_validation() -> None:
    box = CropBox((37, 50, 23), (3, 4, 0), (35, 36, 23), (0, 0, 4), (0, 0, 5))
    again = CropBox.from_dict(json.loads(json.dumps(box.to_dict())))
    assert again == box
    with pytest.raises(ValueError, match="start < stop"):
        CropBox((10, 10, 10), (5, 0, 0), (5, 10, 10))
    with pytest.raises(ValueError, match="missing keys"):
        CropBox.from_dict({"shape": [1, 1, 1]})


def test_bounding_box() -> None:
    mask = np.zeros((6, 7, 8), bool)
    assert bounding_box(mask) is None
    mask[1, 2, 3] = mask[4, 2, 6] = True
    assert bounding_box(mask) == (slice(1, 5), slice(2, 3), slice(3, 7))


def test_prepare_input_synthetic() -> None:
    image = _ball_image((40, 45, 30), radius=12)
    net, box, mask = prepare_input(image, multiple=16, margin=4)
    assert net.dtype == np.float32 and net.flags.c_contiguous
    assert net.shape == (*box.out_shape, 4)
    assert all(s % 16 == 0 for s in net.shape[:3])
    assert np.array_equal(mask, brain_mask(image))
    # Channel-last crop of the full-grid z-score, exactly.
    expected = box.apply(zscore(image, mask))
    np.testing.assert_allclose(np.moveaxis(net, -1, 0), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="prepare_input"):
        prepare_input(image[0])


def _read_demo(case_dir: Path) -> np.ndarray:
    name = case_dir.name
    return np.stack([np.asarray(nib.load(case_dir / f"{name}-{m}.nii.gz").dataobj, dtype=np.float32)
                     for m in ("t1n", "t1c", "t2w", "t2f")])


def test_prepare_input_real_case_inverse(real_root: Path) -> None:
    case_dir = real_root / "BraTS-GLI-demo-0001"
    image = _read_demo(case_dir)
    net, box, mask = prepare_input(image)
    assert net.shape[-1] == 4 and all(s % 16 == 0 for s in net.shape[:3])
    assert mask[(image != 0).any(0)].all()
    back = box.invert(np.moveaxis(net, -1, 0))
    assert back.shape == image.shape
    assert np.array_equal((back != 0).any(0), mask)
    np.testing.assert_allclose(back, zscore(image, mask), rtol=0, atol=1e-6)
