"""Saving the session's work on the server and getting it back after a browser reload.

The session id lives in the URL (``?sid=…``); ``core.services.session_store.SessionStore`` keeps each case's source,
prediction, edited mask (with its undo history) and generated samples under it. Old sessions are cleaned up at most
once an hour per server (:func:`cleanup_old_sessions`; ``BRATS_SESSION_MAX_AGE_DAYS``, ``BRATS_SESSION_MAX_GB``).
A session belongs to the user who made it (:func:`claim_session`); :func:`delete_session_data` removes it at once.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import streamlit as st

from app.access import USER_KEY, case_folder
from app.state import NEW_BRAIN, Prediction, Samples, Studio, flash, job_registry, studio
from core.io.case import Case, CaseError, load_case, load_case_from_bytes, load_case_from_zip
from core.services.session_store import (
    DEFAULT_MAX_AGE_DAYS,
    MAX_AGE_ENV,
    SESSION_ENV,
    SessionStore,
    cleanup_sessions,
)
from core.viewer.mask_edit import MaskEditor
from core.viewer.render import DisplayGeometry

SID_PARAM = "sid"


def session_store(state: Studio | None = None) -> SessionStore | None:
    """The server-side store of this browser session's work (``None`` when saving is off)."""
    sid = (state or studio()).sid
    if not sid or os.environ.get(SESSION_ENV, "").lower() == "off":
        return None
    return SessionStore(sid)


def claim_session(sid: str, user: str) -> bool:
    """Whether the saved session ``sid`` is ``user``'s (it becomes theirs when nobody owns it yet)."""
    if os.environ.get(SESSION_ENV, "").lower() == "off":
        return True
    try:
        return SessionStore(sid).claim(user)
    except OSError:
        return False


def retention_days() -> float:
    """Days a saved session is kept after its last use (``$BRATS_SESSION_MAX_AGE_DAYS``, default 14)."""
    try:
        return float(os.environ.get(MAX_AGE_ENV) or DEFAULT_MAX_AGE_DAYS)
    except ValueError:
        return DEFAULT_MAX_AGE_DAYS


def delete_session_data() -> str | None:
    """Remove this session's saved work from the server now and start a fresh, empty session.

    Running jobs of the session are cancelled; the case, prediction, edits and samples are dropped from memory;
    the new session gets a new id (and the same user).

    Returns:
        ``None`` when everything is gone, else the message to show.
    """
    state = studio()
    job_registry().forget(state.sid or "local")
    store = session_store()
    try:
        if store is not None:
            store.delete()
    except OSError as exc:
        return str(exc)
    user, login = state.user, st.session_state.get(USER_KEY)
    st.session_state.clear()  # the case, its layers, uploads and every widget value of this browser session
    if login is not None:
        st.session_state[USER_KEY] = login  # still logged in
    fresh = st.session_state["studio"] = Studio(user=user, sid=uuid.uuid4().hex[:16])
    if user:
        claim_session(fresh.sid, user)
    st.query_params[SID_PARAM] = fresh.sid
    return None


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
    reset_edit_counters(state)
    store = session_store()
    if store is not None and source is not None:
        try:
            store.save_source(state.key, {**source, "name": case.name}, files)
            store.set_current(state.key, case.name)
        except OSError as exc:
            flash("warning", f"Could not save the session on the server ({exc}): a reload will lose it.")


_CLEANUP_EVERY_S = 3600.0
_cleanup_lock = threading.Lock()
_last_cleanup = [0.0]


def cleanup_old_sessions() -> None:
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


@st.cache_resource(show_spinner=False)
def demo_case() -> Case:
    from core.synthesis.demo import demo_case

    return demo_case()


def _load_saved(store: SessionStore, case_id: str) -> Case:
    source, files = store.source(case_id)
    kind = source.get("kind")
    if kind == "demo":
        return demo_case()
    if kind == "folder":
        return load_case(case_folder(source["path"]))  # a session saved in local mode may not escape the roots
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
                                      bool(meta.get("tta", False)), meta.get("metrics"),
                                      probability_codes=_saved_probabilities(store, case_id, case, meta.get("key")))
    _take_saved_edits(state, store)
    state.samples = _load_sample_set(store, case_id, case, None)
    return None


