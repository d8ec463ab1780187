"""App-side state and actions of BraTS Studio: the current case, label layers, cached models.

No layout here (see ``pages/_common.py`` for the shared widgets). Everything heavy is imported
lazily: TensorFlow/Keras load only when a model is first needed, so the app opens fast.

Weights paths can be injected with the environment variables ``BRATS_UNET_WEIGHTS`` and
``BRATS_CVAE_WEIGHTS`` (tests use tiny models this way); otherwise ``weights/unet.keras`` and
``weights/cvae.keras``.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from core.case import Case, CaseError, label_map_bytes, load_case, load_case_from_bytes, load_case_from_zip, save_case
from core.mask_edit import MaskEditor
from core.render import DisplayGeometry, auto_window
from core.weights import WEIGHTS_ENV, ModelLoadError, load_model_card, weights_path

ROOT = Path(__file__).resolve().parent
MODEL_NAMES = {"unet": "U-Net (segmentation)", "cvae": "CVAE (synthetic MRI)"}
TRAIN_COMMANDS = {"unet": "python -m train.unet", "cvae": "python -m train.cvae"}
Progress = Callable[[float, str], None]

REFERENCE, PREDICTION, EDITED = "Reference", "Prediction", "Edited mask"


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class Layer:
    """A label map shown over a case. ``key`` changes whenever the content changes (cache key)."""

    name: str
    key: str
    labels: np.ndarray


@dataclass
class Prediction:
    """The U-Net result for the current case."""

    labels: np.ndarray
    seconds: float
    model_name: str
    tta: bool
    metrics: dict[str, dict[str, float]] | None
    key: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


@dataclass
class Samples:
    """CVAE samples generated from a mask of the current case."""

    cases: list[Case]
    source: str
    seed: int
    temperature: float
    seconds: float
    key: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    fidelity: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)


@dataclass
class Studio:
    """Everything the pages share about the current case (one per browser session)."""

    case: Case | None = None
    key: str = ""
    geometry: DisplayGeometry | None = None
    prediction: Prediction | None = None
    editor: MaskEditor | None = None
    editor_key: str = ""
    editor_source: str = ""
    samples: Samples | None = None
    flash: list[tuple[str, str]] = field(default_factory=list)

    def layers(self) -> dict[str, Layer]:
        """Label maps available for the current case, by display name."""
        out: dict[str, Layer] = {}
        if self.case is None:
            return out
        if self.case.seg is not None:
            out[REFERENCE] = Layer(REFERENCE, f"{self.key}:ref", self.case.seg)
        if self.prediction is not None:
            out[PREDICTION] = Layer(PREDICTION, f"{self.key}:pred:{self.prediction.key}", self.prediction.labels)
        if self.editor is not None:
            key = f"{self.key}:edit:{self.editor_key}:{self.editor.version}"
            out[EDITED] = Layer(EDITED, key, self.editor.labels)
        return out


def studio() -> Studio:
    """This session's :class:`Studio` (created on first use)."""
    if "studio" not in st.session_state:
        st.session_state["studio"] = Studio()
    return st.session_state["studio"]


def set_case(case: Case) -> None:
    """Make ``case`` the current case; drops the previous prediction, edits and samples."""
    state = studio()
    state.case = case
    state.key = uuid.uuid4().hex[:12]
    state.geometry = DisplayGeometry.from_affine(case.affine)
    state.prediction = None
    state.editor = None
    state.editor_key = ""
    state.editor_source = ""
    state.samples = None


def flash(kind: str, message: str) -> None:
    """Queue a message (``"success"``, ``"info"``, ``"warning"``, ``"error"``) for the next run."""
    studio().flash.append((kind, message))


# --------------------------------------------------------------------------- loading


@st.cache_resource(show_spinner=False)
def _demo_case() -> Case:
    from core.demo import demo_case

    return demo_case()


def load_into_session(loader: Callable[..., Case], *args: Any, **kwargs: Any) -> str | None:
    """Run a case loader and make its result the current case.

    Returns:
        ``None`` on success, else the message to show; the previous case stays current.
    """
    try:
        case = loader(*args, **kwargs)
    except (CaseError, ValueError, OSError) as exc:
        return str(exc)
    except Exception as exc:  # a loader bug must not end the session
        return f"Could not load the case: {type(exc).__name__}: {exc}"
    set_case(case)
    return None


