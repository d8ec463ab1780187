"""What the browser viewer (NiiVue) needs, as pure functions: compact NIfTI files, index mapping, edits.

NiiVue keeps its drawing layer in *RAS voxel order*: the volume's voxel axes permuted and flipped
so that indices grow toward patient right, anterior and superior (x fastest). Edits come back as
flat indices in that order; :func:`ras_to_voxel` turns them into ``(X, Y, Z)`` indices of the
case's own arrays. The volumes themselves are sent in the case's voxel order with its affine, so
NiiVue applies the same reorientation to images and labels.

An edit stream from the browser is a list of events ``{"rev", "epoch", "op", ...}``: ``op`` is
``"paint"`` (``idx`` / ``val`` lists) , ``"undo"`` or ``"redo"``. The browser resends every event
until Python acknowledges its revision, so :func:`new_events` picks the ones not applied yet.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np

from core.io.labels import NUM_CLASSES

DISPLAY_PERCENTILE = 99.9  # intensities above this percentile of the brain saturate in the 8-bit copy


def _gz_nifti(data: np.ndarray, affine: np.ndarray, slope: float = 1.0, inter: float = 0.0,
              window: tuple[float, float] | None = None) -> bytes:
    image = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=float))
    image.header.set_xyzt_units("mm")
    image.header.set_slope_inter(slope, inter)
    if window is not None:  # NiiVue trusts cal_min/cal_max: the initial window, no histogram pass in the browser
        image.header["cal_min"], image.header["cal_max"] = window
    image.header.set_qform(np.asarray(affine, dtype=float), code=1)
    image.header.set_sform(np.asarray(affine, dtype=float), code=1)
    return gzip.compress(image.to_bytes(), compresslevel=1)


def display_volume_bytes(volume: np.ndarray, affine: np.ndarray, window: tuple[float, float] | None = None) -> bytes:
    """An 8-bit ``.nii.gz`` of one modality for display (scl_slope/inter restore the intensities).

    8 bits cover the display range (minimum to the 99.9th percentile of non-zero voxels) in 256
    steps: a quarter of float32's size before compression, and NiiVue windows it the same way.
    ``window`` (intensities) becomes the header's cal_min/cal_max, the viewer's initial window.
    """
    volume = np.asarray(volume, dtype=np.float32)
    low = float(volume.min())
    nonzero = volume[volume != 0]
    high = float(np.percentile(nonzero, DISPLAY_PERCENTILE)) if nonzero.size else float(volume.max())
    if high <= low:
        high = low + 1.0
    slope = (high - low) / 255.0
    codes = np.clip(np.rint((volume - low) / slope), 0, 255).astype(np.uint8)
    return _gz_nifti(codes, affine, slope, low, window)


def label_volume_bytes(labels: np.ndarray, affine: np.ndarray) -> bytes:
    """A uint8 ``.nii.gz`` of an internal label map (0..3) for NiiVue's drawing layer."""
    return _gz_nifti(np.asarray(labels, dtype=np.uint8), affine)


UNCERTAIN_FROM = 0.2  # uncertainty below this is transparent in the viewer's overlay


def probability_codes(region_probabilities: np.ndarray) -> np.ndarray:
    """WT/TC/ET probabilities ``(X, Y, Z, 3)`` in [0, 1] as uint8 codes 0..255 (a quarter of float32's memory)."""
    probs = np.asarray(region_probabilities, dtype=np.float32)
    if probs.ndim != 4 or probs.shape[-1] != 3:
        raise ValueError(f"region probabilities must be (X, Y, Z, 3) for WT, TC, ET, got shape {probs.shape}")
    return np.rint(np.clip(probs, 0.0, 1.0) * 255.0).astype(np.uint8)


def uncertainty_map(codes: np.ndarray) -> np.ndarray:
    """Per-voxel uncertainty in [0, 1] from WT/TC/ET probability codes ``(X, Y, Z, 3)`` (uint8, 255 = 1).

    For each region ``1 - |2p - 1|``: 1 where the model gives the region even odds, 0 where it is sure
    either way; the most uncertain of the three regions per voxel (where an editor should look first).
    """
    codes = np.asarray(codes)
    if codes.ndim != 4 or codes.shape[-1] != 3:
        raise ValueError(f"probability codes must be (X, Y, Z, 3), got shape {codes.shape}")
    distance = np.abs(2 * codes.astype(np.int16) - 255).min(axis=-1)  # 0: even odds, 255: sure
    return (255 - distance).astype(np.float32) / 255.0


def uncertainty_volume_bytes(codes: np.ndarray, affine: np.ndarray) -> bytes:
    """An 8-bit ``.nii.gz`` of :func:`uncertainty_map` for the viewer's overlay (0..1 through scl_slope).

    Its window (cal_min / cal_max) starts at :data:`UNCERTAIN_FROM`, so sure voxels stay transparent.
    """
    values = np.rint(uncertainty_map(codes) * 255.0).astype(np.uint8)
    return _gz_nifti(values, affine, 1.0 / 255.0, 0.0, (UNCERTAIN_FROM, 1.0))