PROBABILITIES = "probabilities"  # a prediction's WT/TC/ET probability codes (uint8, saved whole and compressed)


def _saved_probabilities(store: SessionStore, case_id: str, case: Case, key: Any) -> np.ndarray | None:
    """The saved probability codes of the saved prediction ``key`` (``None``: none, or another prediction's)."""
    saved = store.labels(case_id, PROBABILITIES) if key else None
    if saved is None or saved[1].get("prediction") != key or saved[0].shape != case.shape + (3,):
        return None
    return saved[0]


def _load_sample_set(store: SessionStore, case_id: str, case: Case, set_id: str | None) -> Samples | None:
    """A saved sample set of ``case`` (``None``: the newest) as :class:`Samples`, or ``None``."""
    saved = store.samples(case_id, set_id)
    if saved is None:
        return None
    images, segs, meta = saved
    cases = [Case(image, case.affine, case.header, seg, name=name)
             for image, seg, name in zip(images, segs, meta["names"])]
    return Samples(cases, meta["source"], int(meta["seed"]), float(meta["temperature"]), float(meta["seconds"]),
                   key=meta["set_id"], fidelity={int(k): v for k, v in (meta.get("fidelity") or {}).items()},
                   mode=str(meta.get("mode", NEW_BRAIN)))


def sample_history(state: Studio | None = None) -> list[dict[str, Any]]:
    """The current case's saved sample sets, newest first (``set_id``, mode, source, seed, names, saved)."""
    state = state or studio()
    store = session_store(state)
    if store is None or state.case is None:
        return []
    try:
        return store.sample_sets(state.key)
    except (OSError, ValueError):
        return []


def show_sample_set(set_id: str) -> None:
    """Make a saved sample set the shown one (only the shown set is held in memory)."""
    state, store = studio(), session_store()
    if store is None or state.case is None:
        return
    state.samples = _load_sample_set(store, state.key, state.case, set_id)


def delete_sample_set(set_id: str) -> None:
    """Remove a sample set from the session for good; the newest remaining one is shown."""
    state, store = studio(), session_store()
    if store is None or state.case is None:
        state.samples = None
        return
    store.delete_samples(state.key, set_id)
    state.samples = _load_sample_set(store, state.key, state.case, None)


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


def save_prediction(case_id: str, prediction: Prediction) -> None:
    """Save ``prediction`` with the saved case ``case_id`` (nothing when saving is off)."""
    store = session_store()
    if store is None:
        return
    if prediction.probability_codes is not None:  # first, so a crash between the two leaves no mismatched pair
        store.save_labels(case_id, PROBABILITIES, prediction.probability_codes, {"prediction": prediction.key},
                          sparse=False)
    store.save_labels(case_id, "prediction", prediction.labels,
                      {"seconds": prediction.seconds, "model_name": prediction.model_name, "tta": prediction.tta,
                       "metrics": prediction.metrics, "key": prediction.key})


def persist_prediction() -> None:
    """Save the current prediction (called after each segmentation)."""
    state = studio()
    if state.prediction is not None:
        save_prediction(state.key, state.prediction)


# ---------------------------------------------------------------------------- edits shared by tabs
# Several browser tabs may show one session (same ``?sid=``): each is its own Streamlit session with its
# own editor object. The saved edited mask is the one truth: every change is made under a lock, on the
# newest saved version (another tab's strokes included), and saved with the next generation number;
# a tab that sees a newer generation takes it (and its browser reloads the labels).
_EDIT_LOCKS: dict[str, threading.RLock] = {}
_EDIT_LOCKS_GUARD = threading.Lock()


def _edit_lock(store: SessionStore, case_id: str) -> threading.RLock:
    key = f"{store.folder}:{case_id}"
    with _EDIT_LOCKS_GUARD:
        return _EDIT_LOCKS.setdefault(key, threading.RLock())


def reset_edit_counters(state: Studio) -> None:
    """Forget the editing bookkeeping of the previous case or edit session."""
    state.editor_revs = {}
    state.editor_events = state.editor_strokes = state.edit_generation = 0
    state.editor_synced = state.editor_reloads = 0


