"""The models of BraTS Studio: where their weights are, loading them once per server, uploaded U-Nets.

Everything heavy is imported lazily: TensorFlow/Keras load only when a model is first needed, so the app opens
fast. Weights paths can be injected with ``BRATS_UNET_WEIGHTS``, ``BRATS_CVAE_WEIGHTS`` and
``BRATS_INSERTION_WEIGHTS`` (tests use tiny models this way); otherwise the files in ``weights/``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from core.io.weights import WEIGHTS_ENV, ModelLoadError, load_model_card, weights_path

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAMES = {"unet": "U-Net (segmentation)", "cvae": "CVAE (synthetic MRI)",
               "insertion": "insertion VAE-GAN (tumour into this case)"}
TRAIN_COMMANDS = {"unet": "python -m train.unet", "cvae": "python -m train.cvae",
                  "insertion": "python -m train.insertion"}


@dataclass(frozen=True)
class WeightsInfo:
    """Where a model's weights are and what their model card says."""

    kind: str
    path: Path
    exists: bool
    card: dict[str, Any] | None
    from_env: bool

    @property
    def label(self) -> str:
        """The path as shown to the user (relative to the project when inside it)."""
        try:
            return str(self.path.relative_to(ROOT))
        except ValueError:
            return str(self.path)

    @property
    def source_note(self) -> str:
        """`` (from $VAR)`` when the path came from the environment, else empty."""
        return f" (from ${WEIGHTS_ENV[self.kind]})" if self.from_env else ""

    @property
    def missing_message(self) -> str:
        """What to tell the user when the weights file does not exist."""
        return (f"The {MODEL_NAMES[self.kind]} weights `{self.label}`{self.source_note} do not exist yet: "
                f"train them with `{TRAIN_COMMANDS[self.kind]}`.")


def weights_info(kind: str) -> WeightsInfo:
    """Path, existence and model card of a model's weights (reads only the small JSON card)."""
    path, from_env = weights_path(kind)
    exists = path.is_file()
    card = _model_card(str(path), _mtime(path)) if exists else None
    return WeightsInfo(kind, path, exists, card, from_env)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(show_spinner=False)
def _model_card(path: str, mtime: float) -> dict[str, Any] | None:
    try:
        return load_model_card(path)
    except ModelLoadError:
        return None


@st.cache_resource(show_spinner=False, max_entries=4)
def _load_unet(path: str, mtime: float) -> Any:
    from core.segmentation.inference import load_model

    # kept for every click and shared by every session: auto picks ONNX Runtime where the file has its export, which
    # gives a case's ~2 GB of activations back after each run (TensorFlow's forward is faster but keeps them)
    return load_model(path, warm=True, low_memory=True)


@st.cache_resource(show_spinner=False, max_entries=4)
def _load_cvae(path: str, mtime: float) -> Any:
    from core.synthesis.generate import load_cvae

    return load_cvae(path)


@st.cache_resource(show_spinner=False, max_entries=2)
def _load_insertion(path: str, mtime: float) -> Any:
    from core.synthesis.insert import load_insertion_model

    return load_insertion_model(path)


def shipped_model(kind: str) -> Any:
    """The shipped (or env-injected) model, loaded once per server and file version.

    Raises:
        FileNotFoundError: the weights file does not exist.
        ValueError: the file is not a loadable model (``core.segmentation.inference.ModelLoadError``).
    """
    path, _ = weights_path(kind)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights not found")
    loader = {"unet": _load_unet, "cvae": _load_cvae, "insertion": _load_insertion}[kind]
    return loader(str(path), _mtime(path))


def uploaded_unet(data: bytes, file_name: str) -> Any:
    """Load an uploaded ``.keras`` U-Net in safe mode (once per file content in this session).

    The bytes go to a temporary file that is removed right after loading.
    """
    digest = hashlib.sha256(data).hexdigest()
    cached = st.session_state.get("uploaded_unet")
    if cached and cached[0] == digest:
        return cached[1]
    model = _load_unet_from_bytes(data, file_name)
    st.session_state["uploaded_unet"] = (digest, model, file_name)
    return model


def _load_unet_from_bytes(data: bytes, file_name: str) -> Any:
    """``core.segmentation.inference.load_model`` (safe mode) on bytes, through a temporary file that is always removed.

    Errors name ``file_name`` (the user's file), never the temporary path.
    """
    from core.segmentation.inference import load_model

    fd, tmp = tempfile.mkstemp(suffix=".keras", prefix="brats_upload_")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        try:
            return load_model(tmp)
        except Exception as exc:
            message = str(exc).replace(tmp, file_name).replace(Path(tmp).name, file_name)
            if message == str(exc):
                raise
            try:
                renamed = type(exc)(message)
            except Exception:  # an exception type that wants other arguments
                renamed = ValueError(message)
            raise renamed from None
    finally:
        Path(tmp).unlink(missing_ok=True)


_uploaded_models: dict[str, Any] = {}
_uploaded_lock = threading.Lock()


def uploaded_unet_bytes(data: bytes, file_name: str) -> Any:
    """Load an uploaded ``.keras`` U-Net in safe mode from any thread (the last two files stay loaded)."""
    digest = hashlib.sha256(data).hexdigest()
    with _uploaded_lock:
        if digest in _uploaded_models:
            return _uploaded_models[digest]
    model = _load_unet_from_bytes(data, file_name)
    with _uploaded_lock:
        while len(_uploaded_models) >= 2:
            _uploaded_models.pop(next(iter(_uploaded_models)))
        _uploaded_models[digest] = model
    return model


_prefetch_lock = threading.Lock()
_prefetch_started = False


def prefetch_model_code() -> None:
    """Import the model code (TensorFlow, ~5-10 s) in a background thread, once per server process.

    Called by the pages that run a model, so the import overlaps with the user choosing options
    instead of delaying the first click; the app itself still opens without TensorFlow.
    """
    global _prefetch_started
    with _prefetch_lock:
        if _prefetch_started:
            return
        _prefetch_started = True
    threading.Thread(target=_import_model_code, name="brats-prefetch-models", daemon=True).start()


def _import_model_code() -> None:
    import core.synthesis.generate  # noqa: F401  (imports core.segmentation.inference, core.synthesis.cvae, keras)
