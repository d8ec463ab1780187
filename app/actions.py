"""What the pages do to the session: load a case, segment it, edit its mask, generate samples, download.

Each action changes the session's :class:`app.state.Studio` and saves the result (``app.persistence``).
Segmenting a case is ``core.segmentation.pipeline.segment`` (the CLI, the REST API and batch runs call it too);
long runs go to the server's job registry (``core.services.jobs``) and outlive a page or a reload.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st

from app.access import case_folder
from app.auth import LOCAL_USER
from app.models import shipped_model
from app.persistence import (
    SID_PARAM,
    claim_session,
    cleanup_old_sessions,
    demo_case,
    persist_prediction,
    persist_samples,
    save_prediction,
    save_samples,
    session_store,
    set_case,
    shared_edits,
    switch_case,
)
from app.state import (
    INTO_CASE,
    PREDICTION,
    REFERENCE,
    Prediction,
    Progress,
    Samples,
    Studio,
    flash,
    job_registry,
    studio,
)
from core.io.case import (
    Case,
    CaseError,
    label_map_bytes,
    load_case,
    load_case_from_bytes,
    load_case_from_zip,
    region_probabilities_bytes,
)
from core.io.case import cases_zip as core_cases_zip
from core.services.jobs import Job
from core.services.session_store import valid_id
from core.viewer.mask_edit import MaskEditor

if TYPE_CHECKING:
    from core.preprocessing.input_check import Finding
    from core.segmentation.pipeline import CaseSegmentation


def ensure_session() -> None:
    """Give the session its id (kept in the URL, so a reload finds the saved work) and restore that work.

    Call at the top of every run: Streamlit drops query parameters on page changes, so the id is
    written back each time.
    """
    state = studio()
    if not state.sid:
        sid = st.query_params.get(SID_PARAM, "")
        if not valid_id(sid) or not claim_session(sid, state.user or LOCAL_USER):
            sid = uuid.uuid4().hex[:16]  # no id, or another user's session: never restore that
            claim_session(sid, state.user or LOCAL_USER)
        state.sid = sid
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
    cleanup_old_sessions()


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
    return load_into_session(demo_case, source={"kind": "demo"})


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
    try:
        folder = case_folder(path)  # network mode: inside the data roots only, one message for every refusal
    except (OSError, ValueError) as exc:
        return str(exc)
    return load_into_session(load_case, folder, progress=progress, source={"kind": "folder", "path": str(folder)})


SEGMENT_ANYWAY = "Segment anyway"  # the Segment page's toggle that forces a case the checks refuse


def case_findings() -> list[Finding]:
    """The current case's plausibility findings (``core.preprocessing.input_check.check_case``).

    Computed once per case (~0.2 s for a BraTS case) and kept in the session's :class:`Studio`.
    """
    from core.preprocessing.input_check import check_case

    state = studio()
    if state.case is None:
        return []
    if state.findings_key != state.key:
        state.findings = check_case(state.case)
        state.findings_key = state.key
    return list(state.findings)


def plausibility_errors() -> list[str]:
    """What the Segment run refuses in the current case unless forced (as ``python -m core.segment`` does)."""
    from core.preprocessing.input_check import ERROR

    return [f.message for f in case_findings() if f.level == ERROR]


def _prediction(result: CaseSegmentation, model_name: str, tta: bool) -> Prediction:
    """The app's :class:`Prediction` of a ``core.segmentation.pipeline.CaseSegmentation``.

    It keeps the WT/TC/ET probabilities the pipeline computed (``SegmentOptions(probabilities=True)``, as
    ``core.segment --probabilities`` writes them) as uint8 codes: the viewer's uncertainty layer and the
    probability download.
    """
    from core.viewer.niivue import probability_codes

    regions = result.region_probabilities
    codes = None if regions is None else probability_codes(regions)
    return Prediction(result.labels, result.seconds, model_name, tta, result.metrics, probability_codes=codes)


def probability_download(codes: np.ndarray, case: Case) -> bytes:
    """``.nii.gz`` bytes of the WT/TC/ET probability map (3 frames) on the case grid with its affine and header,
    as ``python -m core.segment --probabilities`` writes it (``core.io.case.region_probabilities_bytes``)."""
    return region_probabilities_bytes(np.asarray(codes, dtype=np.float32) / 255.0, case.affine, case.header)


def start_segmentation(load_model: Callable[[], Any], model_name: str, *, tta: bool, force: bool = False) -> Job:
    """Segment the current case in a background run (it goes on if the user leaves the page or reloads).

    ``load_model`` runs in the background too (the first TensorFlow import takes seconds). The
    result is stored by :func:`collect_jobs` on the next run of any page. A case that fails a
    plausibility check (:func:`plausibility_errors`) is refused, as ``python -m core.segment``
    refuses it, unless ``force`` (the page's "Segment anyway").
    """
    from core.segmentation.pipeline import SegmentOptions, segment

    state = studio()
    case = state.case
    if case is None:
        raise RuntimeError("no case loaded")
    # noise, constant, a crop, too large, ...: what `python -m core.segment` refuses unless --force
    options = SegmentOptions(tta=tta, probabilities=True, force=force, force_hint=None)  # the page names its toggle

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
                save_prediction(done.case_id, prediction)
                flash("info", f"The segmentation of another case ({done.label}) finished: it is saved with that "
                              "case (Load → Recent cases).")
        elif done.kind == "generate":
            samples: Samples = done.result
            if done.case_id == state.key:  # shown now, and saved as a new set of the case's history
                state.samples = samples
                persist_samples()
                flash("success", f"Generated {len(samples.cases)} sample(s) in {samples.seconds:.1f} s.")
            else:
                save_samples(done.case_id, samples)
                flash("info", f"The generation for another case ({done.label}) finished: its samples are saved "
                              "with that case (Load → Recent cases).")
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
    with shared_edits(state):  # the other tabs of this session take the new edit session too
        state.editor = MaskEditor(labels, state.geometry)
        state.editor_key = uuid.uuid4().hex[:8]
        state.editor_source = source if source in layers else "Empty"
        state.editor_revs = {}
        state.editor_events = state.editor_strokes = 0
        state.editor_synced = state.editor_reloads = 0
        state.saved_edit_version = -1


def apply_viewer_edits(value: Any, state: Studio | None = None) -> int:
    """Apply the browser viewer's edits not applied yet (each revision exactly once, in order).

    Returns:
        Number of events applied. A malformed event is skipped with a flash message.
    """
    from core.viewer.niivue import new_events

    if (state or studio()).case is None:
        return 0
    with shared_edits(state) as state:  # on the newest saved mask: another tab's strokes are kept, never overwritten
        editor, case = state.editor, state.case
        if editor is None or case is None:
            return 0
        try:
            events = new_events(value, state.editor_key, state.editor_revs, case.shape, case.affine)
        except ValueError as exc:
            flash("error", f"An edit from the viewer was rejected: {exc}")
            return 0
        for event in events:
            in_sync = editor.version == state.editor_synced
            if event.op == "paint":
                if editor.paint_voxels(event.voxels, event.values, event.tool or "stroke"):
                    _remember_paint_step(state, (event.client, event.rev), editor.step_digest("undo"))
                state.editor_strokes += 1
                if in_sync:  # the browser drew it: no reload needed
                    state.editor_synced = editor.version
            else:
                _undo_or_redo(state, event, in_sync)
            state.editor_revs[event.client] = event.rev
            state.editor_events += 1
    return len(events)


PAINT_STEPS_KEPT = 64  # browser strokes whose undo step is remembered (more than the editor's history)


def _remember_paint_step(state: Studio, stroke: tuple[str, int], digest: str | None) -> None:
    state.editor_paint_steps[stroke] = digest or ""
    while len(state.editor_paint_steps) > PAINT_STEPS_KEPT:
        del state.editor_paint_steps[next(iter(state.editor_paint_steps))]


def _undo_or_redo(state: Studio, event: Any, in_sync: bool) -> None:
    """Undo or redo the editor's last step for a browser event. When the tab already showed it (``mirrors``: it
    reverted its own stroke on screen), the browser's drawing stays unless the step Python reverts is not that
    stroke or the drawing was not in step before: then the tab reloads the labels file."""
    editor = state.editor
    assert editor is not None
    expected = state.editor_paint_steps.get((event.client, event.mirrors)) if event.mirrors is not None else None
    shown = bool(expected) and in_sync and editor.step_digest(event.op) == expected
    done = editor.undo() if event.op == "undo" else editor.redo()
    if shown and done:
        state.editor_synced = editor.version  # the browser shows this already: no reload
    elif event.mirrors is not None:
        state.editor_synced = -1  # the browser guessed wrong: it must load the labels file


def editor_labels_token() -> str:
    """Token that changes whenever the browser must reload the edited labels (undo, fill, clear…)."""
    state = studio()
    if state.editor is None:
        return ""
    if state.editor.version != state.editor_synced:
        state.editor_reloads += 1
        state.editor_synced = state.editor.version
    return f"{state.editor_key}:{state.editor_reloads}"


def _new_brains(case: Case, mask: np.ndarray, source: str, model: Any, *, n_samples: int, seed: int,
                temperature: float, progress: Progress | None) -> list[Case]:
    """CVAE samples around ``mask``; the case's own brain outline (non-zero voxels) shapes them, so any
    1 mm grid the model was built for works, not only the BraTS template's."""
    from core.preprocessing.preprocess import brain_mask
    from core.synthesis.generate import generate_cases

    cases = generate_cases(
        np.ascontiguousarray(mask), case.affine, case.header, model,
        n_samples=n_samples, seed=seed, temperature=temperature, progress=progress, brain=brain_mask(case.image),
        name=f"{source} label map of {case.name}",  # errors name what was picked, not "mask"
    )
    for i, sample in enumerate(cases):
        sample.name = f"{case.name}-synth-s{seed}-{i + 1:02d}"
    return cases


