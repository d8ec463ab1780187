"""Slices in display orientation, window/level, label overlays and PNG encoding.

Pure numpy/Pillow functions used by the viewer and the mask editor (no streamlit here).

Display convention (radiological, as ITK-SNAP shows it), whatever the voxel order of the file:

=========  ===========  ====================  ====================
plane      fixed axis   screen rows (top→)    screen cols (left→)
=========  ===========  ====================  ====================
axial      S/I          anterior → posterior  patient right → left
coronal    A/P          superior → inferior   patient right → left
sagittal   R/L          superior → inferior   anterior → posterior
=========  ===========  ====================  ====================

The mapping from voxel axes to these screen axes is read from the affine with
``nibabel.io_orientation``. :func:`display_view` returns a numpy *view* of one slice in display
orientation, so writing into it edits the volume: the exact inverse of what is shown.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Literal

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw
from skimage.measure import marching_cubes
from skimage.segmentation import find_boundaries

from core.io.labels import CLASS_COLOURS, REGIONS, region_mask

Plane = Literal["axial", "coronal", "sagittal"]
PLANES: tuple[str, ...] = ("axial", "coronal", "sagittal")

# World axes in RAS order: 0 = R/L, 1 = A/P, 2 = S/I.
# Per plane: (fixed world axis, world axis along screen rows, world axis along screen columns).
# Screen indices always grow toward the *negative* RAS direction (posterior, left, inferior).
PLANE_AXES: dict[str, tuple[int, int, int]] = {
    "axial": (2, 1, 0),
    "coronal": (1, 2, 0),
    "sagittal": (0, 2, 1),
}
# Letters written at the (top, bottom, left, right) edges of each plane.
PLANE_EDGE_LETTERS: dict[str, tuple[str, str, str, str]] = {
    "axial": ("A", "P", "R", "L"),
    "coronal": ("S", "I", "R", "L"),
    "sagittal": ("S", "I", "A", "P"),
}


@dataclass(frozen=True)
class DisplayGeometry:
    """How the voxel axes of a volume map onto the screen axes of each plane.

    Attributes:
        voxel_axis: voxel axis that runs along each world axis (R/L, A/P, S/I).
        toward_positive: per world axis, whether the voxel index grows toward R / A / S.
    """

    voxel_axis: tuple[int, int, int]
    toward_positive: tuple[bool, bool, bool]

    @classmethod
    def from_affine(cls, affine: np.ndarray) -> DisplayGeometry:
        """Geometry of a volume from its voxel-to-world affine (nearest world axis per voxel axis)."""
        ornt = nib.io_orientation(np.asarray(affine, dtype=float))
        voxel_axis = [0, 0, 0]
        toward_positive = [True, True, True]
        for vox, (world, flip) in enumerate(ornt):
            voxel_axis[int(world)] = vox
            toward_positive[int(world)] = bool(flip > 0)
        return cls(tuple(voxel_axis), tuple(toward_positive))  # type: ignore[arg-type]

    def axes(self, plane: str) -> tuple[int, int, int]:
        """Voxel axes ``(fixed, rows, cols)`` of a plane."""
        fixed, row, col = _plane_axes(plane)
        return self.voxel_axis[fixed], self.voxel_axis[row], self.voxel_axis[col]

    def flips(self, plane: str) -> tuple[bool, bool]:
        """Whether screen rows / columns run against the voxel index of a plane."""
        _, row, col = _plane_axes(plane)
        return self.toward_positive[row], self.toward_positive[col]

    def slice_count(self, plane: str, shape: tuple[int, ...]) -> int:
        """Number of slices of a plane for a volume of spatial ``shape``."""
        return int(shape[self.axes(plane)[0]])

    def slice_index(self, plane: str, voxel: tuple[int, int, int]) -> int:
        """Index of the plane's slice through ``voxel`` (the voxel coordinate on the fixed axis)."""
        return int(voxel[self.axes(plane)[0]])

    def voxel_to_display(self, plane: str, voxel: tuple[int, int, int], shape: tuple[int, ...]) -> tuple[int, int]:
        """Screen ``(row, col)`` of ``voxel`` in the plane's slice through it."""
        _, ra, ca = self.axes(plane)
        flip_r, flip_c = self.flips(plane)
        row = shape[ra] - 1 - voxel[ra] if flip_r else voxel[ra]
        col = shape[ca] - 1 - voxel[ca] if flip_c else voxel[ca]
        return int(row), int(col)

    def display_to_voxel(
        self, plane: str, index: int, row: int, col: int, shape: tuple[int, ...]
    ) -> tuple[int, int, int]:
        """Voxel ``(x, y, z)`` shown at screen ``(row, col)`` of slice ``index`` of a plane."""
        fa, ra, ca = self.axes(plane)
        flip_r, flip_c = self.flips(plane)
        voxel = [0, 0, 0]
        voxel[fa] = int(index)
        voxel[ra] = int(shape[ra] - 1 - row if flip_r else row)
        voxel[ca] = int(shape[ca] - 1 - col if flip_c else col)
        return tuple(voxel)  # type: ignore[return-value]

    def pixel_spacing(self, plane: str, spacing: tuple[float, float, float]) -> tuple[float, float]:
        """Physical size (mm) of a screen pixel ``(row, col)`` of a plane."""
        _, ra, ca = self.axes(plane)
        return float(spacing[ra]), float(spacing[ca])


