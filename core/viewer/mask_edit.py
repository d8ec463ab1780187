"""Pure mask-editing operations on one slice of a label map, with bounded undo/redo.

Every operation works on a slice in *display orientation* (what the user sees, see
:mod:`core.viewer.render`) and writes through a numpy view into the 3D label map, so screen pixels
map exactly onto voxels. History entries are per-slice snapshots, so memory stays small
(one slice before and after per step) whatever the volume size.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from core.io.labels import NUM_CLASSES
from core.viewer.render import DisplayGeometry, display_view, stroke_to_slice

DEFAULT_HISTORY = 30


@dataclass(frozen=True)
class Edit:
    """One undoable step: a slice before and after an operation."""

    plane: str
    index: int
    before: np.ndarray
    after: np.ndarray
    action: str


@dataclass(frozen=True)
class VoxelEdit:
    """One undoable step on scattered voxels (a brush stroke from the 3D viewer): their values before and after."""

    voxels: tuple[np.ndarray, np.ndarray, np.ndarray]
    before: np.ndarray
    after: np.ndarray
    action: str


class MaskEditor:
    """Edits an internal label map (uint8 ``(X, Y, Z)``, classes 0..3) slice by slice.

    Args:
        labels: starting label map; copied, the caller's array is never modified.
        geometry: display geometry of the case (from its affine).
        history_limit: number of undoable steps kept (oldest dropped first).
    """

    def __init__(self, labels: np.ndarray, geometry: DisplayGeometry, history_limit: int = DEFAULT_HISTORY) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 3:
            raise ValueError(f"label map must be 3D (X, Y, Z), got shape {labels.shape}")
        if labels.size and int(labels.max()) >= NUM_CLASSES:
            raise ValueError("label map must hold internal classes 0..3 (convert with core.io.labels.to_internal)")
        if history_limit < 1:
            raise ValueError("history_limit must be at least 1")
        self._labels = labels.astype(np.uint8, copy=True)
        self.geometry = geometry
        self._undo: deque[Edit | VoxelEdit] = deque(maxlen=history_limit)
        self._redo: list[Edit | VoxelEdit] = []
        self.version = 0  # grows on every change (usable as a cache key with ``uid``)
        self.uid = uuid.uuid4().hex[:12]  # tells editors apart (a restored editor starts at version 0 again)

    @property
    def labels(self) -> np.ndarray:
        """The current label map (read-only view; use the editing methods to change it)."""
        view = self._labels.view()
        view.flags.writeable = False
        return view

    @property
    def history_limit(self) -> int:
        """Maximum number of undoable steps."""
        return int(self._undo.maxlen or 0)

    @property
    def undo_depth(self) -> int:
        """Number of steps that can be undone now."""
        return len(self._undo)

    @property
    def can_undo(self) -> bool:
        """Whether there is a step to undo."""
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        """Whether there is an undone step to redo."""
        return bool(self._redo)

    def slice(self, plane: str, index: int) -> np.ndarray:
        """Copy of one slice in display orientation."""
        return display_view(self._labels, plane, index, self.geometry).copy()

    def _change(self, plane: str, index: int, new_slice: np.ndarray, action: str) -> int:
        """Write ``new_slice`` into the slice, record the step; returns the number of voxels changed."""
        view = display_view(self._labels, plane, index, self.geometry)
        changed = int(np.count_nonzero(view != new_slice))
        if changed == 0:
            return 0
        before = view.copy()
        view[...] = new_slice
        self._undo.append(Edit(plane, int(index), before, view.copy(), action))
        self._redo.clear()
        self.version += 1
        return changed

    def paint(self, plane: str, index: int, mask2d: np.ndarray, label: int) -> int:
        """Set the voxels under a boolean slice mask to ``label`` (0 erases).

        Returns:
            Number of voxels changed.
        """
        label = _check_label(label)
        current = self.slice(plane, index)
        if mask2d.shape != current.shape:
            raise ValueError(f"mask {mask2d.shape} does not match the {plane} slice {current.shape}")
        current[np.asarray(mask2d, dtype=bool)] = label
        return self._change(plane, index, current, f"paint {label}")

    def paint_voxels(self, voxels: tuple[np.ndarray, ...], values: np.ndarray, action: str = "stroke") -> int:
        """Set scattered voxels (index arrays ``(i, j, k)``) to ``values``: one undoable step.

        Returns:
            Number of voxels changed (0 records nothing).
        """
        voxels = tuple(np.asarray(v, dtype=np.int64) for v in voxels)
        values = np.asarray(values, dtype=np.uint8)
        if len(voxels) != 3 or any(v.shape != values.shape for v in voxels):
            raise ValueError("voxels must be three index arrays of the same length as values")
        if values.size and int(values.max()) >= NUM_CLASSES:
            raise ValueError(f"labels must be internal classes 0..{NUM_CLASSES - 1}")
        if values.size == 0:
            return 0
        flat = np.ravel_multi_index(voxels, self._labels.shape)  # raises on indices outside the volume
        flat, first = np.unique(flat[::-1], return_index=True)  # a voxel listed twice: its last value wins
        values = values[::-1][first]
        current = self._labels.reshape(-1)[flat]
        changed = current != values
        if not changed.any():
            return 0
        flat, before, after = flat[changed], current[changed], values[changed]
        where = np.unravel_index(flat, self._labels.shape)
        self._labels[where] = after
        self._undo.append(VoxelEdit(where, before, after, action))  # type: ignore[arg-type]
        self._redo.clear()
        self.version += 1
        return int(flat.size)

    def apply_stroke(self, plane: str, index: int, stroke_rgba: np.ndarray, label: int) -> int:
        """Paint a canvas drawing (RGBA, strokes where alpha > 0) of any size onto a slice.

        The canvas shows the slice resized to the canvas size; each voxel takes the canvas
        pixel at its centre (see :func:`core.viewer.render.stroke_to_slice`).
        """
        shape = display_view(self._labels, plane, index, self.geometry).shape
        return self.paint(plane, index, stroke_to_slice(stroke_rgba, shape), label)

    def fill_holes(self, plane: str, index: int, label: int) -> int:
        """Fill background holes enclosed by the tumour on a slice with ``label``."""
        label = _check_label(label)
        current = self.slice(plane, index)
        tumour = current > 0
        holes = ndimage.binary_fill_holes(tumour) & ~tumour
        current[holes] = label
        return self._change(plane, index, current, "fill holes")

    def remove_islands(self, plane: str, index: int, min_voxels: int) -> int:
        """Erase connected tumour pieces (8-connected, any label) smaller than ``min_voxels`` on a slice."""
        current = self.slice(plane, index)
        components, count = ndimage.label(current > 0, structure=np.ones((3, 3), dtype=bool))
        if count == 0:
            return 0
        sizes = np.bincount(components.ravel())
        small = sizes < int(min_voxels)
        small[0] = False
        current[small[components]] = 0
        return self._change(plane, index, current, "remove islands")

    def clear_slice(self, plane: str, index: int) -> int:
        """Erase all labels on a slice."""
        current = self.slice(plane, index)
        current[...] = 0
        return self._change(plane, index, current, "clear slice")

    def copy_slice(self, plane: str, source: int, target: int) -> int:
        """Replace slice ``target`` with a copy of slice ``source`` (e.g. a neighbour)."""
        if source == target:
            return 0
        return self._change(plane, target, self.slice(plane, source), f"copy from {source}")

    def undo(self) -> bool:
        """Revert the last step; returns ``False`` when there is nothing to undo."""
        if not self._undo:
            return False
        edit = self._undo.pop()
        self._write(edit, edit.before)
        self._redo.append(edit)
        self.version += 1
        return True

    def redo(self) -> bool:
        """Re-apply the last undone step; returns ``False`` when there is nothing to redo."""
        if not self._redo:
            return False
        edit = self._redo.pop()
        self._write(edit, edit.after)
        self._undo.append(edit)
        self.version += 1
        return True

    def step_digest(self, which: str = "undo") -> str | None:
        """Fingerprint of the step the next :meth:`undo` (``which="undo"``) or :meth:`redo` would apply: its voxels
        and their values before and after (equal for equal steps, also after :meth:`restore_history`); ``None``
        when there is none."""
        stack = {"undo": self._undo, "redo": self._redo}[which]
        if not stack:
            return None
        edit = stack[-1]
        if isinstance(edit, VoxelEdit):
            flat = np.ravel_multi_index(edit.voxels, self._labels.shape)
            order = np.argsort(flat, kind="stable")
            parts = (flat[order].astype(np.int64), np.asarray(edit.before)[order], np.asarray(edit.after)[order])
        else:
            parts = (np.asarray([edit.index]), np.asarray(edit.before), np.asarray(edit.after))
        digest = hashlib.sha1(type(edit).__name__.encode() + getattr(edit, "plane", "").encode())
        for part in parts:
            digest.update(np.ascontiguousarray(part).tobytes())
        return digest.hexdigest()

    # ------------------------------------------------------------------ saving the history
    def history_arrays(self) -> dict[str, np.ndarray]:
        """The undo and redo steps as flat arrays, for saving beside the labels (see :meth:`restore_history`).

        Every step becomes its changed voxels (flat C-order indices) with their values before and
        after, so a slice step and a stroke are stored alike: ``stack`` (0 undo, 1 redo, in stack
        order), ``length`` (voxels per step), ``flat``, ``before``, ``after``, ``action``.
        """
        steps = [(0, edit) for edit in self._undo] + [(1, edit) for edit in self._redo]
        stack, length, flats, befores, afters, actions = [], [], [], [], [], []
        for which, edit in steps:
            if isinstance(edit, VoxelEdit):
                voxels, before, after = edit.voxels, edit.before, edit.after
            else:
                changed = edit.before != edit.after
                voxels = self._slice_voxels(edit.plane, edit.index, changed)
                before, after = edit.before[changed], edit.after[changed]
            stack.append(which)
            length.append(len(before))
            flats.append(np.ravel_multi_index(voxels, self._labels.shape))
            befores.append(before)
            afters.append(after)
            actions.append(edit.action)
        join = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
        return {"stack": np.asarray(stack, np.int8), "length": np.asarray(length, np.int64),
                "flat": join(flats, np.int64), "before": join(befores, np.uint8), "after": join(afters, np.uint8),
                "action": np.asarray(actions, dtype=str)}

    def restore_history(self, arrays: dict[str, np.ndarray]) -> bool:
        """Put back the steps saved by :meth:`history_arrays` (after a reload).

        Returns:
            ``False`` (history left empty) when the arrays are malformed or do not fit the current
            labels (the newest undo step must end, the newest redo step start, at the current values).
        """
        try:
            stack, length = np.asarray(arrays["stack"]), np.asarray(arrays["length"], np.int64)
            flat, before, after = (np.asarray(arrays[k]) for k in ("flat", "before", "after"))
            actions = [str(a) for a in np.asarray(arrays["action"]).ravel()]
        except (KeyError, ValueError, TypeError):
            return False
        n = int(length.sum()) if length.size else 0
        if (len(stack) != len(length) or len(actions) != len(stack) or (length < 0).any() or
                flat.shape != (n,) or before.shape != (n,) or after.shape != (n,)):
            return False
        if n and (flat.min() < 0 or flat.max() >= self._labels.size or before.max() >= NUM_CLASSES or
                  after.max() >= NUM_CLASSES):
            return False
        ends = np.cumsum(length)
        undo: list[VoxelEdit] = []
        redo: list[VoxelEdit] = []
        for which, end, count, action in zip(stack, ends, length, actions):
            part = slice(int(end - count), int(end))
            where = np.unravel_index(flat[part], self._labels.shape)
            edit = VoxelEdit(where, before[part].astype(np.uint8), after[part].astype(np.uint8), action)  # type: ignore[arg-type]
            (undo if which == 0 else redo).append(edit)
        current = self._labels
        if (undo and not np.array_equal(current[undo[-1].voxels], undo[-1].after)) or \
                (redo and not np.array_equal(current[redo[-1].voxels], redo[-1].before)):
            return False
        self._undo.clear()
        self._undo.extend(undo)  # the deque keeps the newest history_limit steps
        self._redo = redo
        return True

    def _slice_voxels(self, plane: str, index: int, mask2d: np.ndarray) -> tuple[np.ndarray, ...]:
        """Voxel indices ``(i, j, k)`` of the pixels of a display slice where ``mask2d`` is true."""
        shape = self._labels.shape
        out = []
        for axis in range(3):
            grid = np.broadcast_to(np.arange(shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)]), shape)
            out.append(np.asarray(display_view(grid, plane, index, self.geometry))[mask2d])
        return tuple(out)

    def _write(self, edit: Edit | VoxelEdit, values: np.ndarray) -> None:
        if isinstance(edit, VoxelEdit):
            self._labels[edit.voxels] = values
        else:
            display_view(self._labels, edit.plane, edit.index, self.geometry)[...] = values


def _check_label(label: int) -> int:
    label = int(label)
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"label {label} is not an internal class 0..{NUM_CLASSES - 1}")
    return label
