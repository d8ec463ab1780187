"""Two browser tabs on one session (same ``?sid=``) edit one mask: every confirmed stroke is kept.

Each tab is its own Streamlit session with its own :class:`app.state.Studio`; the saved edited mask
is the shared truth (``app.persistence.shared_edits``). Here two ``Studio`` objects play the two
tabs and feed ``app.actions.apply_viewer_edits`` the component values their browsers would send
(per-tab revision numbers, as the NiiVue component numbers them). The browser side (two real
Chromium contexts) is in tests/test_browser_niivue.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from app import actions, persistence
from app.state import Studio
from core.io.case import Case
from core.services.session_store import SESSION_ENV
from core.viewer.mask_edit import MaskEditor
from core.viewer.niivue import voxel_to_ras_flat
from core.viewer.render import DisplayGeometry

SHAPE = (12, 10, 8)
AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


def _tab(case: Case, sid: str = "s" * 16, key: str = "case0001") -> Studio:
    tab = Studio()
    tab.sid, tab.case, tab.key = sid, case, key
    tab.geometry = DisplayGeometry.from_affine(case.affine)
    return tab


def _stroke(tab: Studio, client: str, rev: int, voxel: tuple[int, int, int], label: int) -> dict:
    """The component value after one stroke: this tab's unacknowledged events, as the browser resends them."""
    flat = voxel_to_ras_flat(tuple(np.array([v]) for v in voxel), SHAPE, AFFINE)
    return {"epoch": tab.editor_key, "client": client,
            "events": [{"epoch": tab.editor_key, "rev": rev, "op": "paint", "idx": flat.tolist(), "val": [label]}]}


def _start_editing(tab: Studio) -> None:
    """What ``actions.start_editing("Empty")`` does, for a tab given explicitly."""
    with persistence.shared_edits(tab):
        tab.editor = MaskEditor(np.zeros(SHAPE, np.uint8), tab.geometry)
        tab.editor_key, tab.saved_edit_version = "epoch1", -1


def _undo(tab: Studio, client: str, rev: int, op: str = "undo", mirrors: int | None = None) -> dict:
    event = {"epoch": tab.editor_key, "rev": rev, "op": op} | ({"mirrors": mirrors} if mirrors is not None else {})
    return {"epoch": tab.editor_key, "client": client, "events": [event]}



@pytest.fixture
def case(tmp_path, monkeypatch) -> Case:
    monkeypatch.setenv(SESSION_ENV, str(tmp_path / "sessions"))
    return Case(np.zeros((4, *SHAPE), np.float32), AFFINE, None, None, name="tabs")


