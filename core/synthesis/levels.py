"""Host-relative intensity model of inserted tumours: levels in the host's own display window, never saturating it.

The insertion generator works in z-scores of the host's healthy brain (mean / standard deviation), and its tumour
levels were calibrated in those units (:mod:`core.synthesis.calibration`). A standard deviation is a poor unit for
the top of a host's range: on a host whose FLAIR is faint (its brightest 0.5 % only ~2-3 SDs above the healthy mean)
a tumour 3-4 SDs bright lies above the display window the viewer opens with (0.5 / 99.5 brain percentiles,
``core.viewer.render.auto_window``) and shows as a flat white plate (issue 36: 20-35 % of the inserted FLAIR tumour
voxels at or above the host's 99.5th percentile on the validation hosts).

This module places each tumour class instead at its real position in the host's own window: per modality, the
*window position* of an intensity is ``(v - centre) / (high - centre)`` above the healthy brain's median ``centre``
and ``(v - centre) / (centre - low)`` below it (``low`` / ``high``: the host's 0.5 / 99.5 brain percentiles), so
0 is the healthy median, 1 the window's top and -1 its bottom. :data:`CLASS_LEVEL` holds where real tumour classes'
medians sit in their own case's window (medians over the real training cases,
``bench/analysis/tumour_levels.py``). :func:`apply_host_levels` shifts each generated class so that its median sits
there (the voxels' spread around it, the texture, is kept; the shift field has a soft edge), then compresses the
fill's smooth level above ``KNEE`` smoothly (``tanh``) below the window's top with the texture riding on it, and
the brightest grains above ``DETAIL_KNEE``: every voxel of ``R`` stays under the host's 99.5th percentile, and the
texture is kept, compressed only where the level itself nears the top.

Arrays are channel-first intensities ``(C, X, Y, Z)`` on the generator's crop; no Keras import.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.synthesis.filters import gaussian_spatial
from core.synthesis.texture import padded_box

WINDOW_PERCENTILES = (0.5, 99.5)  # the viewer's auto window (core.viewer.render.auto_window)
KNEE = 0.7  # window position above which the fill's smooth level is compressed toward the window's top
DETAIL_KNEE = 0.9  # window position above which the level plus its texture is compressed (the brightest grains)
DETAIL_SIGMA = 1.5  # voxels: the fill's smooth level is its Gaussian of this width; the rest is its texture
TOP = 0.98  # window position the compression tends to (never reached): strictly under the 99.5th percentile
EDGE_SIGMA = 1.0  # voxels: the level shift field is smoothed by this Gaussian (no step at class borders)
MIN_CLASS_VOXELS = 50  # a class with fewer generated voxels keeps the generator's level

# Median window position of real tumour classes' median intensity in their own case, per internal label (1 NCR,
# 2 ED, 3 ET) and modality (T1, T1ce, T2, FLAIR): medians over the 27 real training cases
# (``bench/analysis/tumour_levels.py``, ``bench/results/synthesis/tumour_levels.json``).
CLASS_LEVEL: dict[int, tuple[float, float, float, float]] = {
    1: (-0.265, -0.207, 0.572, 0.698),
    2: (0.048, -0.016, 0.234, 0.561),
    3: (-0.065, 0.4, 0.333, 0.624),
}


def window_position(value: np.ndarray | float, centre: np.ndarray | float, low: np.ndarray | float,
                    high: np.ndarray | float) -> np.ndarray:
    """Position of ``value`` in a window: 0 at ``centre``, 1 at ``high``, -1 at ``low`` (piecewise linear)."""
    value = np.asarray(value, np.float64)
    up = np.maximum(np.asarray(high, np.float64) - centre, 1e-6)
    down = np.maximum(np.asarray(centre, np.float64) - low, 1e-6)
    return np.where(value >= centre, (value - centre) / up, (value - centre) / down)


def position_value(position: np.ndarray | float, centre: np.ndarray | float, low: np.ndarray | float,
                   high: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`window_position`: the intensity at ``position`` of the window."""
    position = np.asarray(position, np.float64)
    up = np.maximum(np.asarray(high, np.float64) - centre, 1e-6)
    down = np.maximum(np.asarray(centre, np.float64) - low, 1e-6)
    return centre + np.where(position >= 0, position * up, position * down)


@dataclass(frozen=True)
class HostWindow:
    """A host's intensity scale per modality (``(C,)`` each): the 0.5 / 99.5 brain percentiles and the healthy
    brain's median."""

    low: np.ndarray
    centre: np.ndarray
    high: np.ndarray


def host_window(image: np.ndarray, brain: np.ndarray, healthy: np.ndarray) -> HostWindow:
    """The :class:`HostWindow` of a host ``(C, X, Y, Z)``: percentiles over ``brain``, median over ``healthy``
    (its brain outside ``R``; the whole brain when fewer than 100 voxels remain).

    Raises:
        ValueError: an empty brain mask.
    """
    brain = np.asarray(brain, bool)
    if not brain.any():
        raise ValueError("the host has no brain voxels (every voxel is background)")
    healthy = np.asarray(healthy, bool)
    if healthy.sum() < 100:
        healthy = brain
    low, high, centre = [], [], []
    for channel in np.asarray(image):
        lo, hi = np.percentile(channel[brain], WINDOW_PERCENTILES)
        low.append(lo), high.append(hi), centre.append(np.median(channel[healthy]))
    return HostWindow(*(np.asarray(v, np.float32) for v in (low, centre, high)))


