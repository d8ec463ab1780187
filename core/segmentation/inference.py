"""Whole-case U-Net segmentation: safe model loading, prediction, mirror TTA, postprocessing.

Pipeline of :func:`segment_case` (the app and ``python -m core.segment`` call it):

1. ``core.preprocessing.preprocess.prepare_input``: brain mask, per-channel z-score, crop to the brain and pad
   to a multiple of the network's down-sampling factor.
2. One forward pass over the whole cropped volume (~3 GB for a base-16 U-Net on a BraTS brain).
   Sliding windows with Gaussian blending would cost >= 2x the FLOPs (overlap) on 2 CPU cores.
3. Optional mirror test-time augmentation: all 8 combinations of flips of the three spatial axes,
   probabilities averaged (nnU-Net's TTA).
   A region-based U-Net (three sigmoids WT, TC, ET; ``core.segmentation.unet.build_unet(regions=True)``) is
   decoded as nnU-Net does: WT > 0.5 is tumour, TC > 0.5 inside it is core (NCR), ET > 0.5 inside
   the core is ET (:func:`regions_to_labels`); its class probabilities are derived from the nested
   regions (:func:`region_class_probabilities`).
4. Optional postprocessing of the label map (probabilities stay the raw network output):
   tumour outside the brain mask is removed, connected tumour components smaller than
   ``MIN_COMPONENT_ML`` are dropped, and so are those smaller than ``MIN_COMPONENT_FRACTION`` (a
   quarter) of the largest one: on the real validation split it removed false-positive blobs far from
   the tumour (mean WT HD95 24.7 -> 10.7 mm, WT Dice +0.017; ``python -m train.tune_postprocess``),
   at the risk of dropping a small second lesion of a multifocal tumour (it did so on phantoms),
   and an enhancing tumour smaller than ``MIN_ET_ML`` in total is relabelled NCR (the BraTS-winner
   trick, 500 voxels in Isensee et al. 2018: a tiny ET is almost always a false positive, and the ET
   score of an ET-free case is all-or-nothing).
5. ``CropBox.invert`` maps labels and probabilities back onto the case grid exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from core.io.case import MODALITIES, Case
from core.io.labels import BACKGROUND, ED, ET, NCR, NUM_CLASSES, region_probabilities  # noqa: F401  (moved there)
from core.io.weights import ModelLoadError, load_keras_file, load_model_card, shipped_path  # noqa: F401  (re-exported API)
from core.preprocessing.preprocess import prepare_input
from core.segmentation.keras_unet import check_unet_io, load_keras_unet  # noqa: F401  (re-exported API)
from core.segmentation.onnx_unet import OnnxUNet

if TYPE_CHECKING:
    import keras

Progress = Callable[[float, str], None]

BRAIN_MARGIN = 4  # voxels of context kept around the brain mask when cropping
MIN_COMPONENT_ML = 0.1  # tumour (WT) connected components smaller than this are dropped
MIN_COMPONENT_FRACTION = 0.25  # ... and those smaller than this fraction of the largest (tuned on real validation)
MIN_ET_ML = 0.5  # a total enhancing-tumour volume below this is relabelled NCR (nnU-Net's ~500 voxels; 5 mL, the
# best on the 27 training cases, lost ET on 4 of the 9 validation cases and won none: README, not shipped)
MIRROR_AXES: tuple[tuple[int, ...], ...] = tuple(
    axes for k in range(4) for axes in combinations((0, 1, 2), k)
)  # (), (0,), (1,), (2,), (0, 1), ... : the 8 mirror TTA variants
TTA_MODES: dict[str, tuple[tuple[int, ...], ...]] = {
    "off": ((),),
    "lr": ((), (0,)),  # left-right mirror only (voxel axis 0 in the model's LPS orientation): 2 passes
    "full": MIRROR_AXES,
}


def tta_variants(tta: bool | str) -> tuple[tuple[int, ...], ...]:
    """Flip axes of each forward pass for a TTA setting: ``False``/``"off"``, ``"lr"``, ``True``/``"full"``."""
    mode = ("full" if tta else "off") if isinstance(tta, bool) else tta
    if mode not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {tta!r}; use one of {', '.join(TTA_MODES)}")
    return TTA_MODES[mode]


@dataclass
class Segmentation:
    """Result of :func:`segment_case`.

    Attributes:
        labels: uint8 ``(X, Y, Z)`` internal labels 0..3 on the case grid (postprocessed if asked).
        probabilities: float32 ``(4, X, Y, Z)`` softmax (TTA-averaged) on the case grid, before
            postprocessing; outside the brain crop it is pure background ``(1, 0, 0, 0)``.
        seconds: wall time of the whole call.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    seconds: float


def default_unet_path() -> Path:
    """Path of the shipped U-Net weights (``weights/unet.keras``)."""
    return shipped_path("unet")


