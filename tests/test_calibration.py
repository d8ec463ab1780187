"""Per-class intensity calibration of generated tumours (core.synthesis.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from core.synthesis import calibration as cal

SHAPE = (32, 32, 32)


def _target() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros(SHAPE, np.uint8)
    labels[8:24, 8:24, 8:16] = 2  # ED
    labels[8:24, 8:24, 16:24] = 3  # ET
    region = np.zeros(SHAPE, bool)
    region[4:28, 4:28, 4:28] = True
    return labels, region


def test_each_class_loses_its_measured_bias_and_nothing_else_moves():
    labels, region = _target()
    generated = np.random.default_rng(0).normal(0, 1, (*SHAPE, 4)).astype(np.float32)
    out = cal.calibrate(generated, labels, region)
    shift = out - generated
    for label in (2, 3):  # away from the class border the shift is exactly the bias
        core = np.zeros(SHAPE, bool)
        core[12:20, 12:20, (10 if label == 2 else 19):(13 if label == 2 else 22)] = True
        np.testing.assert_allclose(shift[core], -np.broadcast_to(cal.CLASS_BIAS[label], shift[core].shape), atol=0.02)
    np.testing.assert_array_equal(out[~region], generated[~region])
    far = region.copy()
    far[5:27, 5:27, 5:27] = False  # R's shell, 3-4 voxels from the tumour: only the Gaussian's tail reaches it
    np.testing.assert_allclose(out[far], generated[far], atol=1e-3)
    step = np.abs(np.diff(shift[..., 3], axis=2)).max()  # no step at the ED/ET border or the tumour's edge
    assert step < 0.6 * np.abs(np.subtract(cal.CLASS_BIAS[3][3], cal.CLASS_BIAS[2][3]))


def test_other_channel_counts_and_shapes():
    labels, region = _target()
    two = np.ones((*SHAPE, 2), np.float32)
    np.testing.assert_array_equal(cal.calibrate(two, labels, region), two)
    with pytest.raises(ValueError, match="differ"):
        cal.calibrate(np.zeros((*SHAPE, 4), np.float32), labels[:-1], region)


def test_a_precomputed_field_gives_the_same_result_and_must_fit_the_crop():
    labels, region = _target()
    generated = np.random.default_rng(1).normal(0, 1, (*SHAPE, 4)).astype(np.float32)
    field = cal.bias_field(labels, 4)
    np.testing.assert_array_equal(cal.calibrate(generated, labels, region, field=field),
                                  cal.calibrate(generated, labels, region))
    with pytest.raises(ValueError, match="bias field"):
        cal.calibrate(generated, labels, region, field=field[..., :2])
