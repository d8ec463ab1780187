"""Display orientation, windowing, overlays and the canvas-to-voxel mapping of core.viewer.render."""

from __future__ import annotations

import io

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from core.io.labels import CLASS_COLOURS
from core.viewer import render
from core.viewer.render import PLANES, DisplayGeometry

BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
SHAPE = (6, 7, 5)


def _world_volume(affine: np.ndarray, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Volume whose voxels hold their own flat index, plus the world coordinate of every voxel."""
    vol = np.arange(np.prod(shape)).reshape(shape)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    world = nib.affines.apply_affine(affine, ijk)
    return vol, world


@pytest.mark.parametrize(
    "affine",
    [
        BRATS_AFFINE,  # LPS, as the BraTS files
        np.diag([1.0, 1.0, 1.0, 1.0]),  # RAS
        np.array([[0, 0, 1.0, 0], [-1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]]),  # permuted axes
    ],
    ids=["LPS", "RAS", "permuted"],
)
def test_display_view_is_radiological_for_any_voxel_order(affine):
    vol, world = _world_volume(affine)
    geometry = DisplayGeometry.from_affine(affine)
    shape = vol.shape
    # For each plane: (world axis along rows, along cols); screen index grows toward P/L/I (negative RAS).
    expect = {"axial": (1, 0), "coronal": (2, 0), "sagittal": (2, 1)}
    for plane in PLANES:
        index = geometry.slice_count(plane, shape) // 2
        view = render.display_view(vol, plane, index, geometry)
        flat = view.ravel()
        coords = world.reshape(-1, 3)[flat].reshape(view.shape + (3,))
        row_axis, col_axis = expect[plane]
        assert np.all(np.diff(coords[:, :, row_axis], axis=0) < 0), plane  # top is anterior / superior
        assert np.all(np.diff(coords[:, :, col_axis], axis=1) < 0), plane  # left is patient right / anterior
        fixed = render.PLANE_AXES[plane][0]
        assert np.ptp(coords[:, :, fixed]) == 0  # one slice


def test_brats_axial_is_transpose_and_views_write_through():
    geometry = DisplayGeometry.from_affine(BRATS_AFFINE)
    assert nib.aff2axcodes(BRATS_AFFINE) == ("L", "P", "S")
    vol = np.zeros(SHAPE, dtype=np.uint8)
    view = render.display_view(vol, "axial", 2, geometry)
    assert view.shape == (SHAPE[1], SHAPE[0])
    view[0, 0] = 9  # top-left of the axial view: anterior, patient right
    assert vol[0, 0, 2] == 9  # BraTS voxel (0, 0): x=0 is patient right (L axis grows), y=0 anterior


@pytest.mark.parametrize("affine", [BRATS_AFFINE, np.diag([2.0, 1.0, 3.0, 1.0])], ids=["LPS", "RAS"])
def test_voxel_display_mapping_round_trips(affine):
    geometry = DisplayGeometry.from_affine(affine)
    vol = np.arange(np.prod(SHAPE)).reshape(SHAPE)
    rng = np.random.default_rng(0)
    for _ in range(20):
        voxel = tuple(int(rng.integers(0, s)) for s in SHAPE)
        for plane in PLANES:
            index = geometry.slice_index(plane, voxel)
            row, col = geometry.voxel_to_display(plane, voxel, SHAPE)
            assert render.display_view(vol, plane, index, geometry)[row, col] == vol[voxel]
            assert geometry.display_to_voxel(plane, index, row, col, SHAPE) == voxel


def test_display_view_rejects_bad_input():
    geometry = DisplayGeometry.from_affine(BRATS_AFFINE)
    with pytest.raises(IndexError, match="outside"):
        render.display_view(np.zeros(SHAPE), "axial", SHAPE[2], geometry)
    with pytest.raises(ValueError, match="unknown plane"):
        render.display_view(np.zeros(SHAPE), "oblique", 0, geometry)


def test_window_functions():
    vol = np.zeros((20, 20, 20), dtype=np.float32)
    vol[4:16, 4:16, 4:16] = np.linspace(100, 200, 12**3).reshape(12, 12, 12)
    low, high = render.auto_window(vol, (0, 100))
    assert 100 <= low < 110 and 190 < high <= 200  # zeros (outside the brain) ignored
    assert render.auto_window(np.zeros((4, 4, 4))) == (0.0, 1.0)
    assert render.window_from_level(100, 50) == (0.0, 100.0)
    grey = render.apply_window(np.array([[-5.0, 0.0, 50.0, 100.0, 500.0]]), 0.0, 100.0)
    assert grey.dtype == np.uint8 and grey.tolist() == [[0, 0, 127, 255, 255]]
    with pytest.raises(ValueError):
        render.apply_window(np.zeros((2, 2)), 1.0, 1.0)


def test_overlay_fill_outline_and_toggles():
    rgb = np.full((9, 9, 3), 100, dtype=np.uint8)
    labels = np.zeros((9, 9), dtype=np.uint8)
    labels[2:7, 2:7] = 2  # ED square
    labels[4, 4] = 3  # ET centre
    filled = render.overlay(rgb, labels, opacity=1.0)
    assert tuple(filled[3, 3]) == CLASS_COLOURS[2] and tuple(filled[4, 4]) == CLASS_COLOURS[3]
    assert tuple(filled[0, 0]) == (100, 100, 100)
    half = render.overlay(rgb, labels, opacity=0.5)
    assert np.allclose(half[3, 3], (np.array(CLASS_COLOURS[2]) + 100) / 2, atol=1)
    hidden = render.overlay(rgb, labels, visible=(3,), opacity=1.0)
    assert tuple(hidden[3, 3]) == (100, 100, 100) and tuple(hidden[4, 4]) == CLASS_COLOURS[3]
    outline = render.overlay(rgb, labels, outline=True)
    assert tuple(outline[2, 4]) == CLASS_COLOURS[2]  # edge of the square
    assert tuple(outline[3, 4]) == CLASS_COLOURS[2]  # touches the ET voxel: a boundary too
    assert tuple(outline[3, 3]) == (100, 100, 100)  # interior stays grey
    assert np.array_equal(rgb, np.full((9, 9, 3), 100))  # input untouched
    with pytest.raises(ValueError, match="does not match"):
        render.overlay(rgb, labels[:5])


def test_slice_rgb_crosshair_letters_and_png_round_trip():
    geometry = DisplayGeometry.from_affine(BRATS_AFFINE)
    vol = np.random.default_rng(1).uniform(0, 10, SHAPE).astype(np.float32)
    rgb = render.slice_rgb(vol, "coronal", 3, geometry, (0.0, 10.0))
    assert rgb.shape == (SHAPE[2], SHAPE[0], 3) and rgb.dtype == np.uint8
    big = render.resize_nearest(rgb, (SHAPE[0] * 4, SHAPE[2] * 4))
    assert big.shape == (SHAPE[2] * 4, SHAPE[0] * 4, 3)
    assert np.array_equal(big[::4, ::4], rgb)
    cross = render.draw_crosshair(big, 5, 6, colour=(1, 2, 3), gap=1)
    assert tuple(cross[5, 0]) == (1, 2, 3) and tuple(cross[0, 6]) == (1, 2, 3)
    assert tuple(cross[5, 6]) != (1, 2, 3)  # gap at the centre
    lettered = render.draw_edge_letters(np.zeros((120, 120, 3), np.uint8), "axial")
    assert lettered[:15].any() and lettered[-15:].any() and lettered[:, :12].any() and lettered[:, -12:].any()
    png = render.png_bytes(cross)
    assert png.startswith(b"\x89PNG")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), cross)  # lossless


def test_display_size_keeps_physical_proportions():
    geometry = DisplayGeometry.from_affine(np.diag([1.0, 1.0, 3.0, 1.0]))
    spacing = (1.0, 1.0, 3.0)
    assert render.display_size("axial", (100, 80, 20), spacing, geometry, 2) == (200, 160)
    # coronal: rows along z (3 mm), cols along x (1 mm)
    assert render.display_size("coronal", (100, 80, 20), spacing, geometry, 2) == (200, 120)


@pytest.mark.parametrize("zoom", [1, 2, 3, 2.5])
def test_stroke_to_slice_inverts_nearest_resize(zoom):
    rng = np.random.default_rng(2)
    target = rng.random((11, 13)) > 0.6
    size = (round(13 * zoom), round(11 * zoom))
    shown = render.resize_nearest(target[:, :, None].astype(np.uint8) * 255, size)[:, :, 0]
    canvas = np.zeros(shown.shape + (4,), dtype=np.uint8)
    canvas[..., 3] = shown
    assert np.array_equal(render.stroke_to_slice(canvas, target.shape), target)
    with pytest.raises(ValueError, match="RGBA"):
        render.stroke_to_slice(canvas[..., :3], target.shape)


def test_render_plane_composes_overlay_crosshair_and_size():
    geometry = DisplayGeometry.from_affine(BRATS_AFFINE)
    vol = np.full(SHAPE, 5.0, dtype=np.float32)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[1, 2, 3] = 3
    kwargs = dict(opacity=1.0, size=(SHAPE[0] * 10, SHAPE[1] * 10), letters=False)
    rgb = render.render_plane(vol, "axial", 3, geometry, (0.0, 10.0), labels, **kwargs)
    assert rgb.shape == (SHAPE[1] * 10, SHAPE[0] * 10, 3)
    row, col = geometry.voxel_to_display("axial", (1, 2, 3), SHAPE)
    assert tuple(rgb[row * 10 + 5, col * 10 + 5]) == CLASS_COLOURS[3]  # the ET voxel, 10x10 pixels
    assert tuple(rgb[0, 0]) == (127, 127, 127)
    with_cursor = render.render_plane(vol, "axial", 3, geometry, (0.0, 10.0), labels, cursor=(4, 5, 3), **kwargs)
    r, c = geometry.voxel_to_display("axial", (4, 5, 3), SHAPE)
    changed = np.argwhere(np.any(with_cursor != rgb, axis=2))
    assert set(changed[:, 0]) | set(changed[:, 1]) >= {r * 10 + 5, c * 10 + 5}  # lines through the voxel centre
    assert np.all((changed[:, 0] == r * 10 + 5) | (changed[:, 1] == c * 10 + 5))
    plain = render.render_plane(vol, "axial", 3, geometry, (0.0, 10.0), None, letters=False)
    assert plain.shape == (SHAPE[1], SHAPE[0], 3) and np.all(plain == 127)


def test_screen_to_slice_scales_and_clips():
    assert render.screen_to_slice(0, 0, 480, 310, (155, 240)) == (0, 0)
    assert render.screen_to_slice(479.9, 309.9, 480, 310, (155, 240)) == (154, 239)
    assert render.screen_to_slice(241, 3, 480, 310, (155, 240)) == (1, 120)
    assert render.screen_to_slice(-5, 999, 480, 310, (155, 240)) == (154, 0)


def test_region_surfaces_are_nested_and_in_world_mm():
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[4:16, 4:16, 4:16] = 2
    labels[8:12, 8:12, 8:12] = 3
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (100.0, 0.0, -50.0)
    surfaces = render.region_surfaces(labels, affine, step=1)
    assert set(surfaces) == {"WT", "TC", "ET"}  # TC = NCR + ET = the ET cube here
    wt, _ = surfaces["WT"]
    et, faces = surfaces["ET"]
    assert faces.max() < len(et)
    assert wt[:, 0].min() == pytest.approx(100 + 2 * 3.5) and wt[:, 0].max() == pytest.approx(100 + 2 * 15.5)
    assert et[:, 2].min() > wt[:, 2].min() and et[:, 2].max() < wt[:, 2].max()
    assert render.region_surfaces(np.zeros((5, 5, 5), np.uint8), affine) == {}


def test_png_bytes_rgba_and_bad_input():
    rgba = np.random.default_rng(3).integers(0, 256, (7, 9, 4), dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(render.png_bytes(rgba)))), rgba)
    with pytest.raises(ValueError, match="uint8"):
        render.png_bytes(np.zeros((4, 4, 3), dtype=np.float32))