REGION_THRESHOLD = 0.5  # sigmoid threshold of a region-based U-Net (nnU-Net's)


def load_model(path: str | Path, backend: str | None = None, *, warm: bool = False, low_memory: bool = False) -> Any:
    """Load the U-Net of a ``.keras`` file for inference, on the fastest backend available here.

    ``core.segmentation.backend.load_unet``: the ONNX export beside the file (``unet.keras`` -> ``unet.onnx``) on ONNX
    Runtime when its card names this ``.keras`` file's SHA-256 (no TensorFlow import), else the Keras model
    (:func:`load_keras_unet`). Everything in this module takes either.

    Args:
        path: the ``.keras`` file (e.g. :func:`default_unet_path`).
        backend: ``auto`` / ``onnx`` / ``tensorflow`` (default ``$BRATS_INFERENCE_BACKEND`` or ``auto``); callers that
            need the Keras model itself (training, weight surgery) pass ``"tensorflow"``.
        warm: the caller keeps the model for many cases (app, API, batch): ``auto`` then picks TensorFlow, whose
            forward pass is faster here; the one-shot CLI gets ONNX Runtime and skips the TensorFlow import.
        low_memory: a long-lived process shared by many users (the app): ``auto`` picks ONNX Runtime even when
            ``warm``, whose memory goes back to the system after each case (TensorFlow keeps ~2 GB).

    Raises:
        ModelLoadError: the model cannot be loaded (the message names the file and the fix).
    """
    from core.segmentation.backend import load_unet

    return load_unet(path, backend, warm=warm, low_memory=low_memory)


def downsampling_factor(model: keras.Model | OnnxUNet) -> int:
    """Multiple every spatial input size must have: ``2 ** number of stride-2 poolings``."""
    if isinstance(model, OnnxUNet):
        return model.size_multiple
    from core.segmentation import unet

    return unet.size_multiple(model)


def is_region_output(model: keras.Model | OnnxUNet) -> bool:
    """Whether ``model`` outputs the three region sigmoids (WT, TC, ET) rather than the class softmax."""
    if isinstance(model, OnnxUNet):
        return model.regions
    from core.segmentation import unet

    return unet.is_region_model(model)


def predict_volume(model: keras.Model | OnnxUNet, volume: np.ndarray, *, tta: bool | str = False,
                   progress: Progress | None = None) -> np.ndarray:
    """Softmax of one channel-last volume ``(X, Y, Z, 4)``, optionally mirror-TTA averaged.

    Args:
        model: the U-Net; every spatial size of ``volume`` must suit its down-sampling factor.
        volume: float32 ``(X, Y, Z, 4)`` network input.
        tta: mirror test-time augmentation (:func:`tta_variants`): ``True``/``"full"`` averages the 8 mirror
            variants (8x the time), ``"lr"`` the image and its left-right mirror (2x).
        progress: called with ``(fraction, message)`` after every forward pass.

    Returns:
        float32 ``(X, Y, Z, K)`` model outputs: class probabilities (K = 4) or region sigmoids (K = 3).
    """
    variants = tta_variants(tta)
    total = None
    for i, axes in enumerate(variants):
        x = np.flip(volume, axis=axes) if axes else volume
        probs = np.asarray(model.predict_on_batch(np.ascontiguousarray(x)[None]))[0]
        probs = np.flip(probs, axis=axes) if axes else probs
        total = probs.astype(np.float32, copy=True) if total is None else total + probs
        if progress is not None:
            progress((i + 1) / len(variants), f"forward pass {i + 1}/{len(variants)}")
    total /= np.float32(len(variants))
    return total


def regions_to_labels(regions: np.ndarray, threshold: float = REGION_THRESHOLD) -> np.ndarray:
    """Internal label map from region probabilities ``(..., 3)`` (WT, TC, ET), nested as in BraTS.

    WT above ``threshold`` is ED, TC above it inside WT is NCR, ET above it inside TC is ET.
    """
    wt = regions[..., 0] > threshold
    tc = wt & (regions[..., 1] > threshold)
    et = tc & (regions[..., 2] > threshold)
    labels = np.zeros(regions.shape[:-1], dtype=np.uint8)
    labels[wt] = ED
    labels[tc] = NCR
    labels[et] = ET
    return labels


def outputs_to_labels(outputs: np.ndarray, regions: bool, threshold: float = REGION_THRESHOLD) -> np.ndarray:
    """Internal label map from network outputs: nested region thresholds, or the class argmax."""
    return regions_to_labels(outputs, threshold) if regions else np.argmax(outputs, axis=-1).astype(np.uint8)