def _into_case(case: Case, mask: np.ndarray, source: str, model: Any, own: np.ndarray | None, *, n_samples: int,
               seed: int, temperature: float, progress: Progress | None) -> list[Case]:
    """``mask`` rendered into ``case`` itself; its own tumour (``own``, else the shipped U-Net's) is replaced."""
    from core.synthesis.insert import insert_tumour

    unet = shipped_model("unet") if own is None else None
    cases = insert_tumour(case, np.ascontiguousarray(mask), model, n_samples=n_samples, seed=seed,
                          temperature=temperature, host_tumour=own, unet=unet, progress=progress,
                          name=f"{source} label map of {case.name}")
    for i, sample in enumerate(cases):
        sample.name = f"{case.name}-insert-s{seed}-{i + 1:02d}"
    return cases


def start_generation(mode: str, load_model: Callable[[], Any], source: str, *, n_samples: int, seed: int,
                     temperature: float) -> Job:
    """Generate in a background run with progress and Cancel, as Segment does; :func:`collect_jobs` keeps the
    result as a new sample set of its case (earlier sets stay in the session's history)."""
    state = studio()
    case = state.case
    if case is None:
        raise RuntimeError("no case loaded")
    layers = state.layers()
    mask = np.array(layers[source].labels)  # a copy: edits made meanwhile do not reach the run
    own = next((layers[n].labels for n in (REFERENCE, PREDICTION) if n in layers), None)  # the case's own tumour

    def run(job: Job) -> Samples:
        job.progress(0.02, "loading the model")
        model = load_model()
        start = time.perf_counter()
        options = {"n_samples": n_samples, "seed": seed, "temperature": temperature, "progress": job.progress}
        if mode == INTO_CASE:
            cases = _into_case(case, mask, source, model, own, **options)
        else:
            cases = _new_brains(case, mask, source, model, **options)
        return Samples(cases, source, seed, temperature, time.perf_counter() - start, mode=mode)

    label = f"{'render into the case' if mode == INTO_CASE else 'new brains'} from the {source.lower()}"
    return job_registry().start(state.sid or "local", "generate", state.key, label, run)


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


def label_download(labels: np.ndarray, case: Case, convention: str) -> bytes:
    """``.nii.gz`` bytes of a label map on the case grid (case affine and header, chosen convention)."""
    return label_map_bytes(labels, case.affine, case.header, convention)


def cases_zip(cases: list[Case], naming: str) -> bytes:
    """A ``.zip`` of BraTS-named case folders (one per case), built in memory (``core.io.case.cases_zip``)."""
    return core_cases_zip(cases, naming)
