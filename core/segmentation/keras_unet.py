"""Loading a U-Net ``.keras`` file as a Keras model for inference (TensorFlow backend; imported on first use).

``core.segmentation.backend.load_unet`` calls :func:`load_keras_unet` when the ONNX Runtime path is not used;
``core.segmentation.inference`` re-exports both functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core.io.case import MODALITIES
from core.io.labels import NUM_CLASSES
from core.io.weights import ModelLoadError, load_keras_file

if TYPE_CHECKING:
    import keras


def check_unet_io(model, name: str) -> None:
    """Raise ``ModelLoadError`` unless ``model`` is a Keras model that maps ``(B, X, Y, Z, 4)`` to 4 classes or
    3 regions."""
    from core.segmentation import unet

    import keras

    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{name} holds a {type(model).__name__}, not a Keras model.")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelLoadError(f"{name}: expected a model with one input and one output, got "
                             f"{len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                             "use a U-Net saved by `python -m train.unet`.")
    in_shape, out_shape = tuple(model.inputs[0].shape), tuple(model.outputs[0].shape)
    if len(in_shape) != 5 or in_shape[-1] != len(MODALITIES):
        raise ModelLoadError(f"{name}: input shape {in_shape} is not (batch, X, Y, Z, {len(MODALITIES)}) "
                             f"(channels {', '.join(MODALITIES)}); use a U-Net saved by `python -m train.unet`.")
    if len(out_shape) != 5 or out_shape[-1] not in (NUM_CLASSES, len(unet.REGION_CHANNELS)):
        raise ModelLoadError(f"{name}: output shape {out_shape} is not (batch, X, Y, Z, {NUM_CLASSES}) "
                             "(background, NCR, ED, ET) nor (batch, X, Y, Z, 3) (regions WT, TC, ET); "
                             "use a U-Net saved by `python -m train.unet`.")


def load_keras_unet(path: str | Path) -> keras.Model:
    """Load a U-Net from a ``.keras`` file with ``safe_mode=True`` (no code execution).

    Args:
        path: the ``.keras`` file (e.g. :func:`default_unet_path`).

    Returns:
        The model, uncompiled (inference only), in the compute precision that is fastest on this machine
        (``core.segmentation.precision``: a ``mixed_bfloat16`` model runs in float32 on a CPU without native
        bfloat16; ``BRATS_INFERENCE_PRECISION`` overrides).

    Raises:
        ModelLoadError: the file is missing, not a ``.keras`` archive, corrupt or unsafe, or the
            model does not map ``(B, X, Y, Z, 4)`` images to ``(B, X, Y, Z, 4)`` class probabilities
            or ``(B, X, Y, Z, 3)`` region probabilities.
    """
    from core.segmentation import unet  # noqa: F401  (registers the loss for safe loading)
    from core.segmentation.precision import for_this_machine

    model = load_keras_file(path, "U-Net", "python -m train.unet")
    check_unet_io(model, str(path))
    try:
        return for_this_machine(model)  # a bfloat16 model runs in float32 where bfloat16 is emulated (much slower)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
