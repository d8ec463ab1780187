"""App-side state and actions of BraTS Studio: the current case, label layers, cached models.

No layout here (see ``pages/_common.py`` for the shared widgets). Everything heavy is imported
lazily: TensorFlow/Keras load only when a model is first needed, so the app opens fast.

Weights paths can be injected with the environment variables ``BRATS_UNET_WEIGHTS`` and
``BRATS_CVAE_WEIGHTS`` (tests use tiny models this way); otherwise ``weights/unet.keras`` and
``weights/cvae.keras``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from core.io.case import Case, CaseError, label_map_bytes, load_case, load_case_from_bytes, load_case_from_zip
from core.io.case import cases_zip as core_cases_zip
from core.io.weights import WEIGHTS_ENV, ModelLoadError, load_model_card, weights_path
from core.services.jobs import Job, JobRegistry
from core.services.session_store import SESSION_ENV, SessionStore, cleanup_sessions, valid_id
from core.viewer.mask_edit import MaskEditor
from core.viewer.render import DisplayGeometry, auto_window

ROOT = Path(__file__).resolve().parent
MODEL_NAMES = {"unet": "U-Net (segmentation)", "cvae": "CVAE (synthetic MRI)",
               "insertion": "insertion VAE-GAN (tumour into this case)"}
TRAIN_COMMANDS = {"unet": "python -m train.unet", "cvae": "python -m train.cvae",
                  "insertion": "python -m train.insertion"}
INTO_CASE, NEW_BRAIN = "into this case", "new brain"  # the two generation modes
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
    """Samples generated from a mask of the current case: rendered into it (``INTO_CASE``) or CVAE new brains."""

    cases: list[Case]
    source: str
    seed: int
    temperature: float
    seconds: float
    key: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    fidelity: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    mode: str = NEW_BRAIN


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
    editor_rev: int = 0  # last edit revision from the browser viewer applied to ``editor``
    editor_synced: int = 0  # editor version the browser's drawing layer already shows
    editor_reloads: int = 0  # bumped when the browser must reload the labels (a change made here)
    cursor: tuple[int, int, int] | None = None  # one cursor for every page (voxel of the current case)
    sid: str = ""  # browser session id (in the URL as ?sid=…): the key of the work saved on the server
    saved_edit_version: int = -1  # editor version last written to the session store

    def edit_layer_key(self) -> str:
        """Cache key of the edited mask's current content (unique per editor object and version)."""
        assert self.editor is not None
        return f"{self.key}:edit:{self.editor_key}:{self.editor.uid}:{self.editor.version}"

    def cursor_voxel(self) -> tuple[int, int, int]:
        """The shared cursor; starts at the tumour's centre (or the volume's) for a new case."""
        if self.case is None:
            raise RuntimeError("no case loaded")
        if self.cursor is None:
            layers = self.layers()
            name = next((n for n in (EDITED, PREDICTION, REFERENCE) if n in layers), None)
            self.cursor = initial_cursor(self.case, layers[name].labels if name else None)
        return self.cursor

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
            key = self.edit_layer_key()
            out[EDITED] = Layer(EDITED, key, self.editor.labels)
        return out


def studio() -> Studio:
    """This session's :class:`Studio` (created on first use)."""
    if "studio" not in st.session_state:
        st.session_state["studio"] = Studio()
    return st.session_state["studio"]


def set_case(case: Case, source: dict[str, Any] | None = None, files: dict[str, bytes] | None = None,
             case_id: str | None = None) -> None:
    """Make ``case`` the current case (its prediction, edits and samples start empty).

    The previous case's work stays saved on the server (see :func:`recent_cases`); ``source`` says
    how to load this case again after a browser reload (``files``: uploaded bytes kept for that).
    """
    state = studio()
    state.case = case
    state.key = case_id or uuid.uuid4().hex[:12]
    state.geometry = DisplayGeometry.from_affine(case.affine)
    state.prediction = None
    state.editor = None
    state.editor_key = ""
    state.editor_source = ""
    state.samples = None
    state.cursor = None
    state.editor_rev = state.editor_synced = state.editor_reloads = 0
    store = session_store()
    if store is not None and source is not None:
        try:
            store.save_source(state.key, {**source, "name": case.name}, files)
            store.set_current(state.key, case.name)
        except OSError as exc:
            flash("warning", f"Could not save the session on the server ({exc}): a reload will lose it.")


