"""Voxel-axis reorientation between a file's orientation and the models' (BraTS) orientation.

Every shipped model was trained on the BraTS grid, whose affine is ``diag(-1, -1, 1)``: voxel
axes run to the Left, Posterior and Superior (``LPS`` in nibabel's axis codes). A file whose voxel
axes are flipped or permuted (RAS, sagittal slices first, ...) shows the model an upside-down or
mirrored brain. :class:`Reorientation` turns such arrays into the model orientation by flips and
axis permutations only (no resampling, so it is exact and invertible) and back, so results are
written on the source grid with the source header and align with the input in world space.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel import orientations

MODEL_AXCODES: tuple[str, str, str] = ("L", "P", "S")  # the BraTS grid: affine diag(-1, -1, 1)


def axcodes(affine: np.ndarray) -> str:
    """Axis codes of an affine as a string, e.g. ``"LPS"`` for the BraTS grid, ``"RAS"`` for MNI files."""
    return "".join(str(c) for c in nib.aff2axcodes(np.asarray(affine, dtype=np.float64)))


@dataclass(frozen=True)
class Reorientation:
    """Flips and axis permutation that take a source grid to the model orientation.

    Attributes:
        source_shape: spatial shape ``(X, Y, Z)`` on the source grid.
        forward: nibabel orientation transform source -> model (``(3, 2)`` array of axis, flip).
        backward: the inverse transform, model -> source.
    """

    source_shape: tuple[int, int, int]
    forward: np.ndarray
    backward: np.ndarray

    @property
    def is_identity(self) -> bool:
        """True when the source already is in the model orientation (nothing to do)."""
        return bool(np.array_equal(self.forward, [[0, 1], [1, 1], [2, 1]]))

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """Spatial shape on the model-oriented grid."""
        return tuple(int(self.source_shape[int(axis)]) for axis in self.backward[:, 0])  # type: ignore[return-value]

    def to_model(self, array: np.ndarray) -> np.ndarray:
        """``(..., X, Y, Z)`` on the source grid -> the same voxels in model orientation (a view when possible)."""
        return _apply(np.asarray(array), self.forward, self.source_shape)

    def to_source(self, array: np.ndarray) -> np.ndarray:
        """``(..., X', Y', Z')`` in model orientation -> back on the source grid (exact inverse of :meth:`to_model`)."""
        return _apply(np.asarray(array), self.backward, self.model_shape)

    def model_affine(self, affine: np.ndarray) -> np.ndarray:
        """Voxel-to-world matrix of the model-oriented grid (same world positions as ``affine``)."""
        return np.asarray(affine, dtype=np.float64) @ orientations.inv_ornt_aff(self.forward, self.source_shape)


def reorientation(affine: np.ndarray, shape: tuple[int, ...]) -> Reorientation:
    """The :class:`Reorientation` of a grid with ``affine`` and spatial ``shape`` (last three values used)."""
    source = orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    target = orientations.axcodes2ornt(MODEL_AXCODES)
    forward = orientations.ornt_transform(source, target)
    backward = orientations.ornt_transform(target, source)
    spatial = tuple(int(s) for s in tuple(shape)[-3:])
    return Reorientation(spatial, forward, backward)  # type: ignore[arg-type]


def _apply(array: np.ndarray, ornt: np.ndarray, spatial: tuple[int, int, int]) -> np.ndarray:
    """``nibabel.orientations.apply_orientation`` on the last three axes of ``array``."""
    if array.ndim < 3 or tuple(array.shape[-3:]) != tuple(spatial):
        raise ValueError(f"reorientation: array shape {array.shape} does not end with the grid {spatial}")
    lead = array.ndim - 3
    moved = np.moveaxis(array, range(lead), range(-lead, 0)) if lead else array  # spatial axes first
    out = orientations.apply_orientation(moved, ornt)
    return np.moveaxis(out, range(-lead, 0), range(lead)) if lead else out


def onto_grid(data: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, target_shape: tuple[int, ...],
              tolerance_mm: float = 1e-3) -> np.ndarray | None:
    """``data`` (a 3D volume with ``affine``) flipped/permuted onto another grid, if that is exact.

    Returns the volume in the voxel order of ``target_affine`` when the two grids hold the same voxels in
    world space, only stored in another axis order or direction (e.g. one file RAS, the other LPS);
    ``None`` when they differ otherwise (shape, spacing, origin or rotation beyond ``tolerance_mm``).
    """
    affine = np.asarray(affine, dtype=np.float64)
    target_affine = np.asarray(target_affine, dtype=np.float64)
    try:
        transform = orientations.ornt_transform(orientations.io_orientation(affine),
                                                orientations.io_orientation(target_affine))
        moved_affine = affine @ orientations.inv_ornt_aff(transform, data.shape[:3])
    except ValueError:
        return None
    if np.max(np.abs(moved_affine - target_affine)) > tolerance_mm:
        return None
    moved = orientations.apply_orientation(data, transform)
    return moved if tuple(moved.shape) == tuple(target_shape) else None
