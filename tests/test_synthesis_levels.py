"""Host-relative intensity model of inserted tumours (core.synthesis.levels); numpy only."""

from __future__ import annotations

import numpy as np
import pytest

from core.io.labels import ED, NCR
from core.synthesis.levels import (
    CLASS_LEVEL,
    KNEE,
    TOP,
    apply_host_levels,
    host_window,
    position_value,
    soft_ceiling,
    window_position,
)


def test_window_position_round_trips_and_is_piecewise_linear():
    centre, low, high = 100.0, 20.0, 140.0
    values = np.array([20.0, 60.0, 100.0, 120.0, 140.0, 180.0])
    positions = window_position(values, centre, low, high)
    np.testing.assert_allclose(positions, [-1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(position_value(positions, centre, low, high), values)


def test_soft_ceiling_keeps_values_under_the_knee_and_stays_strictly_below_the_top():
    values = np.array([-5.0, 0.0, 9.99, 10.0, 10.01, 12.0, 19.9, 20.0, 50.0, 1e9], np.float32)
    out = soft_ceiling(values, 10.0, 20.0)
    np.testing.assert_array_equal(out[:4], values[:4])
    assert np.all(out < 20.0)
    assert np.all(np.diff(out) >= 0)  # monotone: bright stays brighter than less bright
    assert out[4] == pytest.approx(10.01, abs=1e-4)  # slope 1 at the knee: no kink
    assert 10.0 < out[5] < 12.0


def _faint_host(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A host whose brain is 100 +- 10 (its 99.5th percentile ~126) and a tumour crop painted as a flat bright
    plate (160 +- 10, far above the window) with a necrotic core, as the z-score fill did on faint hosts."""
    shape = (40, 40, 40)
    image = (100 + 10 * rng.standard_normal((4, *shape))).astype(np.float32)
    brain = np.ones(shape, bool)
    region = np.zeros(shape, bool)
    region[10:30, 10:30, 10:30] = True
    labels = np.zeros(shape, np.uint8)
    labels[12:28, 12:28, 12:28] = ED
    labels[17:23, 17:23, 17:23] = NCR
    generated = image.copy()
    generated[:, labels > 0] = 160 + 10 * rng.standard_normal((4, int((labels > 0).sum())))
    return image, generated, np.stack([brain, region, labels.astype(bool)]), labels


def test_a_plate_above_the_window_is_brought_under_it_with_its_texture_and_nothing_else_moves():
    rng = np.random.default_rng(0)
    image, generated, (brain, region, tumour), labels = _faint_host(rng)
    window = host_window(image, brain, brain & ~region)
    flair = 3
    high = np.percentile(image[flair][brain], 99.5)
    assert np.mean(generated[flair][tumour] >= high) > 0.99  # the old fill: a saturated plate
    out = apply_host_levels(generated, labels, region, window)
    assert np.all(out[:, region] < window.high[:, None])  # nothing reaches the window's top
    np.testing.assert_array_equal(out[:, ~region], generated[:, ~region])  # outside R: untouched, exactly
    # the oedema's median sits at its real window position (the core of the class, away from the soft edge)
    core = np.zeros_like(tumour)
    core[14:26, 14:26, 14:26] = True
    core &= labels == ED
    wanted = position_value(CLASS_LEVEL[ED][flair], window.centre[flair], window.low[flair], window.high[flair])
    assert np.median(out[flair][core]) == pytest.approx(float(wanted), abs=0.1 * float(high - window.centre[flair]))
    # texture is kept: the spread inside the oedema is still most of the original's, not flattened
    assert np.std(out[flair][core]) > 0.5 * np.std(generated[flair][core])
    assert CLASS_LEVEL[ED][flair] < KNEE < TOP < 1


def test_without_labels_only_the_ceiling_applies():
    rng = np.random.default_rng(1)
    image, generated, (brain, region, _), _ = _faint_host(rng)
    window = host_window(image, brain, brain & ~region)
    out = apply_host_levels(generated, None, region, window)
    assert np.all(out[:, region] < window.high[:, None])
    healthy_like = image.copy()  # a fill as bright as the host's own brain: under the knee, left exactly as it is
    healthy_like[:, region] = np.minimum(healthy_like[:, region], 115)
    np.testing.assert_array_equal(apply_host_levels(healthy_like, None, region, window), healthy_like)
    assert float(position_value(KNEE, window.centre[0], window.low[0], window.high[0])) > 115


def test_bad_shapes_are_refused():
    rng = np.random.default_rng(2)
    image, generated, (brain, region, _), labels = _faint_host(rng)
    window = host_window(image, brain, brain & ~region)
    with pytest.raises(ValueError, match="differ from the crop"):
        apply_host_levels(generated, labels[:-1], region, window)
    with pytest.raises(ValueError, match="no brain voxels"):
        host_window(image, np.zeros_like(brain), brain)