def note_cursor(value: Any) -> None:
    """Take the browser viewer's cursor (world mm in its value) as the shared cursor."""
    from core.viewer.niivue import world_to_voxel

    state = studio()
    mm = value.get("cursor_mm") if isinstance(value, dict) else None
    if state.case is not None and isinstance(mm, list) and len(mm) == 3:
        state.cursor = world_to_voxel(mm, state.case.affine, state.case.shape)


def flash(kind: str, message: str) -> None:
    """Queue a message (``"success"``, ``"info"``, ``"warning"``, ``"error"``) for the next run."""
    studio().flash.append((kind, message))


# --------------------------------------------------------------------------- saved sessions

SID_PARAM = "sid"


def session_store() -> SessionStore | None:
    """The server-side store of this browser session's work (``None`` when saving is off)."""
    sid = studio().sid
    if not sid or os.environ.get(SESSION_ENV, "").lower() == "off":
        return None
    return SessionStore(sid)


def ensure_session() -> None:
    """Give the session its id (kept in the URL, so a reload finds the saved work) and restore that work.

    Call at the top of every run: Streamlit drops query parameters on page changes, so the id is
    written back each time.
    """
    state = studio()
    if not state.sid:
        sid = st.query_params.get(SID_PARAM, "")
        state.sid = sid if valid_id(sid) else uuid.uuid4().hex[:16]
        store = session_store()
        if store is not None and state.case is None:
            current = store.workspace()["current"]
            if current:
                error = switch_case(current)
                if error:
                    flash("warning", f"Could not restore the saved case: {error}")
                else:
                    flash("info", f"Restored your session: **{state.case.name}** with its saved work.")
    if st.query_params.get(SID_PARAM) != state.sid:
        st.query_params[SID_PARAM] = state.sid
    collect_jobs()
    _cleanup_old_sessions()


_CLEANUP_EVERY_S = 3600.0
_cleanup_lock = threading.Lock()
_last_cleanup = [0.0]


def _cleanup_old_sessions() -> None:
    """At most once an hour per server: remove old saved sessions in a background thread (see
    ``core.services.session_store.cleanup_sessions``; the sessions open in this server are kept)."""
    if os.environ.get(SESSION_ENV, "").lower() == "off":
        return
    with _cleanup_lock:
        if time.time() - _last_cleanup[0] < _CLEANUP_EVERY_S:
            return
        _last_cleanup[0] = time.time()
    store = session_store()
    if store is not None:
        store.touch()
    keep = tuple({studio().sid} | job_registry().busy_sessions())
    threading.Thread(target=cleanup_sessions, kwargs={"keep": keep}, name="brats-session-cleanup",
                     daemon=True).start()


def _load_saved(store: SessionStore, case_id: str) -> Case:
    source, files = store.source(case_id)
    kind = source.get("kind")
    if kind == "demo":
        return _demo_case()
    if kind == "folder":
        return load_case(source["path"])
    if kind == "zip":
        return load_case_from_zip(files[source["file"]], name=None)
    if kind == "files":
        return load_case_from_bytes(files, name=source.get("upload_name") or source.get("name", "upload"))
    raise CaseError(f"unknown saved case kind {kind!r}")