def load_demo() -> str | None:
    """Load the built-in demo case (a deterministic phantom, generated once per server)."""
    return load_into_session(_demo_case)


def load_uploads(files: dict[str, bytes], progress: Progress | None = None) -> str | None:
    """Load uploaded files: one ``.zip`` of a case folder, or the modality files (+ optional seg)."""
    if not files:
        return "Choose the four modality files (and optionally the segmentation) or one .zip first."
    zips = [name for name in files if name.lower().endswith(".zip")]
    if zips:
        if len(files) > 1:
            return f"Upload either one .zip ({', '.join(zips)}) or the .nii/.nii.gz files, not both."
        name = zips[0]
        return load_into_session(load_case_from_zip, files[name], name=None, progress=progress)
    return load_into_session(load_case_from_bytes, files, name=_upload_name(files), progress=progress)


def _upload_name(files: dict[str, bytes]) -> str:
    """Case name of uploaded files: what precedes the modality token (``X_t1.nii.gz`` -> ``X``), if shared."""
    prefixes = set()
    for name in files:
        stem = Path(name).name.split(".nii")[0]
        cut = max(stem.rfind(sep) for sep in "_-. ")  # the token rule of core.case.identify_file
        prefixes.add(stem[:cut] if cut > 0 else "")
    name = prefixes.pop() if len(prefixes) == 1 else ""
    return name or "upload"


def load_folder(path: str, progress: Progress | None = None) -> str | None:
    """Load a case folder on the server."""
    path = path.strip()
    if not path:
        return "Type the path of a case folder on the server first."
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return f"{folder}: no such folder on the server; give the path of a folder holding the case files."
    return load_into_session(load_case, folder, progress=progress)


# --------------------------------------------------------------------------- models


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
    from core.inference import load_model

    return load_model(path)


@st.cache_resource(show_spinner=False, max_entries=4)
def _load_cvae(path: str, mtime: float) -> Any:
    from core.generate import load_cvae

    return load_cvae(path)


def shipped_model(kind: str) -> Any:
    """The shipped (or env-injected) model, loaded once per server and file version.

    Raises:
        FileNotFoundError: the weights file does not exist.
        ValueError: the file is not a loadable model (``core.inference.ModelLoadError``).
    """
    path, _ = weights_path(kind)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights not found")
    loader = _load_unet if kind == "unet" else _load_cvae
    return loader(str(path), _mtime(path))


def uploaded_unet(data: bytes, file_name: str) -> Any:
    """Load an uploaded ``.keras`` U-Net in safe mode (once per file content in this session).

    The bytes go to a temporary file that is removed right after loading.
    """
    digest = hashlib.sha256(data).hexdigest()
    cached = st.session_state.get("uploaded_unet")
    if cached and cached[0] == digest:
        return cached[1]
    from core.inference import load_model

    fd, tmp = tempfile.mkstemp(suffix=".keras", prefix="brats_upload_")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        model = load_model(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)
    st.session_state["uploaded_unet"] = (digest, model, file_name)
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
    import core.generate  # noqa: F401  (imports core.inference, core.cvae, keras)


# --------------------------------------------------------------------------- actions


def segment_current(model: Any, model_name: str, *, tta: bool, progress: Progress | None = None) -> Prediction:
    """Segment the current case, store the result as its prediction (with metrics if a reference exists)."""
    from core.metrics import region_metrics
    from core.segment import segment_oriented as segment_case  # model orientation and back (any grid)

    state = studio()
    if state.case is None:
        raise RuntimeError("no case loaded")
    start = time.perf_counter()
    result = segment_case(state.case, model, tta=tta, progress=progress)
    seconds = time.perf_counter() - start
    metrics = None
    if state.case.seg is not None:
        if progress is not None:
            progress(1.0, "computing Dice / HD95 against the reference")
        metrics = region_metrics(result.labels, state.case.seg, state.case.spacing)
    state.prediction = Prediction(result.labels, seconds, model_name, tta, metrics)
    return state.prediction


