"""Mask editing without a browser: strokes, slice tools and bounded undo/redo."""

from __future__ import annotations

import numpy as np
import pytest

from core.viewer.mask_edit import MaskEditor
from core.viewer.render import DisplayGeometry, display_view

BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
SHAPE = (12, 10, 8)


@pytest.fixture
def editor() -> MaskEditor:
    return MaskEditor(np.zeros(SHAPE, dtype=np.uint8), DisplayGeometry.from_affine(BRATS_AFFINE), history_limit=3)


def test_stroke_on_scaled_canvas_hits_the_displayed_voxel(editor):
    zoom = 3
    rows, cols = SHAPE[1], SHAPE[0]  # axial view of a BraTS-oriented volume: (Y, X)
    canvas = np.zeros((rows * zoom, cols * zoom, 4), dtype=np.uint8)
    canvas[0 * zoom : 1 * zoom, 2 * zoom : 3 * zoom] = (255, 0, 0, 255)  # screen (row 0, col 2)
    assert editor.apply_stroke("axial", 5, canvas, 3) == 1
    voxel = editor.geometry.display_to_voxel("axial", 5, 0, 2, SHAPE)
    assert voxel == (2, 0, 5)  # BraTS: screen col = x, screen row = y in the axial view
    assert editor.labels[voxel] == 3 and np.count_nonzero(editor.labels) == 1


def test_stroke_on_flipped_plane(editor):
    # coronal rows run inferior-ward: screen row 0 is the top slice z = Z-1
    canvas = np.zeros((SHAPE[2], SHAPE[0], 4), dtype=np.uint8)
    canvas[0, 0, 3] = 255
    editor.apply_stroke("coronal", 4, canvas, 2)
    assert editor.labels[0, 4, SHAPE[2] - 1] == 2 and np.count_nonzero(editor.labels) == 1


def test_erase_label_and_labels_are_read_only(editor):
    mask = np.ones((SHAPE[1], SHAPE[0]), dtype=bool)
    editor.paint("axial", 1, mask, 2)
    small = np.zeros_like(mask)
    small[3:5, 3:5] = True
    assert editor.paint("axial", 1, small, 0) == 4
    assert np.count_nonzero(editor.labels[:, :, 1]) == mask.size - 4
    with pytest.raises(ValueError):
        editor.labels[0, 0, 0] = 1
    with pytest.raises(ValueError, match="0..3"):
        editor.paint("axial", 1, mask, 4)
    with pytest.raises(ValueError, match="does not match"):
        editor.paint("axial", 1, mask[:2], 1)


def test_fill_holes_keeps_inner_labels(editor):
    sl = np.zeros((SHAPE[1], SHAPE[0]), dtype=np.uint8)
    sl[2:8, 2:8] = 2
    sl[4:6, 4:6] = 0  # hole
    sl[3, 3] = 3  # ET inside must survive
    editor.paint("axial", 0, sl == 2, 2)
    editor.paint("axial", 0, sl == 3, 3)
    assert editor.fill_holes("axial", 0, 1) == 4
    result = editor.slice("axial", 0)
    assert np.all(result[4:6, 4:6] == 1) and result[3, 3] == 3 and result[0, 0] == 0


def test_remove_islands(editor):
    mask = np.zeros((SHAPE[1], SHAPE[0]), dtype=bool)
    mask[1:5, 1:5] = True  # 16 voxels
    mask[8, 8] = True  # 1-voxel island
    editor.paint("axial", 2, mask, 2)
    assert editor.remove_islands("axial", 2, min_voxels=5) == 1
    result = editor.slice("axial", 2)
    assert result[8, 8] == 0 and np.count_nonzero(result) == 16
    assert editor.remove_islands("axial", 3, min_voxels=5) == 0  # empty slice: nothing, no history step


def test_clear_and_copy_slice(editor):
    mask = np.zeros((SHAPE[2], SHAPE[1]), dtype=bool)  # sagittal: (Z, Y)
    mask[2:4, 2:6] = True
    editor.paint("sagittal", 5, mask, 1)
    assert editor.copy_slice("sagittal", 5, 6) == 8
    assert np.array_equal(editor.labels[5], editor.labels[6]) and editor.labels[6].sum() == 8
    assert editor.clear_slice("sagittal", 5) == 8
    assert not editor.labels[5].any() and editor.labels[6].any()