def switch_case(case_id: str) -> str | None:
    """Make a saved case of this session current again, with its prediction, edits and samples.

    Returns:
        ``None`` on success, else the message to show (the current case stays).
    """
    store = session_store()
    if store is None:
        return "Saving is off on this server."
    try:
        case = _load_saved(store, case_id)
    except (CaseError, ValueError, OSError, KeyError) as exc:
        return f"{exc}"
    set_case(case, case_id=case_id)
    store.set_current(case_id, case.name)
    state = studio()
    saved = store.labels(case_id, "prediction")
    if saved is not None and saved[0].shape == case.shape:
        labels, meta = saved
        state.prediction = Prediction(labels, float(meta.get("seconds", 0.0)), str(meta.get("model_name", "")),
                                      bool(meta.get("tta", False)), meta.get("metrics"))
    saved = store.labels(case_id, "edited")
    if saved is not None and saved[0].shape == case.shape:
        labels, meta = saved
        state.editor = MaskEditor(labels, state.geometry)
        state.editor_key = str(meta.get("editor_key") or uuid.uuid4().hex[:8])
        state.editor_source = str(meta.get("source", "Empty"))
        state.editor_rev = int(meta.get("rev", 0))
        history = store.history(case_id, "edited")
        if history is not None:
            state.editor.restore_history(history)  # Undo / Redo go on where they were before the reload
        state.saved_edit_version = state.editor.version
    saved_samples = store.samples(case_id)
    if saved_samples is not None:
        images, segs, meta = saved_samples
        cases = [Case(image, case.affine, case.header, seg, name=name)
                 for image, seg, name in zip(images, segs, meta["names"])]
        state.samples = Samples(cases, meta["source"], int(meta["seed"]), float(meta["temperature"]),
                                float(meta["seconds"]),
                                fidelity={int(k): v for k, v in (meta.get("fidelity") or {}).items()},
                                mode=str(meta.get("mode", NEW_BRAIN)))
    return None


def recent_cases() -> list[dict[str, Any]]:
    """Saved cases of this session other than the current one, newest first, with what each holds."""
    store = session_store()
    if store is None:
        return []
    out = []
    for entry in store.workspace()["recent"]:
        if entry.get("case_id") == studio().key:
            continue
        try:
            out.append({**store.summary(entry["case_id"]), "saved": entry.get("saved", 0.0)})
        except (ValueError, OSError):
            continue
    return out


def persist_prediction() -> None:
    """Save the current prediction (called after each segmentation)."""
    state, store = studio(), session_store()
    if store is None or state.prediction is None:
        return
    p = state.prediction
    store.save_labels(state.key, "prediction", p.labels,
                      {"seconds": p.seconds, "model_name": p.model_name, "tta": p.tta, "metrics": p.metrics})


def persist_edits() -> None:
    """Save the edited mask when it changed since the last save (cheap to call after every edit)."""
    state, store = studio(), session_store()
    if store is None or state.editor is None or state.editor.version == state.saved_edit_version:
        return
    try:
        store.save_labels(state.key, "edited", state.editor.labels,
                          {"editor_key": state.editor_key, "source": state.editor_source, "rev": state.editor_rev},
                          history=state.editor.history_arrays())
        state.saved_edit_version = state.editor.version
    except OSError as exc:
        flash("warning", f"Could not save the edits on the server: {exc}")


def persist_samples(meta_only: bool = False) -> None:
    """Save the generated samples, or only their metadata (fidelity results) with ``meta_only``."""
    state, store = studio(), session_store()
    if store is None or state.samples is None:
        return
    s = state.samples
    meta = {"names": [c.name for c in s.cases], "source": s.source, "seed": s.seed, "temperature": s.temperature,
            "seconds": s.seconds, "fidelity": {str(k): v for k, v in s.fidelity.items()}, "mode": s.mode}
    try:
        if meta_only:
            store.update_samples_meta(state.key, meta)
        else:
            store.save_samples(state.key, [c.image for c in s.cases], [c.seg for c in s.cases], meta)
    except OSError as exc:
        flash("warning", f"Could not save the samples on the server: {exc}")


# --------------------------------------------------------------------------- loading


@st.cache_resource(show_spinner=False)
def _demo_case() -> Case:
    from core.synthesis.demo import demo_case

    return demo_case()


def load_into_session(loader: Callable[..., Case], *args: Any, source: dict[str, Any] | None = None,
                      files: dict[str, bytes] | None = None, **kwargs: Any) -> str | None:
    """Run a case loader and make its result the current case.

    Args:
        source, files: how to load it again after a reload (see :func:`set_case`).

    Returns:
        ``None`` on success, else the message to show; the previous case stays current.
    """
    try:
        case = loader(*args, **kwargs)
    except (CaseError, ValueError, OSError) as exc:
        return str(exc)
    except Exception as exc:  # a loader bug must not end the session
        return f"Could not load the case: {type(exc).__name__}: {exc}"
    previous = studio().case
    if previous is not None and session_store() is not None:
        flash("info", f"Your previous case **{previous.name}** and its work are saved: switch back to it under "
                      "*Recent cases* on the Load page.")
    set_case(case, source, files)
    return None


