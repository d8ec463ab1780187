"""Segment a case: the one use-case behind the CLI, the app, the REST API and batch runs.

Like nnU-Net v2's predictor, :func:`segment` is the only place that composes the steps; each entry point only
adapts input and output (``python -m core.segment``, ``app.actions``, ``serve.jobs``, ``serve.batch``):

1. the plausibility gate (``core.preprocessing.input_check.require_plausible``; its messages and the loader's are the
   result's ``warnings``; an error finding refuses the case unless ``force``),
2. the model (given, or loaded only after the gate passed),
3. segmentation on the case's own grid (:func:`core.segmentation.segment.segment_oriented`: model orientation and
   back),
4. region probabilities WT/TC/ET (``core.io.labels.region_probabilities``) when asked,
5. volumes, and Dice/HD95 against the case's reference seg when it has one (``core.segmentation.metrics``).

:class:`CaseSegmentation` writes the label map and the probability map (``core.io.case`` writers) with the case's
affine and header. The model (ONNX Runtime or Keras, ``core.segmentation.backend``) loads only when a case is segmented.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.io.case import (
    Case,
    check_convention,
    label_map_bytes,
    region_probabilities_bytes,
    save_label_map,
    save_region_probabilities,
)
from core.io.labels import region_probabilities
from core.preprocessing.input_check import require_plausible
from core.segmentation.metrics import class_volumes_ml, region_metrics, volumes_ml
from core.segmentation.segment import segment_oriented

Progress = Callable[[float, str], None]
METRICS_MESSAGE = "computing Dice / HD95 against the reference"
LOADING_MESSAGE = "loading the model (ONNX Runtime, or TensorFlow where no matching export exists)"


@dataclass(frozen=True)
class SegmentOptions:
    """How to segment a case.

    Attributes:
        tta: mirror test-time augmentation (``core.segmentation.inference.tta_variants``).
        probabilities: also compute the WT/TC/ET region probabilities.
        labels: label convention the writers store (``"2020"``: ET=4, ``"2023"``: ET=3).
        postprocess: clean the label map (``core.segmentation.inference.postprocess_labels``).
        metrics: measure Dice/HD95 against the case's reference seg when it has one.
        force: segment even a case with an error finding (it becomes a warning).
        force_hint: how the caller's user forces a run (``--force``, ``force=true``), named in the refusal;
            ``None`` where there is no way to force it (the app).
    """

    tta: bool | str = False
    probabilities: bool = False
    labels: str = "2020"
    postprocess: bool = True
    metrics: bool = True
    force: bool = False
    force_hint: str | None = "--force"

    def __post_init__(self) -> None:
        check_convention(self.labels)


@dataclass
class CaseSegmentation:
    """What :func:`segment` found for one case, on the case's own voxel grid.

    Attributes:
        case: the segmented case (its affine and header go into the written files).
        options: the options it was segmented with.
        labels: uint8 ``(X, Y, Z)`` internal labels 0..3 (postprocessed unless ``options.postprocess`` is off).
        class_probabilities: float32 ``(4, X, Y, Z)`` network probabilities before postprocessing.
        region_probabilities: float32 ``(X, Y, Z, 3)`` WT/TC/ET probabilities, when ``options.probabilities``.
        volumes_ml: region volumes ``{"WT", "TC", "ET"}`` in mL.
        class_volumes_ml: class volumes ``{"NCR", "ED", "ET"}`` in mL.
        metrics: ``core.segmentation.metrics.region_metrics`` against the reference seg, or ``None``.
        warnings: the loader's and the plausibility checks' messages.
        seconds: wall time of the segmentation itself (preprocessing, network, postprocessing).
        timings: wall time of each step in seconds (``check``, ``model``, ``segment``, ``probabilities``,
            ``metrics``).
    """

    case: Case
    options: SegmentOptions
    labels: np.ndarray
    class_probabilities: np.ndarray
    region_probabilities: np.ndarray | None
    volumes_ml: dict[str, float]
    class_volumes_ml: dict[str, float]
    metrics: dict[str, dict[str, float]] | None
    warnings: list[str]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    def label_map_bytes(self) -> bytes:
        """``.nii.gz`` bytes of the label map (``options.labels`` values, the case's affine and header)."""
        return label_map_bytes(self.labels, self.case.affine, self.case.header, self.options.labels)

    def save_label_map(self, path: str | os.PathLike) -> Path:
        """Write the label map as :meth:`label_map_bytes` holds it."""
        return save_label_map(path, self.labels, self.case.affine, self.case.header, self.options.labels)

    def probabilities_bytes(self) -> bytes:
        """``.nii.gz`` bytes of the WT/TC/ET probability map (``core.io.case.region_probabilities_bytes``)."""
        return region_probabilities_bytes(self._regions(), self.case.affine, self.case.header)

    def save_probabilities(self, path: str | os.PathLike) -> Path:
        """Write the WT/TC/ET probability map (``core.io.case.save_region_probabilities``)."""
        return save_region_probabilities(path, self._regions(), self.case.affine, self.case.header)

    def _regions(self) -> np.ndarray:
        if self.region_probabilities is None:
            raise ValueError(f"case {self.case.name!r} was segmented without probabilities; "
                             "pass SegmentOptions(probabilities=True)")
        return self.region_probabilities


def segment(case: Case, model: Any = None, options: SegmentOptions = SegmentOptions(), *,
            load_model: Callable[[], Any] | None = None, progress: Progress | None = None,
            on_warning: Callable[[str], None] | None = None) -> CaseSegmentation:
    """Segment a loaded case: gate, model, segmentation, probabilities, volumes and metrics.

    Args:
        case: the case (any grid and orientation; ``core.io.case.load_case`` and friends).
        model: a loaded U-Net (``core.segmentation.inference.load_model``); or give ``load_model``.
        options: :class:`SegmentOptions`.
        load_model: called for the model after the gate passed (a refused case loads no model).
        progress: ``(fraction, message)`` callback.
        on_warning: called with each warning as soon as the gate passed (before the model loads).

    Returns:
        :class:`CaseSegmentation` on the case's own grid.

    Raises:
        CaseError: the case fails a plausibility check and ``options.force`` is off (names the file and
            ``options.force_hint``).
        ValueError: neither or both of ``model`` and ``load_model`` were given.
    """
    if (model is None) == (load_model is None):
        raise ValueError("pass either a loaded model or load_model, not both or neither")
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[step] = now - clock
        clock = now

    warnings = require_plausible(case, force=options.force, force_hint=options.force_hint)
    lap("check")
    for message in warnings if on_warning is not None else ():
        on_warning(message)
    if model is None:
        if progress is not None:
            progress(0.01, LOADING_MESSAGE)
        model = load_model()  # type: ignore[misc]
        lap("model")
    result = segment_oriented(case, model, tta=options.tta, postprocess=options.postprocess, progress=progress)
    release = getattr(model, "release_memory", None)  # ONNX Runtime: hand its arena back between cases
    if callable(release):
        release()
    lap("segment")
    regions = region_probabilities(result.probabilities) if options.probabilities else None
    lap("probabilities")
    metrics = None
    if options.metrics and case.seg is not None:
        if progress is not None:
            progress(1.0, METRICS_MESSAGE)
        metrics = region_metrics(result.labels, case.seg, case.spacing)
    volumes, class_volumes = volumes_ml(result.labels, case.spacing), class_volumes_ml(result.labels, case.spacing)
    lap("metrics")
    return CaseSegmentation(case=case, options=options, labels=result.labels,
                            class_probabilities=result.probabilities, region_probabilities=regions,
                            volumes_ml=volumes, class_volumes_ml=class_volumes, metrics=metrics, warnings=warnings,
                            seconds=result.seconds, timings=timings)