def start_editing(source: str) -> None:
    """Start a new mask edit from ``"Prediction"``, ``"Reference"`` or ``"Empty"``."""
    state = studio()
    if state.case is None or state.geometry is None:
        raise RuntimeError("no case loaded")
    layers = state.layers()
    if source in layers:
        labels = layers[source].labels
    else:
        labels = np.zeros(state.case.shape, dtype=np.uint8)
    state.editor = MaskEditor(labels, state.geometry)
    state.editor_key = uuid.uuid4().hex[:8]
    state.editor_source = source if source in layers else "Empty"


def generate_samples(
    model: Any, source: str, *, n_samples: int, seed: int, temperature: float, progress: Progress | None = None
) -> Samples:
    """Sample the CVAE from a label layer of the current case and store the samples.

    The case's own brain outline (non-zero voxels) shapes the samples, so any 1 mm grid the model
    was built for works, not only the BraTS template's.
    """
    from core.generate import generate_cases
    from core.preprocess import brain_mask

    state = studio()
    case = state.case
    if case is None:
        raise RuntimeError("no case loaded")
    mask = state.layers()[source].labels
    start = time.perf_counter()
    cases = generate_cases(
        np.ascontiguousarray(mask), case.affine, case.header, model,
        n_samples=n_samples, seed=seed, temperature=temperature, progress=progress, brain=brain_mask(case.image),
    )
    for i, sample in enumerate(cases):
        sample.name = f"{case.name}-synth-s{seed}-{i + 1:02d}"
    state.samples = Samples(cases, source, seed, temperature, time.perf_counter() - start)
    return state.samples


def sample_fidelity(index: int, unet: Any, progress: Progress | None = None) -> dict[str, dict[str, float]]:
    """Segment generated sample ``index`` with the U-Net; metrics against the mask it was generated from."""
    from core.metrics import region_metrics
    from core.segment import segment_oriented as segment_case  # model orientation and back (any grid)

    samples = studio().samples
    if samples is None:
        raise RuntimeError("no samples generated")
    sample = samples.cases[index]
    result = segment_case(sample, unet, progress=progress)
    samples.fidelity[index] = region_metrics(result.labels, sample.seg, sample.spacing)
    return samples.fidelity[index]


# --------------------------------------------------------------------------- downloads and caches


def label_download(labels: np.ndarray, case: Case, convention: str) -> bytes:
    """``.nii.gz`` bytes of a label map on the case grid (case affine and header, chosen convention)."""
    return label_map_bytes(labels, case.affine, case.header, convention)


def cases_zip(cases: list[Case], naming: str) -> bytes:
    """A ``.zip`` of BraTS-named case folders (one per case); written via a temporary folder."""
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="brats_zip_out_") as tmp:
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:  # files are gzipped already
            for case in cases:
                folder = save_case(case, tmp, naming=naming)
                for file in sorted(folder.iterdir()):
                    zf.write(file, f"{folder.name}/{file.name}")
    return buffer.getvalue()


@st.cache_data(show_spinner=False, max_entries=64)
def window_for(image_key: str, channel: int, _volume: np.ndarray) -> tuple[float, float]:
    """Automatic window (0.5-99.5 % of the brain) of one modality, computed once per case."""
    return auto_window(_volume)


@st.cache_data(show_spinner=False, max_entries=64)
def intensity_range(image_key: str, channel: int, _volume: np.ndarray) -> tuple[float, float]:
    """Minimum and maximum of one modality (manual window slider bounds)."""
    low, high = float(_volume.min()), float(_volume.max())
    return low, high if high > low else low + 1.0


def initial_cursor(case: Case, labels: np.ndarray | None) -> tuple[int, int, int]:
    """Start position: the tumour's centre of mass when a label map is given, else the volume centre."""
    if labels is not None and labels.any():
        from scipy import ndimage

        centre = ndimage.center_of_mass(labels > 0)
        return tuple(int(round(c)) for c in centre)  # type: ignore[return-value]
    return tuple(s // 2 for s in case.shape)  # type: ignore[return-value]