def test_undo_redo_and_history_limit(editor):
    states = [editor.labels.copy()]
    for i in range(4):
        mask = np.zeros((SHAPE[1], SHAPE[0]), dtype=bool)
        mask[i, i] = True
        editor.paint("axial", i, mask, 1 + i % 3)
        states.append(editor.labels.copy())
    version = editor.version
    # limit 3: only the last three steps can be undone
    for expected in (states[3], states[2], states[1]):
        assert editor.undo()
        assert np.array_equal(editor.labels, expected)
    assert not editor.undo() and not editor.can_undo
    assert editor.version == version + 3
    assert editor.redo() and np.array_equal(editor.labels, states[2])
    # a new edit drops the redo branch
    editor.clear_slice("axial", 1)
    assert not editor.can_redo and not editor.redo()
    assert editor.can_undo


def test_no_op_edits_leave_history_alone(editor):
    assert editor.clear_slice("axial", 0) == 0
    assert editor.copy_slice("axial", 2, 2) == 0
    assert not editor.can_undo and editor.version == 0


def test_editor_copies_input_and_validates():
    geometry = DisplayGeometry.from_affine(BRATS_AFFINE)
    source = np.zeros(SHAPE, dtype=np.uint8)
    editor = MaskEditor(source, geometry)
    editor.paint("axial", 0, np.ones((SHAPE[1], SHAPE[0]), bool), 2)
    assert not source.any()
    assert np.array_equal(display_view(editor.labels, "axial", 0, geometry), np.full((SHAPE[1], SHAPE[0]), 2))
    with pytest.raises(ValueError, match="0..3"):
        MaskEditor(np.full(SHAPE, 4, dtype=np.uint8), geometry)
    with pytest.raises(ValueError, match="3D"):
        MaskEditor(np.zeros((3, 3)), geometry)


def test_history_survives_a_save_and_restore(editor):
    """What a reload does: labels + history saved, a new editor restored from them undoes/redoes the same."""
    geometry = DisplayGeometry.from_affine(BRATS_AFFINE)
    editor = MaskEditor(np.zeros(SHAPE, dtype=np.uint8), geometry, history_limit=5)
    editor.paint_voxels((np.array([1, 2]), np.array([3, 3]), np.array([4, 4])), np.array([3, 3]))
    mask = np.zeros(editor.slice("axial", 2).shape, bool)
    mask[2:5, 1:4] = True
    editor.paint("axial", 2, mask, 2)  # a slice step
    editor.paint_voxels((np.array([5]), np.array([6]), np.array([2])), np.array([1]))
    editor.undo()  # one step on the redo stack
    saved_labels, history = editor.labels.copy(), editor.history_arrays()

    restored = MaskEditor(saved_labels, geometry, history_limit=5)
    assert restored.restore_history(history)
    assert restored.undo_depth == editor.undo_depth and restored.can_redo
    assert restored.redo() and editor.redo()
    assert np.array_equal(restored.labels, editor.labels)
    while editor.undo():
        assert restored.undo() and np.array_equal(restored.labels, editor.labels)
    assert not restored.can_undo and not restored.labels.any()
    # history that does not fit the labels (another mask was saved) is refused, not applied
    other = MaskEditor(np.zeros(SHAPE, dtype=np.uint8), geometry)
    assert not other.restore_history(history) and not other.can_undo
    assert not other.restore_history({"stack": np.zeros(1)})  # malformed


def test_step_digest_names_the_step_undo_and_redo_would_apply(editor):
    assert editor.step_digest("undo") is None and editor.step_digest("redo") is None
    voxels = (np.array([1, 2]), np.array([1, 1]), np.array([0, 0]))
    editor.paint_voxels(voxels, np.array([2, 2]))
    first = editor.step_digest("undo")
    editor.paint_voxels(voxels, np.array([3, 3]))
    second = editor.step_digest("undo")
    assert first and second and first != second  # same voxels, other values
    editor.undo()
    assert editor.step_digest("redo") == second and editor.step_digest("undo") == first
    restored = MaskEditor(editor.labels, editor.geometry)
    restored.restore_history(editor.history_arrays())
    assert restored.step_digest("undo") == first and restored.step_digest("redo") == second
    with pytest.raises(KeyError):
        editor.step_digest("sideways")