def region_class_probabilities(regions: np.ndarray) -> np.ndarray:
    """Class probabilities ``(..., 4)`` (background, NCR, ED, ET) implied by nested region sigmoids.

    P(ED) = WT (1 - TC), P(NCR) = WT TC (1 - ET), P(ET) = WT TC ET; they sum to 1.
    """
    wt, tc, et = (regions[..., i].astype(np.float32) for i in range(3))
    probs = np.empty(regions.shape[:-1] + (NUM_CLASSES,), dtype=np.float32)
    probs[..., BACKGROUND] = 1.0 - wt
    probs[..., ED] = wt * (1.0 - tc)
    probs[..., NCR] = wt * tc * (1.0 - et)
    probs[..., ET] = wt * tc * et
    return probs


def _voxels(ml: float, spacing: tuple[float, float, float]) -> int:
    """Number of voxels of ``spacing`` (mm) that make ``ml`` millilitres."""
    return int(np.ceil(ml * 1000.0 / float(np.prod(spacing))))


def postprocess_labels(labels: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                       brain: np.ndarray | None = None, *, min_component_ml: float = MIN_COMPONENT_ML,
                       min_component_fraction: float = MIN_COMPONENT_FRACTION,
                       min_et_ml: float = MIN_ET_ML) -> np.ndarray:
    """Clean an internal label map (returns a new array).

    1. Tumour outside ``brain`` (if given) becomes background.
    2. Whole-tumour connected components (26-connectivity) smaller than ``min_component_ml``, or
       than ``min_component_fraction`` times the largest component, become background.
    3. If the remaining ET is smaller than ``min_et_ml`` in total, it becomes NCR.

    Args:
        labels: uint8 ``(X, Y, Z)`` internal labels 0..3.
        spacing: voxel size in mm (thresholds are volumes).
        brain: optional bool brain mask of the same shape.
        min_component_ml: absolute component threshold (mL).
        min_component_fraction: relative component threshold (0 turns it off).
        min_et_ml: total ET volume (mL) below which ET becomes NCR (0 turns it off).
    """
    out = np.array(labels, dtype=np.uint8, copy=True)
    if brain is not None:
        out[~brain] = BACKGROUND
    tumour = out != BACKGROUND
    if tumour.any():
        components, n = ndimage.label(tumour, structure=np.ones((3, 3, 3), dtype=bool))
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        keep_from = max(_voxels(min_component_ml, spacing), min_component_fraction * sizes.max())
        small = np.flatnonzero(sizes < keep_from)
        small = small[small != 0]
        if small.size:
            out[np.isin(components, small)] = BACKGROUND
    et = out == ET
    if 0 < np.count_nonzero(et) < _voxels(min_et_ml, spacing):
        out[et] = NCR
    return out


def segment_case(case: Case, model: keras.Model | OnnxUNet, *, tta: bool | str = False, postprocess: bool = True,
                 progress: Progress | None = None) -> Segmentation:
    """Segment a whole case with the U-Net.

    Args:
        case: the case (image ``(4, X, Y, Z)`` in ``MODALITIES`` order; any grid size).
        model: a U-Net from :func:`load_model` (Keras or ONNX Runtime) or ``core.segmentation.unet.build_unet``.
        tta: mirror test-time augmentation (:func:`tta_variants`; ``True``: 8 forward passes averaged).
        postprocess: apply :func:`postprocess_labels` to the label map.
        progress: ``(fraction, message)`` callback.

    Returns:
        :class:`Segmentation` with labels and probabilities on the case's own grid.
    """
    start = time.perf_counter()

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(float(min(max(fraction, 0.0), 1.0)), message)

    image = np.asarray(case.image)
    if image.ndim != 4 or image.shape[0] != len(MODALITIES):
        raise ValueError(f"case {case.name!r}: image shape {image.shape} is not (4, X, Y, Z) "
                         f"with channels {', '.join(MODALITIES)}")
    report(0.0, "preprocessing")
    net_input, box, brain = prepare_input(image, multiple=downsampling_factor(model), margin=BRAIN_MARGIN)
    report(0.1, "predicting")
    probs = predict_volume(model, net_input, tta=tta,
                           progress=lambda f, msg: report(0.1 + 0.8 * f, msg))
    del net_input
    regions = is_region_output(model)
    labels = outputs_to_labels(probs, regions)  # on the crop: cheaper than on the full grid
    if regions:
        probs = region_class_probabilities(probs)
    if postprocess:
        report(0.92, "postprocessing")
        labels = postprocess_labels(labels, case.spacing, box.apply(brain).astype(bool))
    background = np.zeros(NUM_CLASSES, dtype=np.float32)
    background[BACKGROUND] = 1.0
    probabilities = box.invert(np.moveaxis(probs, -1, 0), fill=background)
    labels = box.invert(labels, fill=BACKGROUND)
    report(1.0, "done")
    return Segmentation(labels=labels, probabilities=probabilities, seconds=time.perf_counter() - start)
