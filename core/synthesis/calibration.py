"""Per-class intensity calibration of generated tumours.

At the same labels, the insertion generator's tumours are systematically off the real ones' mean intensity: FLAIR
1.1 / 0.6 / 1.9 healthy standard deviations too dark in necrosis / oedema / enhancing tumour, T1ce enhancing tumour
0.8 too bright, T1 necrosis 0.5 too bright (medians over 12 training hosts, each given the next one's tumour;
``bench/analysis/insertion_calibration.py``). :func:`calibrate` removes those medians from a generated crop, class by
class, with a 1-voxel Gaussian edge so that no step appears at the class borders.

Arrays are channel-last z-scores ``(X, Y, Z, C)`` as the generator sees them; no Keras import.
"""

from __future__ import annotations

import numpy as np

from core.synthesis.filters import gaussian_spatial

EDGE_SIGMA = 1.0  # voxels: the offset field is smoothed by this Gaussian (no step at class borders)

# Median of (generated - real) mean z-score per internal label (1 NCR, 2 ED, 3 ET) and modality (T1, T1ce, T2,
# FLAIR), real = the mask's own case at the same voxels (``bench/analysis/insertion_calibration.py``, training hosts
# only).
CLASS_BIAS: dict[int, tuple[float, float, float, float]] = {
    1: (0.54, 0.41, -0.36, -1.13),
    2: (0.25, 0.13, 0.16, -0.62),
    3: (-0.04, 0.83, 0.04, -1.86),
}


def bias_field(labels: np.ndarray, channels: int) -> np.ndarray:
    """``(X, Y, Z, C)`` float32 field of :data:`CLASS_BIAS` on each class's voxels, smoothed by ``EDGE_SIGMA``
    (zeros for channel counts other than the four modalities)."""
    labels = np.asarray(labels)
    field = np.zeros((*labels.shape, channels), np.float32)
    if channels != 4:
        return field
    for label, bias in CLASS_BIAS.items():
        field[labels == label] = bias
    return gaussian_spatial(field, EDGE_SIGMA)


def calibrate(generated: np.ndarray, labels: np.ndarray, region: np.ndarray,
              field: np.ndarray | None = None) -> np.ndarray:
    """``generated`` minus the class bias field inside ``region`` (other voxels unchanged).

    Args:
        generated: ``(X, Y, Z, C)`` generated z-scores of a crop.
        labels: ``(X, Y, Z)`` internal labels 0..3 of the target on the crop.
        region: bool ``(X, Y, Z)`` ``R`` on the crop.
        field: ``bias_field(labels, C)`` when already computed (all samples of one target share it).
    """
    generated = np.asarray(generated, np.float32)
    if np.shape(labels) != generated.shape[:3] or np.shape(region) != generated.shape[:3]:
        raise ValueError(f"labels {np.shape(labels)} / region {np.shape(region)} differ from the crop "
                         f"{generated.shape[:3]}")
    out = generated.copy()
    inside = np.asarray(region, bool)
    if field is None:
        field = bias_field(labels, generated.shape[-1])
    elif field.shape != generated.shape:
        raise ValueError(f"bias field {field.shape} differs from the crop {generated.shape}")
    out[inside] -= field[inside]
    return out