def _take_saved_edits(state: Studio, store: SessionStore) -> bool:
    """Make the saved edited mask (history, per-tab revisions, counters) this tab's editor; False if none."""
    saved = store.labels(state.key, "edited")
    if saved is None or state.case is None or saved[0].shape != state.case.shape:
        return False
    labels, meta = saved
    state.editor = MaskEditor(labels, state.geometry)
    state.editor_key = str(meta.get("editor_key") or uuid.uuid4().hex[:8])
    state.editor_source = str(meta.get("source", "Empty"))
    state.editor_revs = {str(k): int(v) for k, v in (meta.get("revs") or {}).items()}
    state.editor_events = int(meta.get("events", 0))
    state.editor_strokes = int(meta.get("strokes", 0))
    state.edit_generation = int(meta.get("generation", 0))
    history = store.history(state.key, "edited")
    if history is not None:
        state.editor.restore_history(history)  # Undo / Redo go on where they were before the reload
    state.saved_edit_version = state.editor.version
    return True


def edits_changed_elsewhere(state: Studio | None = None) -> bool:
    """Whether another tab of this session saved edits this tab has not taken yet (a small JSON read)."""
    state = state or studio()
    store = session_store(state)
    if store is None or state.case is None:
        return False
    meta = store.label_meta(state.key, "edited")
    return meta is not None and int(meta.get("generation", 0)) > state.edit_generation


def sync_edits(state: Studio | None = None) -> bool:
    """Take the edits another tab saved since this tab last saved or took them; True when it did.

    The browser then reloads the labels (its own unacknowledged strokes go back on top).
    """
    state = state or studio()
    store = session_store(state)
    if store is None or state.case is None:
        return False
    with _edit_lock(store, state.key):
        if not edits_changed_elsewhere(state) or not _take_saved_edits(state, store):
            return False
        assert state.editor is not None
        state.editor_reloads += 1
        state.editor_synced = state.editor.version
        return True


@contextmanager
def shared_edits(state: Studio | None = None) -> Iterator[Studio]:
    """Change the edited mask together with the other tabs: on the newest saved version, saved after.

    Usage: ``with shared_edits() as state: state.editor.undo()``.
    """
    state = state or studio()
    store = session_store(state)
    if store is None:
        yield state
        return
    with _edit_lock(store, state.key):
        sync_edits(state)
        yield state
        persist_edits(state)


def persist_edits(state: Studio | None = None) -> None:
    """Save the edited mask when it changed since the last save (cheap to call after every edit)."""
    state = state or studio()
    store = session_store(state)
    if store is None or state.editor is None or state.editor.version == state.saved_edit_version:
        return
    generation = state.edit_generation + 1
    try:
        store.save_labels(state.key, "edited", state.editor.labels,
                          {"editor_key": state.editor_key, "source": state.editor_source, "revs": state.editor_revs,
                           "events": state.editor_events, "strokes": state.editor_strokes,
                           "generation": generation},
                          history=state.editor.history_arrays())
        state.saved_edit_version = state.editor.version
        state.edit_generation = generation
    except OSError as exc:
        flash("warning", f"Could not save the edits on the server: {exc}")


def save_samples(case_id: str, samples: Samples, meta_only: bool = False) -> None:
    """Save ``samples`` as a set of the saved case ``case_id`` (or only its metadata, e.g. fidelity results)."""
    store = session_store()
    if store is None:
        return
    meta = {"names": [c.name for c in samples.cases], "source": samples.source, "seed": samples.seed,
            "temperature": samples.temperature, "seconds": samples.seconds, "mode": samples.mode,
            "fidelity": {str(k): v for k, v in samples.fidelity.items()}, "saved": time.time()}
    try:
        if meta_only:
            previous = next((s for s in store.sample_sets(case_id) if s["set_id"] == samples.key), {})
            meta["saved"] = previous.get("saved", meta["saved"])  # its place in the history stays
            store.update_samples_meta(case_id, meta, samples.key)
        else:
            store.save_samples(case_id, [c.image for c in samples.cases], [c.seg for c in samples.cases], meta,
                               samples.key)
    except OSError as exc:
        flash("warning", f"Could not save the samples on the server: {exc}")


def persist_samples(meta_only: bool = False) -> None:
    """Save the shown samples as a set of the current case, or only their metadata with ``meta_only``."""
    state = studio()
    if state.samples is not None:
        save_samples(state.key, state.samples, meta_only)
