"""Segmentation of a loaded case on its own voxel grid.

:func:`segment_oriented` flips/permutes a case whose voxel axes are not in the model's (BraTS, LPS) orientation into
it for the network and turns the labels back, so the output aligns with the input in world space. The use-case
every entry point calls (gate, model, this, probabilities, metrics) is :func:`core.segmentation.pipeline.segment`.
Keras loads only when a case is segmented (``core.segmentation.inference``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from core.io.case import Case
from core.io.orientation import reorientation

if TYPE_CHECKING:
    from core.segmentation.inference import Segmentation


def segment_oriented(case: Case, model: Any, *, tta: bool = False, postprocess: bool = True,
                     progress: Any = None) -> Segmentation:
    """``core.segmentation.inference.segment_case`` in the model's orientation, with the result on the case's own grid.

    The image is flipped/permuted into the BraTS (LPS) voxel orientation the model was trained in
    (``core.io.orientation``; no resampling), segmented, and labels and probabilities are turned back,
    so they overlay ``case`` voxel for voxel and align with it in world space.
    """
    from core.segmentation.inference import segment_case

    turn = reorientation(case.affine, case.shape)
    if turn.is_identity:
        return segment_case(case, model, tta=tta, postprocess=postprocess, progress=progress)
    oriented = replace(case, image=np.ascontiguousarray(turn.to_model(case.image)),
                       affine=turn.model_affine(case.affine), seg=None, warnings=[])
    result = segment_case(oriented, model, tta=tta, postprocess=postprocess, progress=progress)
    return replace(result, labels=np.ascontiguousarray(turn.to_source(result.labels)),  # other fields kept
                   probabilities=np.ascontiguousarray(turn.to_source(result.probabilities)))