def load_demo() -> str | None:
    """Load the built-in demo case (a deterministic phantom, generated once per server)."""
    return load_into_session(_demo_case, source={"kind": "demo"})


def load_uploads(files: dict[str, bytes], progress: Progress | None = None) -> str | None:
    """Load uploaded files: one ``.zip`` of a case folder, or the modality files (+ optional seg)."""
    if not files:
        return "Choose the four modality files (and optionally the segmentation) or one .zip first."
    zips = [name for name in files if name.lower().endswith(".zip")]
    if zips:
        if len(files) > 1:
            return f"Upload either one .zip ({', '.join(zips)}) or the .nii/.nii.gz files, not both."
        name = zips[0]
        return load_into_session(load_case_from_zip, files[name], name=None, progress=progress,
                                 source={"kind": "zip", "file": Path(name).name}, files=files)
    return load_into_session(load_case_from_bytes, files, name=_upload_name(files), progress=progress,
                             source={"kind": "files", "upload_name": _upload_name(files)}, files=files)


def _upload_name(files: dict[str, bytes]) -> str:
    """Case name of uploaded files: what precedes the modality token (``X_t1.nii.gz`` -> ``X``), if shared."""
    prefixes = set()
    for name in files:
        stem = Path(name).name.split(".nii")[0]
        cut = max(stem.rfind(sep) for sep in "_-. ")  # the token rule of core.io.case.identify_file
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
    return load_into_session(load_case, folder, progress=progress,
                             source={"kind": "folder", "path": str(folder.resolve())})


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
    from core.segmentation.inference import load_model

    return load_model(path)


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


# --------------------------------------------------------------------------- actions


def segment_current(model: Any, model_name: str, *, tta: bool, progress: Progress | None = None) -> Prediction:
    """Segment the current case, store the result as its prediction (with metrics if a reference exists).

    Runs :func:`core.segmentation.pipeline.segment` with ``force`` (no refusal: the Load page showed the checks).
    """
    from core.segmentation.pipeline import SegmentOptions, segment

    state = studio()
    if state.case is None:
        raise RuntimeError("no case loaded")
    result = segment(state.case, model, SegmentOptions(tta=tta, force=True, force_hint=None), progress=progress)
    state.prediction = _prediction(result, model_name, tta)
    persist_prediction()
    return state.prediction


def _prediction(result: Any, model_name: str, tta: bool) -> Prediction:
    """The app's :class:`Prediction` of a ``core.segmentation.pipeline.CaseSegmentation``."""
    return Prediction(result.labels, result.seconds, model_name, tta, result.metrics)


@st.cache_resource(show_spinner=False)
def job_registry() -> JobRegistry:
    """The server's background runs (one registry per server process)."""
    return JobRegistry()


def job(kind: str) -> Job | None:
    """This session's latest job of a kind (``"segment"``, ``"generate"``)."""
    return job_registry().get(studio().sid, kind)


def start_segmentation(load_model: Callable[[], Any], model_name: str, *, tta: bool) -> Job:
    """Segment the current case in a background run (it goes on if the user leaves the page or reloads).

    ``load_model`` runs in the background too (the first TensorFlow import takes seconds). The
    result is stored by :func:`collect_jobs` on the next run of any page.
    """
    from core.segmentation.pipeline import SegmentOptions, segment

    state = studio()
    case = state.case
    if case is None:
        raise RuntimeError("no case loaded")
    # noise, constant, too large, ...: what `python -m core.segment` refuses (the Load page showed it already)
    options = SegmentOptions(tta=tta, force_hint=None)

    def run(job: Job) -> Prediction:
        from core.segmentation.inference import tta_variants

        with _EasedProgress(job, len(tta_variants(tta))) as progress:
            result = segment(case, options=options, load_model=load_model, progress=progress)
        return _prediction(result, model_name, tta)

    return job_registry().start(state.sid or "local", "segment", state.key, f"{model_name} on {case.name}", run)