def soft_ceiling(values: np.ndarray, knee: np.ndarray | float, top: np.ndarray | float) -> np.ndarray:
    """``values`` unchanged up to ``knee``, above it ``knee + (top - knee) * tanh((v - knee) / (top - knee))``:
    monotone, slope 1 at the knee, and strictly below ``top`` (float32)."""
    values = np.asarray(values, np.float32)
    knee = np.float32(knee)
    span = np.float32(max(float(top) - float(knee), 1e-6))
    over = values > knee
    out = values.copy()
    out[over] = knee + span * np.tanh((values[over] - knee) / span)
    return np.minimum(out, np.nextafter(np.float32(knee + span), np.float32(-np.inf)))


def level_shift(generated: np.ndarray, labels: np.ndarray, region: np.ndarray, window: HostWindow) -> np.ndarray:
    """``(C, X, Y, Z)`` float32 shift that moves each tumour class's median inside ``region`` to
    :data:`CLASS_LEVEL` in ``window`` (per modality), smoothed by ``EDGE_SIGMA``."""
    generated = np.asarray(generated, np.float32)
    field = np.zeros(generated.shape, np.float32)
    region = np.asarray(region, bool)
    if generated.shape[0] != 4 or not region.any():
        return field
    box = padded_box(region, int(4 * EDGE_SIGMA) + 1)  # the field is 0 beyond R: filtering its box is enough
    local = np.zeros((generated.shape[0], *(b.stop - b.start for b in box)), np.float32)
    labels, inner = np.asarray(labels)[box], region[box]
    for label, level in CLASS_LEVEL.items():
        mask = inner & (labels == label)
        if mask.sum() < MIN_CLASS_VOXELS:
            continue
        for m in range(generated.shape[0]):
            target = position_value(level[m], window.centre[m], window.low[m], window.high[m])
            local[m][mask] = float(target) - float(np.median(generated[m][box][mask]))
    field[(slice(None), *box)] = gaussian_spatial(local, EDGE_SIGMA, channel_axis=0)
    return field


def _ceiling_slope(values: np.ndarray, knee: float, top: float) -> np.ndarray:
    """Derivative of :func:`soft_ceiling` at ``values``: 1 up to the knee, ``sech^2`` above it."""
    span = max(float(top) - float(knee), 1e-6)
    over = np.maximum(np.asarray(values, np.float32) - np.float32(knee), 0.0) / np.float32(span)
    return (1.0 / np.cosh(np.minimum(over, 20.0)) ** 2).astype(np.float32)


def apply_host_levels(generated: np.ndarray, labels: np.ndarray | None, region: np.ndarray, window: HostWindow,
                      knee: float = KNEE, top: float = TOP) -> np.ndarray:
    """``generated`` with its tumour classes at their real window positions and ``region`` under the window's top.

    The level and the texture are treated apart: the fill's smooth part (Gaussian of ``DETAIL_SIGMA`` voxels) goes
    through :func:`soft_ceiling` at ``knee``, and its detail (the rest) rides on top, scaled by the ceiling's slope
    there (1 under the knee: texture kept as it is); a last :func:`soft_ceiling` at ``DETAIL_KNEE`` keeps the
    brightest grains under ``top`` too.

    Args:
        generated: ``(C, X, Y, Z)`` generated intensities of the crop (the host's units).
        labels: ``(X, Y, Z)`` internal labels 0..3 of the target on the crop (``None``: no level shift).
        region: bool ``(X, Y, Z)`` ``R`` on the crop; voxels outside it are returned unchanged.
        window: the host's :class:`HostWindow`.
        knee: window position above which the smooth level is compressed.
        top: window position the compression tends to; values stay strictly below it.
    """
    generated = np.asarray(generated, np.float32)
    region = np.asarray(region, bool)
    if np.shape(region) != generated.shape[1:] or (labels is not None and np.shape(labels) != region.shape):
        raise ValueError(f"region {np.shape(region)} / labels {np.shape(labels)} differ from the crop "
                         f"{generated.shape[1:]}")
    out = generated.copy()
    if not region.any():
        return out
    shifted = generated + level_shift(generated, labels, region, window) if labels is not None else generated
    box = padded_box(region, int(4 * DETAIL_SIGMA) + 1)
    smoothed = gaussian_spatial(shifted[(slice(None), *box)], DETAIL_SIGMA, channel_axis=0)
    for m in range(generated.shape[0]):
        knee_value, last_knee, top_value = (float(position_value(p, window.centre[m], window.low[m], window.high[m]))
                                            for p in (knee, DETAIL_KNEE, top))
        values = shifted[m][box]
        smooth = smoothed[m]
        level = soft_ceiling(smooth, knee_value, top_value)
        combined = np.where(smooth > knee_value,
                            level + _ceiling_slope(smooth, knee_value, top_value) * (values - smooth), values)
        inside = region[box]
        out[m][box][inside] = soft_ceiling(combined[inside], max(last_knee, knee_value), top_value)
    return out