def _plane_axes(plane: str) -> tuple[int, int, int]:
    if plane not in PLANE_AXES:
        raise ValueError(f"unknown plane {plane!r}; use one of {PLANES}")
    return PLANE_AXES[plane]


def display_view(volume: np.ndarray, plane: str, index: int, geometry: DisplayGeometry) -> np.ndarray:
    """One slice of a 3D volume in display orientation, as a *view* (writes go into ``volume``).

    Args:
        volume: array ``(X, Y, Z)``.
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        index: slice index along the plane's fixed voxel axis.
        geometry: the volume's :class:`DisplayGeometry`.

    Returns:
        2D view ``(rows, cols)``: rows top→bottom, columns left→right as on screen.
    """
    if volume.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {volume.shape}")
    fa, ra, ca = geometry.axes(plane)
    n = volume.shape[fa]
    if not 0 <= index < n:
        raise IndexError(f"{plane} slice {index} is outside 0..{n - 1}")
    selector: list[slice | int] = [slice(None)] * 3
    selector[fa] = int(index)
    view = volume[tuple(selector)]
    remaining = [a for a in range(3) if a != fa]
    if remaining != [ra, ca]:
        view = view.T
    flip_r, flip_c = geometry.flips(plane)
    if flip_r:
        view = view[::-1, :]
    if flip_c:
        view = view[:, ::-1]
    return view