class _EasedProgress:
    """Progress callback for ``segment_case`` that keeps the bar moving during a forward pass.

    A forward pass reports nothing until it ends (the first one in a server also builds the
    network: ~15-20 s here), so the bar sat at 10 %. While a pass runs, the bar creeps toward the
    next real step on an estimate of the pass's duration (the last one measured), and says so.
    """

    _last_pass_s = [20.0]  # first pass: compile + run (measured 17 s on 2 cores)

    def __init__(self, job: Job, passes: int = 1) -> None:
        self.job = job
        self.step = 0.8 / max(passes, 1)  # segment_case spreads its passes over 0.1 .. 0.9
        self._stop = threading.Event()
        self._pass_started: float | None = None

    def __call__(self, fraction: float, message: str) -> None:
        self._end_pass()
        self.job.progress(fraction, message)
        if message == "predicting" or message.startswith("forward pass"):
            self._start_pass(fraction)

    def _start_pass(self, fraction: float) -> None:
        if fraction >= 0.9:
            return
        self._pass_started, self._stop = time.perf_counter(), threading.Event()
        expected, job, stop = self._last_pass_s[0], self.job, self._stop
        target = min(0.9, fraction + self.step)
        base = job.message

        def creep() -> None:
            start = time.perf_counter()
            while not stop.wait(0.25):
                elapsed = time.perf_counter() - start
                job.fraction = max(job.fraction, fraction + (target - fraction) * (1 - np.exp(-elapsed / expected)))
                job.message = f"{base} (about {max(expected - elapsed, 0):.0f} s left, estimated)"

        threading.Thread(target=creep, name="brats-progress", daemon=True).start()

    def _end_pass(self) -> None:
        if self._pass_started is not None:
            self._stop.set()
            self._last_pass_s[0] = max(1.0, time.perf_counter() - self._pass_started)
            self._pass_started = None

    def __enter__(self) -> _EasedProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def collect_jobs() -> list[Job]:
    """Store the results of this session's finished runs (each once) and queue a message about each."""
    state = studio()
    finished = job_registry().collect(state.sid or "local")
    for done in finished:
        if done.status == "cancelled":
            flash("warning", f"The {done.kind} run ({done.label}) was cancelled after {done.elapsed:.0f} s.")
        elif done.status == "failed":
            flash("error", f"{'Segmentation' if done.kind == 'segment' else 'Generation'} failed: {done.error}")
        elif done.kind == "segment":
            prediction: Prediction = done.result
            if done.case_id == state.key:
                state.prediction = prediction
                persist_prediction()
                flash("success", f"Segmented with {prediction.model_name} in {prediction.seconds:.1f} s"
                                 f"{' (TTA)' if prediction.tta else ''}. The prediction is now the Viewer's overlay.")
            else:  # the user switched cases meanwhile: keep it with its case
                store = session_store()
                if store is not None:
                    store.save_labels(done.case_id, "prediction", prediction.labels,
                                      {"seconds": prediction.seconds, "model_name": prediction.model_name,
                                       "tta": prediction.tta, "metrics": prediction.metrics})
                flash("info", f"The segmentation of another case ({done.label}) finished: it is saved with that "
                              "case (Load → Recent cases).")
    return finished


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
    state.editor_rev = 0
    state.editor_synced = 0
    state.editor_reloads = 0
    state.saved_edit_version = -1
    persist_edits()


def apply_viewer_edits(value: Any) -> int:
    """Apply the browser viewer's edits not applied yet (each revision exactly once, in order).

    Returns:
        Number of events applied. A malformed event is skipped with a flash message.
    """
    from core.viewer.niivue import new_events

    state = studio()
    editor, case = state.editor, state.case
    if editor is None or case is None:
        return 0
    try:
        events = new_events(value, state.editor_key, state.editor_rev, case.shape, case.affine)
    except ValueError as exc:
        flash("error", f"An edit from the viewer was rejected: {exc}")
        return 0
    for event in events:
        in_sync = editor.version == state.editor_synced
        if event.op == "paint":
            editor.paint_voxels(event.voxels, event.values, event.tool or "stroke")
            if in_sync:  # the browser drew it: no reload needed
                state.editor_synced = editor.version
        elif event.op == "undo":
            editor.undo()
        else:
            editor.redo()
        state.editor_rev = event.rev
    if events:
        persist_edits()
    return len(events)


