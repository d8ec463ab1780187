"""Session state of BraTS Studio: the current case, its label layers, the server's background runs.

One :class:`Studio` per browser session (in ``st.session_state``) holds what every page shares; the job registry
(``core.services.jobs``) is one per server process. No layout here (``app.widgets``), no actions (``app.actions``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import streamlit as st

from core.io.case import Case
from core.services.jobs import Job, JobRegistry
from core.viewer.mask_edit import MaskEditor
from core.viewer.render import DisplayGeometry

INTO_CASE, NEW_BRAIN = "into this case", "new brain"  # the two generation modes
Progress = Callable[[float, str], None]
REFERENCE, PREDICTION, EDITED = "Reference", "Prediction", "Edited mask"


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
    # WT/TC/ET probabilities as uint8 codes (X, Y, Z, 3), 255 = 1 (core.viewer.niivue.probability_codes), saved and
    # restored with the labels (app.persistence); None when the pipeline returned none
    probability_codes: np.ndarray | None = None


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
    editor_revs: dict[str, int] = field(default_factory=dict)  # last edit revision applied, per browser tab
    editor_events: int = 0  # browser edits applied to the edited mask (all tabs)
    editor_strokes: int = 0  # how many of those were strokes (the rest: undo / redo)
    edit_generation: int = 0  # version of the saved edited mask this tab holds (see app.persistence.shared_edits)
    editor_synced: int = 0  # editor version the browser's drawing layer already shows
    editor_reloads: int = 0  # bumped when the browser must reload the labels (a change made here)
    # (tab, revision) of this session's recent browser strokes -> MaskEditor.step_digest of the step each made: an
    # undo / redo the tab already showed is checked against it (app.actions.apply_viewer_edits)
    editor_paint_steps: dict[tuple[str, int], str] = field(default_factory=dict)
    cursor: tuple[int, int, int] | None = None  # one cursor for every page (voxel of the current case)
    sid: str = ""  # browser session id (in the URL as ?sid=…): the key of the work saved on the server
    saved_edit_version: int = -1  # editor version last written to the session store
    user: str = ""  # who is logged in (app.login): only this user's saved sessions are restored
    findings_key: str = ""  # case key the plausibility findings below belong to (app.actions.case_findings)
    findings: list = field(default_factory=list)  # core.preprocessing.input_check.Finding s of that case

    def edit_layer_key(self) -> str:
        """Cache key of the edited mask's current content (unique per editor object and version)."""
        assert self.editor is not None
        return f"{self.key}:edit:{self.editor_key}:{self.editor.uid}:{self.editor.version}"

    def newest_result(self) -> str:
        """Identity of the newest label result of this case: the edit session, else the prediction, else the reference.

        Unlike the layer keys it does not change with each brush stroke, only when a new result appears.
        """
        if self.editor is not None:
            return f"{self.key}:edit:{self.editor_key}:{self.editor.uid}"
        if self.prediction is not None:
            return f"{self.key}:pred:{self.prediction.key}"
        return f"{self.key}:ref"

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


def initial_cursor(case: Case, labels: np.ndarray | None) -> tuple[int, int, int]:
    """Start position: the tumour's centre of mass when a label map is given, else the volume centre."""
    if labels is not None and labels.any():
        from scipy import ndimage

        centre = ndimage.center_of_mass(labels > 0)
        return tuple(int(round(c)) for c in centre)  # type: ignore[return-value]
    return tuple(s // 2 for s in case.shape)  # type: ignore[return-value]


@st.cache_resource(show_spinner=False)
def job_registry() -> JobRegistry:
    """The server's background runs (one registry per server process)."""
    return JobRegistry()


def job(kind: str) -> Job | None:
    """This session's latest job of a kind (``"segment"``, ``"generate"``)."""
    return job_registry().get(studio().sid, kind)