def ras_shape_and_order(shape: tuple[int, int, int], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ras_axis, flip)`` per voxel axis: voxel axis ``i`` runs along RAS axis ``ras_axis[i]``,
    reversed when ``flip[i]`` (its index grows toward L, P or I)."""
    ornt = nib.io_orientation(np.asarray(affine, dtype=float))
    return ornt[:, 0].astype(int), ornt[:, 1] < 0


def ras_to_voxel(flat: np.ndarray, shape: tuple[int, int, int], affine: np.ndarray) -> tuple[np.ndarray, ...]:
    """Voxel indices ``(i, j, k)`` of the case arrays for flat indices in NiiVue's RAS voxel order."""
    flat = np.asarray(flat, dtype=np.int64)
    ras_axis, flip = ras_shape_and_order(shape, affine)
    ras_dims = [0, 0, 0]
    for axis in range(3):
        ras_dims[ras_axis[axis]] = shape[axis]
    if flat.size and (flat.min() < 0 or flat.max() >= int(np.prod(shape))):
        raise ValueError("edit index outside the volume")
    ras = np.unravel_index(flat, ras_dims, order="F")
    out = []
    for axis in range(3):
        index = ras[ras_axis[axis]]
        out.append(shape[axis] - 1 - index if flip[axis] else index)
    return tuple(out)


def voxel_to_ras_flat(voxels: tuple[np.ndarray, ...], shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`ras_to_voxel` (used by tests and to check a mapping)."""
    ras_axis, flip = ras_shape_and_order(shape, affine)
    ras_dims = [0, 0, 0]
    ras = [None, None, None]
    for axis in range(3):
        ras_dims[ras_axis[axis]] = shape[axis]
        index = np.asarray(voxels[axis])
        ras[ras_axis[axis]] = shape[axis] - 1 - index if flip[axis] else index
    return np.ravel_multi_index(tuple(ras), ras_dims, order="F")


def world_to_voxel(mm: Any, affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Nearest voxel (clipped into the volume) of a world position in mm."""
    inverse = np.linalg.inv(np.asarray(affine, dtype=float))
    voxel = inverse[:3, :3] @ np.asarray(mm, dtype=float)[:3] + inverse[:3, 3]
    return tuple(int(np.clip(round(float(v)), 0, s - 1)) for v, s in zip(voxel, shape))  # type: ignore[return-value]


def voxel_to_world(voxel: Any, affine: np.ndarray) -> list[float]:
    """World position (mm) of a voxel index."""
    affine = np.asarray(affine, dtype=float)
    return [float(v) for v in affine[:3, :3] @ np.asarray(voxel, dtype=float) + affine[:3, 3]]


@dataclass(frozen=True)
class EditEvent:
    """One edit from the browser: paint voxels (``voxels`` + ``values``), undo or redo.

    ``mirrors`` (undo / redo only): the revision of the tab's own paint whose voxels it already reverted (or
    re-applied) on screen, expecting that paint to be the step undone (redone); ``None``: the tab showed nothing.
    """

    rev: int
    op: str
    voxels: tuple[np.ndarray, ...] | None = None
    values: np.ndarray | None = None
    tool: str = ""
    client: str = ""
    mirrors: int | None = None


MAX_CLIENT_ID = 64


def event_client(value: Any) -> str:
    """The browser tab that sent a component value (its revisions are numbered per tab)."""
    client = value.get("client", "") if isinstance(value, dict) else ""
    if not isinstance(client, str) or len(client) > MAX_CLIENT_ID or not client.replace("-", "").isalnum():
        return ""
    return client


def new_events(value: Any, epoch: str, applied_revs: Mapping[str, int], shape: tuple[int, int, int],
               affine: np.ndarray) -> list[EditEvent]:
    """The events of a component value that are not applied yet, oldest first, validated.

    Several browser tabs may edit one session's mask: each numbers its own revisions and says who
    it is (``client``), so one tab's revision 33 never hides another's.

    Args:
        value: the component's value (``{"epoch", "client", "events": [...]}``) or anything else (ignored).
        epoch: the current edit session; events of another one are stale and dropped.
        applied_revs: last revision already applied, per client.

    Raises:
        ValueError: a malformed paint event (bad lengths, labels or indices).
    """
    if not isinstance(value, dict) or value.get("epoch") != epoch:
        return []
    client = event_client(value)
    applied_rev = int(applied_revs.get(client, 0))
    events = []
    for raw in sorted(value.get("events") or [], key=lambda e: int(e.get("rev", 0))):
        rev = int(raw.get("rev", 0))
        if rev <= applied_rev or raw.get("epoch") != epoch:
            continue
        op = raw.get("op")
        if op in ("undo", "redo"):
            mirrors = raw.get("mirrors")
            if mirrors is not None and (isinstance(mirrors, bool) or not isinstance(mirrors, int)):
                raise ValueError(f"edit {rev}: 'mirrors' must be a revision number, got {mirrors!r}")
            events.append(EditEvent(rev, op, client=client, mirrors=mirrors))
        elif op == "paint":
            idx = np.asarray(raw.get("idx") or [], dtype=np.int64)
            val = np.asarray(raw.get("val") or [], dtype=np.int64)
            if idx.shape != val.shape:
                raise ValueError(f"edit {rev}: {idx.size} indices but {val.size} values")
            if val.size and (val.min() < 0 or val.max() >= NUM_CLASSES):
                raise ValueError(f"edit {rev}: labels must be 0..{NUM_CLASSES - 1}")
            events.append(EditEvent(rev, op, ras_to_voxel(idx, shape, affine), val.astype(np.uint8),
                                    str(raw.get("tool", "")), client))
        else:
            raise ValueError(f"edit {rev}: unknown operation {op!r}")
    return events