def editor_labels_token() -> str:
    """Token that changes whenever the browser must reload the edited labels (undo, fill, clear…)."""
    state = studio()
    if state.editor is None:
        return ""
    if state.editor.version != state.editor_synced:
        state.editor_reloads += 1
        state.editor_synced = state.editor.version
    return f"{state.editor_key}:{state.editor_reloads}"


def generate_samples(
    model: Any, source: str, *, n_samples: int, seed: int, temperature: float, progress: Progress | None = None
) -> Samples:
    """Sample the CVAE from a label layer of the current case and store the samples.

    The case's own brain outline (non-zero voxels) shapes the samples, so any 1 mm grid the model
    was built for works, not only the BraTS template's.
    """
    from core.preprocessing.preprocess import brain_mask
    from core.synthesis.generate import generate_cases

    state = studio()
    case = state.case
    if case is None:
        raise RuntimeError("no case loaded")
    mask = state.layers()[source].labels
    start = time.perf_counter()
    cases = generate_cases(
        np.ascontiguousarray(mask), case.affine, case.header, model,
        n_samples=n_samples, seed=seed, temperature=temperature, progress=progress, brain=brain_mask(case.image),
        name=f"{source} label map of {case.name}",  # errors name what was picked, not "mask"
    )
    for i, sample in enumerate(cases):
        sample.name = f"{case.name}-synth-s{seed}-{i + 1:02d}"
    state.samples = Samples(cases, source, seed, temperature, time.perf_counter() - start)
    persist_samples()
    return state.samples


def insert_samples(
    model: Any, source: str, *, n_samples: int, seed: int, temperature: float, progress: Progress | None = None
) -> Samples:
    """Render a label layer of the current case into the case itself (``core.synthesis``) and store the samples.

    The case's own tumour (its reference, else the prediction, else the shipped U-Net's) is replaced: only the
    region around it and the new mask changes; every other voxel stays the case's.
    """
    from core.synthesis.insert import insert_tumour

    state = studio()
    case = state.case
    if case is None:
        raise RuntimeError("no case loaded")
    layers = state.layers()
    own = next((layers[n].labels for n in (REFERENCE, PREDICTION) if n in layers), None)
    unet = shipped_model("unet") if own is None else None
    start = time.perf_counter()
    cases = insert_tumour(case, np.ascontiguousarray(layers[source].labels), model, n_samples=n_samples, seed=seed,
                          temperature=temperature, host_tumour=own, unet=unet, progress=progress,
                          name=f"{source} label map of {case.name}")
    for i, sample in enumerate(cases):
        sample.name = f"{case.name}-insert-s{seed}-{i + 1:02d}"
    state.samples = Samples(cases, source, seed, temperature, time.perf_counter() - start, mode=INTO_CASE)
    persist_samples()
    return state.samples


def sample_fidelity(index: int, unet: Any, progress: Progress | None = None) -> dict[str, dict[str, float]]:
    """Segment generated sample ``index`` with the U-Net; metrics against the mask it was generated from."""
    from core.segmentation.pipeline import SegmentOptions, segment

    samples = studio().samples
    if samples is None:
        raise RuntimeError("no samples generated")
    result = segment(samples.cases[index], unet, SegmentOptions(force=True, force_hint=None), progress=progress)
    samples.fidelity[index] = result.metrics
    persist_samples(meta_only=True)
    return samples.fidelity[index]


# --------------------------------------------------------------------------- downloads and caches


def label_download(labels: np.ndarray, case: Case, convention: str) -> bytes:
    """``.nii.gz`` bytes of a label map on the case grid (case affine and header, chosen convention)."""
    return label_map_bytes(labels, case.affine, case.header, convention)


def cases_zip(cases: list[Case], naming: str) -> bytes:
    """A ``.zip`` of BraTS-named case folders (one per case), built in memory (``core.io.case.cases_zip``)."""
    return core_cases_zip(cases, naming)


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