def test_strokes_from_two_tabs_alternating_are_all_kept(case):
    tab_a, tab_b = _tab(case), _tab(case)
    assert persistence.sync_edits(tab_a) is False  # nothing saved yet
    _start_editing(tab_a)  # tab A starts editing; tab B (same session) takes A's edit session
    assert persistence.sync_edits(tab_b) and tab_b.editor_key == "epoch1"

    voxels = [(i % SHAPE[0], (2 * i) % SHAPE[1], i % SHAPE[2]) for i in range(20)]
    for i, voxel in enumerate(voxels):  # alternate tabs, each numbering its own strokes from 1
        tab, client = (tab_a, "tabA") if i % 2 == 0 else (tab_b, "tabB")
        assert actions.apply_viewer_edits(_stroke(tab, client, i // 2 + 1, voxel, 3), tab) == 1

    for tab in (tab_a, tab_b):
        persistence.sync_edits(tab)
        assert all(tab.editor.labels[v] == 3 for v in voxels), "a confirmed stroke was lost"
        assert tab.editor_strokes == 20 and tab.editor_revs == {"tabA": 10, "tabB": 10}
    saved, meta = persistence.session_store(tab_a).labels("case0001", "edited")
    assert int((saved == 3).sum()) == len(set(voxels)) and meta["generation"] == tab_a.edit_generation

    # a resent value (the browser had no acknowledgement yet) is applied once, not twice
    assert actions.apply_viewer_edits(_stroke(tab_b, "tabB", 10, voxels[-1], 3), tab_b) == 0
    # an undo in tab B undoes the newest stroke, whichever tab drew it, and tab A sees it
    actions.apply_viewer_edits(_undo(tab_b, "tabB", 11), tab_b)
    assert persistence.edits_changed_elsewhere(tab_a) and persistence.sync_edits(tab_a)
    assert tab_a.editor.labels[voxels[-1]] == 0 and tab_a.editor.labels[voxels[-2]] == 3


def test_a_tab_that_missed_the_other_tabs_save_merges_instead_of_overwriting(case):
    tab_a = _tab(case)
    _start_editing(tab_a)
    tab_b = _tab(case)
    persistence.sync_edits(tab_b)
    actions.apply_viewer_edits(_stroke(tab_a, "tabA", 1, (1, 1, 1), 2), tab_a)
    assert tab_b.editor.labels[1, 1, 1] == 0  # B has not looked yet: stale in memory
    actions.apply_viewer_edits(_stroke(tab_b, "tabB", 1, (2, 2, 2), 1), tab_b)  # B's stroke lands on A's
    assert tab_b.editor.labels[1, 1, 1] == 2 and tab_b.editor.labels[2, 2, 2] == 1
    token_before = tab_a.editor_reloads
    assert persistence.sync_edits(tab_a) and tab_a.editor_reloads == token_before + 1  # A's browser reloads
    assert tab_a.editor.labels[2, 2, 2] == 1 and tab_a.editor.labels[1, 1, 1] == 2


def test_an_undo_the_tab_already_showed_needs_no_labels_file(case):
    """Ctrl+Z / Ctrl+Y of the tab's own last stroke show at once in the browser (``mirrors``); Python keeps the
    browser's drawing when its own step is that stroke, and sends its labels file when the browser guessed wrong."""
    tab = _tab(case)
    _start_editing(tab)
    tab.editor_synced = tab.editor.version
    actions.apply_viewer_edits(_stroke(tab, "tabA", 1, (1, 1, 1), 2), tab)
    actions.apply_viewer_edits(_stroke(tab, "tabA", 2, (2, 2, 2), 3), tab)
    assert tab.editor_synced == tab.editor.version  # the browser drew both strokes

    actions.apply_viewer_edits(_undo(tab, "tabA", 3, "undo", mirrors=2), tab)
    assert tab.editor.labels[2, 2, 2] == 0 and tab.editor_synced == tab.editor.version  # shown already: no reload
    actions.apply_viewer_edits(_undo(tab, "tabA", 4, "redo", mirrors=2), tab)
    assert tab.editor.labels[2, 2, 2] == 3 and tab.editor_synced == tab.editor.version

    # the browser reverted stroke 1 on screen, but Python's next step is stroke 2: Python undoes stroke 2 and the
    # browser must load the labels file
    actions.apply_viewer_edits(_undo(tab, "tabA", 5, "undo", mirrors=1), tab)
    assert tab.editor.labels[2, 2, 2] == 0 and tab.editor.labels[1, 1, 1] == 2
    assert tab.editor_synced != tab.editor.version

    # nothing left to undo in Python (another tab undid it) while the browser showed an undo: reload too
    tab.editor_synced = tab.editor.version
    actions.apply_viewer_edits(_undo(tab, "tabA", 6, "undo", mirrors=1), tab)  # stroke 1 undone, matched
    assert tab.editor.labels[1, 1, 1] == 0 and tab.editor_synced == tab.editor.version
    version = tab.editor.version
    actions.apply_viewer_edits(_undo(tab, "tabA", 7, "undo", mirrors=1), tab)
    assert tab.editor.version == version and tab.editor_synced != version  # history empty: the screen is wrong

    # an undo the browser did not show changes the mask, and the reload follows from the version
    tab.editor_synced = tab.editor.version
    actions.apply_viewer_edits(_undo(tab, "tabA", 8, "redo"), tab)
    assert tab.editor.labels[1, 1, 1] == 2 and tab.editor_synced != tab.editor.version


def test_an_undo_shown_by_a_tab_that_missed_the_other_tabs_stroke_reloads(case):
    """Tab A reverts its own stroke on screen, but tab B drew after it: Python's undo reverts B's stroke (the
    session's newest step) and A's browser gets the labels file instead of keeping its guess."""
    tab_a, tab_b = _tab(case), _tab(case)
    _start_editing(tab_a)
    persistence.sync_edits(tab_b)
    tab_a.editor_synced = tab_a.editor.version
    actions.apply_viewer_edits(_stroke(tab_a, "tabA", 1, (1, 1, 1), 2), tab_a)
    actions.apply_viewer_edits(_stroke(tab_b, "tabB", 1, (3, 3, 3), 1), tab_b)
    reloads = tab_a.editor_reloads
    actions.apply_viewer_edits(_undo(tab_a, "tabA", 2, "undo", mirrors=1), tab_a)
    assert tab_a.editor.labels[3, 3, 3] == 0 and tab_a.editor.labels[1, 1, 1] == 2
    assert tab_a.editor_reloads > reloads or tab_a.editor_synced != tab_a.editor.version
