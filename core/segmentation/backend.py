"""Which runtime segments a case: ONNX Runtime (no TensorFlow import) or Keras/TensorFlow.

The ``.keras`` file is the source of truth. ``python -m core.segmentation.export_onnx`` writes ``unet.onnx`` beside
it with a card ``unet.onnx.json`` naming the SHA-256 of the ``.keras`` file it came from (and its own). The ONNX file
is used only while both hashes match, so a retrained or replaced ``.keras`` file never runs with stale ONNX weights.

``BRATS_INFERENCE_BACKEND`` (or the ``backend`` argument) picks:

* ``auto`` (default): for a one-shot process (``python -m core.segment``), ONNX Runtime when a matching export exists
  and ``onnxruntime`` is installed, else TensorFlow (with a warning when an export exists but does not match). For a
  process that keeps the model loaded (``warm=True``: the API's workers, batch actors) TensorFlow: measured
  here, its forward pass is faster (6.4 vs 9.0 s a case), and only the one-shot run pays its ~5 s import for nothing.
  Except the app (``low_memory=True``), one server for many sessions: ONNX Runtime, because it gives a case's ~2 GB
  of activations back after each run (``OnnxUNet.release_memory``) and TensorFlow keeps them (~2.5 GB RSS after one
  case, measured).
  TensorFlow too when ``BRATS_INFERENCE_PRECISION`` asks for ``mixed_bfloat16`` (the export is float32).
* ``onnx``: ONNX Runtime or a ``ModelLoadError`` saying why not.
* ``tensorflow``: the Keras model (``core.segmentation.keras_unet.load_keras_unet``).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.io.weights import ModelLoadError, file_sha256

BACKEND_ENV = "BRATS_INFERENCE_BACKEND"
BACKENDS = ("auto", "onnx", "tensorflow")
EXPORT_COMMAND = "python -m core.segmentation.export_onnx"
CARD_SUFFIX = ".json"  # unet.onnx -> unet.onnx.json (unet.json is the Keras model's card)


def card_path(onnx_path: str | Path) -> Path:
    """The card beside an exported ONNX file: ``unet.onnx`` -> ``unet.onnx.json``."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + CARD_SUFFIX)


def requested_backend(requested: str | None = None) -> str:
    """``requested`` or ``$BRATS_INFERENCE_BACKEND`` or ``auto``, validated.

    Raises:
        ValueError: an unknown value (the message names the variable and the choices).
    """
    value = (requested or os.environ.get(BACKEND_ENV, "") or "auto").strip().lower()
    if value not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={value!r}: use one of {', '.join(BACKENDS)}")
    return value


def onnx_path_for(keras_path: str | Path) -> Path:
    """The ONNX export beside a ``.keras`` file: ``weights/unet.keras`` -> ``weights/unet.onnx``."""
    return Path(keras_path).with_suffix(".onnx")


def onnx_export(keras_path: str | Path) -> tuple[Path | None, str]:
    """The usable ONNX export of ``keras_path``: ``(path, "")``, or ``(None, why not)``.

    Usable means: the file and its card exist, the card's ``source_sha256`` is the ``.keras`` file's SHA-256, its
    ``onnx_sha256`` the ONNX file's, and ``onnxruntime`` is installed.
    """
    onnx_path = onnx_path_for(keras_path)
    fix = f"regenerate it with `{EXPORT_COMMAND} --weights {keras_path}`"
    if not onnx_path.is_file():
        return None, f"no ONNX export {onnx_path}; {fix}"
    card_file = card_path(onnx_path)
    try:
        card = json.loads(card_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"ONNX card {card_file} is missing or not JSON ({exc}); {fix}"
    if not Path(keras_path).is_file() or card.get("source_sha256") != file_sha256(keras_path):
        return None, f"{onnx_path} was exported from another version of {keras_path} (SHA-256 differs); {fix}"
    if card.get("onnx_sha256") != file_sha256(onnx_path):
        return None, f"{onnx_path} does not match the SHA-256 in its card {card_file}; {fix}"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None, "onnxruntime is not installed; `pip install -r requirements.txt`"
    return onnx_path, ""


def choose_onnx(path: str | Path, backend: str | None = None,
                warn: Callable[[str], None] | None = None, *, warm: bool = False,
                low_memory: bool = False) -> Path | None:
    """The ONNX file to run ``path`` (a ``.keras`` file) with, or ``None`` for TensorFlow (module docstring).

    Args:
        path: the ``.keras`` file.
        backend: ``auto`` / ``onnx`` / ``tensorflow`` (default ``$BRATS_INFERENCE_BACKEND`` or ``auto``).
        warn: called with the reason when ``auto`` falls back to TensorFlow although an export exists (default:
            ``warnings.warn``).
        warm: the caller keeps the model loaded for many cases (``auto`` then means TensorFlow).
        low_memory: the caller is a long-lived process shared by many users that needs the memory back between
            cases (the app): ``auto`` means ONNX Runtime even when ``warm`` (its arena is released after each case;
            TensorFlow keeps ~2 GB after a BraTS case's forward pass).

    Raises:
        ModelLoadError: ``onnx`` was asked for and no usable export exists (the message says why and the fix).
        ValueError: an unknown backend.
    """
    choice = requested_backend(backend)
    if choice == "auto" and ((warm and not low_memory)
                             or os.environ.get("BRATS_INFERENCE_PRECISION", "") == "mixed_bfloat16"):
        return None  # warm: TensorFlow's forward pass is faster here; the export computes in float32
    if choice == "tensorflow":
        return None
    onnx_path, reason = onnx_export(path)
    if onnx_path is None and choice == "onnx":
        raise ModelLoadError(f"{BACKEND_ENV}=onnx: {reason}")
    if onnx_path is None and onnx_path_for(path).is_file():
        (warn or (lambda m: warnings.warn(m, stacklevel=4)))(f"{reason}; using TensorFlow instead")
    return onnx_path


def load_unet(path: str | Path, backend: str | None = None, warn: Callable[[str], None] | None = None,
              threads: int | None = None, *, warm: bool = False, low_memory: bool = False) -> Any:
    """The U-Net of ``path`` (a ``.keras`` file) on the backend :func:`choose_onnx` picks.

    Args:
        path, backend, warn, warm, low_memory: as for :func:`choose_onnx`.
        threads: ONNX Runtime intra-op threads (default ``core.segmentation.onnx_unet.default_threads``).

    Returns:
        A ``core.segmentation.onnx_unet.OnnxUNet`` or a Keras model; ``core.segmentation.inference`` takes either.

    Raises:
        ModelLoadError: the model cannot be loaded, or ``onnx`` was asked for and no usable export exists.
        ValueError: an unknown backend.
    """
    onnx_path = choose_onnx(path, backend, warn, warm=warm, low_memory=low_memory)
    if onnx_path is not None:
        from core.segmentation.onnx_unet import OnnxUNet

        return OnnxUNet(onnx_path, threads)
    from core.segmentation.keras_unet import load_keras_unet

    return load_keras_unet(path)