def auto_window(volume: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[float, float]:
    """Intensity range ``(low, high)`` from percentiles of the non-zero voxels (the brain).

    Uses every second voxel per axis: the percentiles barely move and it is 8x faster.
    """
    sample = np.asarray(volume)[::2, ::2, ::2]
    values = sample[sample != 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, percentiles)
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


def window_from_level(window: float, level: float) -> tuple[float, float]:
    """``(low, high)`` intensity range from a window width and level (centre)."""
    window = max(float(window), 1e-6)
    return float(level) - window / 2.0, float(level) + window / 2.0


def apply_window(slice2d: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map intensities ``low..high`` linearly to grey levels 0..255 (uint8), clipping outside."""
    if high <= low:
        raise ValueError(f"window high ({high}) must be above low ({low})")
    scaled = (np.asarray(slice2d, dtype=np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def slice_rgb(
    volume: np.ndarray, plane: str, index: int, geometry: DisplayGeometry, window: tuple[float, float]
) -> np.ndarray:
    """Grey RGB image ``(rows, cols, 3)`` uint8 of one windowed slice in display orientation."""
    grey = apply_window(display_view(volume, plane, index, geometry), *window)
    return np.repeat(grey[:, :, None], 3, axis=2)


def overlay(
    rgb: np.ndarray,
    labels2d: np.ndarray,
    visible: tuple[int, ...] = (1, 2, 3),
    opacity: float = 0.5,
    outline: bool = False,
    colours: dict[int, tuple[int, int, int]] = CLASS_COLOURS,
) -> np.ndarray:
    """Blend a label slice onto an RGB slice.

    Args:
        rgb: uint8 ``(rows, cols, 3)`` background.
        labels2d: integer labels of the same ``(rows, cols)``.
        visible: label values to draw.
        opacity: 0..1 blend weight of the label colour (filled mode).
        outline: draw only each label's boundary (one pixel inside the region), fully opaque.
        colours: RGB per label value.

    Returns:
        New uint8 ``(rows, cols, 3)`` image.
    """
    if rgb.shape[:2] != labels2d.shape:
        raise ValueError(f"label slice {labels2d.shape} does not match image slice {rgb.shape[:2]}")
    out = rgb.copy()
    shown = np.isin(labels2d, visible) & (labels2d != 0)
    if not shown.any():
        return out
    if outline:
        shown &= find_boundaries(labels2d, mode="inner")
        alpha = 1.0
    else:
        alpha = float(np.clip(opacity, 0.0, 1.0))
    lut = np.zeros((256, 3), dtype=np.float32)
    for value, colour in colours.items():
        lut[value] = colour
    colour_px = lut[labels2d[shown].astype(np.intp)]
    out[shown] = (out[shown].astype(np.float32) * (1.0 - alpha) + colour_px * alpha + 0.5).astype(np.uint8)
    return out


def draw_crosshair(
    rgb: np.ndarray, row: int, col: int, colour: tuple[int, int, int] = (80, 160, 255), gap: int = 4
) -> np.ndarray:
    """Copy of ``rgb`` with a thin crosshair through ``(row, col)``, leaving a small gap at the centre."""
    out = rgb.copy()
    h, w = out.shape[:2]
    cols = np.r_[0 : max(col - gap, 0), min(col + gap + 1, w) : w]
    rows = np.r_[0 : max(row - gap, 0), min(row + gap + 1, h) : h]
    if 0 <= row < h:
        out[row, cols] = colour
    if 0 <= col < w:
        out[rows, col] = colour
    return out


def display_size(
    plane: str, shape: tuple[int, ...], spacing: tuple[float, float, float], geometry: DisplayGeometry, zoom: float
) -> tuple[int, int]:
    """On-screen ``(width, height)`` in pixels of a plane, physically proportioned.

    The finest voxel spacing of the plane gets ``zoom`` screen pixels per voxel.
    """
    _, ra, ca = geometry.axes(plane)
    sr, sc = geometry.pixel_spacing(plane, spacing)
    unit = min(sr, sc)
    height = max(1, round(shape[ra] * sr / unit * zoom))
    width = max(1, round(shape[ca] * sc / unit * zoom))
    return int(width), int(height)


def resize_nearest(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize to ``(width, height)`` (voxels stay crisp squares).

    Output pixel ``i`` takes input pixel ``floor((i + 0.5) * n_in / n_out)`` per axis (the pixel under
    its centre); :func:`stroke_to_slice` is the inverse mapping.
    """
    width, height = size
    if (height, width) == rgb.shape[:2]:
        return rgb
    rows = np.minimum((np.arange(height) + 0.5) * rgb.shape[0] / height, rgb.shape[0] - 1).astype(np.intp)
    cols = np.minimum((np.arange(width) + 0.5) * rgb.shape[1] / width, rgb.shape[1] - 1).astype(np.intp)
    # two 1D takes are ~10x faster than one 2D fancy index
    return np.take(np.take(rgb, rows, axis=0), cols, axis=1)


def draw_edge_letters(rgb: np.ndarray, plane: str, colour: tuple[int, int, int] = (255, 200, 0)) -> np.ndarray:
    """Copy of ``rgb`` with orientation letters (e.g. A/P/R/L) at the middle of each edge."""
    top, bottom, left, right = PLANE_EDGE_LETTERS[plane]
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    h, w = rgb.shape[:2]
    draw.text((w // 2 - 3, 2), top, fill=colour)
    draw.text((w // 2 - 3, h - 13), bottom, fill=colour)
    draw.text((3, h // 2 - 6), left, fill=colour)
    draw.text((w - 10, h // 2 - 6), right, fill=colour)
    return np.asarray(img)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bytes(rgb: np.ndarray, compress_level: int = 1) -> bytes:
    """Encode an RGB or RGBA uint8 image as PNG (lossless: label colours stay exact).

    Written directly with zlib and no per-row filter: ~3x faster than Pillow's adaptive filtering
    on viewer slices (the rows of a nearest-neighbour upscale repeat, which deflate finds anyway).
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise ValueError(f"expected a uint8 (H, W, 3|4) image, got {rgb.dtype} {rgb.shape}")
    height, width, channels = rgb.shape
    rows = np.zeros((height, 1 + width * channels), np.uint8)  # leading 0: filter type "None"
    rows[:, 1:] = rgb.reshape(height, -1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if channels == 3 else 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level))
        + _png_chunk(b"IEND", b"")
    )


def render_plane(
    volume: np.ndarray,
    plane: str,
    index: int,
    geometry: DisplayGeometry,
    window: tuple[float, float],
    labels: np.ndarray | None = None,
    *,
    visible: tuple[int, ...] = (1, 2, 3),
    opacity: float = 0.5,
    outline: bool = False,
    cursor: tuple[int, int, int] | None = None,
    size: tuple[int, int] | None = None,
    letters: bool = True,
) -> np.ndarray:
    """One viewer image: windowed slice, label overlay, resize, crosshair and orientation letters.

    Args:
        volume: one modality ``(X, Y, Z)``.
        plane, index, geometry: which slice, see :func:`display_view`.
        window: intensity range ``(low, high)`` mapped to black..white.
        labels: internal label map ``(X, Y, Z)`` to overlay, or ``None``.
        visible, opacity, outline: overlay options, see :func:`overlay`.
        cursor: voxel ``(x, y, z)`` to mark with a crosshair, or ``None``.
        size: on-screen ``(width, height)`` (nearest-neighbour resize), ``None`` keeps one pixel per voxel.
        letters: write the orientation letters at the edges.

    Returns:
        uint8 RGB image ``(height, width, 3)``.
    """
    rgb = slice_rgb(volume, plane, index, geometry, window)
    if labels is not None:
        rgb = overlay(rgb, display_view(labels, plane, index, geometry), visible, opacity, outline)
    n_rows, n_cols = rgb.shape[:2]
    if size is not None:
        rgb = resize_nearest(rgb, size)
    if cursor is not None:
        row, col = geometry.voxel_to_display(plane, cursor, volume.shape)
        height, width = rgb.shape[:2]
        rgb = draw_crosshair(rgb, int((row + 0.5) * height / n_rows), int((col + 0.5) * width / n_cols))
    if letters:
        rgb = draw_edge_letters(rgb, plane)
    return rgb


def screen_to_slice(
    x: float, y: float, width: float, height: float, slice_shape: tuple[int, int]
) -> tuple[int, int]:
    """Slice ``(row, col)`` under a click at ``(x, y)`` on an image shown ``width`` x ``height`` pixels."""
    n_rows, n_cols = slice_shape
    row = int(np.clip(np.floor(y * n_rows / max(height, 1e-9)), 0, n_rows - 1))
    col = int(np.clip(np.floor(x * n_cols / max(width, 1e-9)), 0, n_cols - 1))
    return row, col


def region_surfaces(
    labels: np.ndarray, affine: np.ndarray, step: int = 2
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Triangle surfaces of the BraTS regions (WT, TC, ET) in world coordinates (mm).

    Args:
        labels: internal label map ``(X, Y, Z)``.
        affine: voxel-to-world matrix of the label map.
        step: take every ``step``-th voxel per axis first (coarser, much faster meshes).

    Returns:
        ``{region: (vertices (N, 3) world mm, faces (M, 3) int)}`` for the non-empty regions.
    """
    affine = np.asarray(affine, dtype=float)
    sub = np.asarray(labels)[::step, ::step, ::step]
    surfaces: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for region in REGIONS:
        mask = region_mask(sub, region)
        if mask.sum() < 2:
            continue
        # one background voxel of padding closes surfaces that touch the volume edge
        padded = np.pad(mask.astype(np.float32), 1)
        verts, faces, _, _ = marching_cubes(padded, 0.5)
        voxel = (verts - 1.0) * step
        world = voxel @ affine[:3, :3].T + affine[:3, 3]
        surfaces[region] = (world.astype(np.float32), faces.astype(np.int32))
    return surfaces


def stroke_to_slice(stroke_rgba: np.ndarray, slice_shape: tuple[int, int], alpha_threshold: int = 0) -> np.ndarray:
    """Boolean ``(rows, cols)`` mask of the voxels a canvas drawing covers.

    The canvas shows the slice resized to its own size with nearest-neighbour sampling
    (:func:`resize_nearest`); each voxel takes the canvas pixel at its centre, the exact inverse.

    Args:
        stroke_rgba: ``(H, W, 4)`` canvas image; strokes are where alpha > ``alpha_threshold``.
        slice_shape: ``(rows, cols)`` of the displayed slice.
        alpha_threshold: alpha at or below which a canvas pixel counts as empty.
    """
    stroke = np.asarray(stroke_rgba)
    if stroke.ndim != 3 or stroke.shape[2] != 4:
        raise ValueError(f"expected an RGBA canvas image (H, W, 4), got shape {stroke.shape}")
    height, width = stroke.shape[:2]
    n_rows, n_cols = slice_shape
    rows = np.minimum(((np.arange(n_rows) + 0.5) * height / n_rows).astype(np.intp), height - 1)
    cols = np.minimum(((np.arange(n_cols) + 0.5) * width / n_cols).astype(np.intp), width - 1)
    return stroke[rows[:, None], cols[None, :], 3] > alpha_threshold
