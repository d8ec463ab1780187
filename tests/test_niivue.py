"""core.viewer.niivue (files and index mapping for the browser viewer) and MaskEditor.paint_voxels."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from core.synthesis.anatomy import BRATS_AFFINE
from core.viewer.mask_edit import MaskEditor
from core.viewer.niivue import (
    UNCERTAIN_FROM,
    display_volume_bytes,
    label_volume_bytes,
    new_events,
    probability_codes,
    ras_to_voxel,
    uncertainty_map,
    uncertainty_volume_bytes,
    voxel_to_ras_flat,
    voxel_to_world,
    world_to_voxel,
)
from core.viewer.render import DisplayGeometry

SHAPE = (6, 5, 4)
AFFINES = {
    "BraTS (LPS)": np.asarray(BRATS_AFFINE, float),
    "RAS": np.diag([2.0, 1.0, 1.5, 1.0]),
    "permuted": np.array([[0, 0, -1.0, 3], [1.0, 0, 0, -2], [0, -1.0, 0, 5], [0, 0, 0, 1]]),
}


def _reoriented(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """What NiiVue holds: the volume in RAS voxel order (nibabel's canonical reorientation)."""
    return nib.as_closest_canonical(nib.Nifti1Image(volume, affine)).get_fdata()


@pytest.mark.parametrize("name", list(AFFINES))
def test_ras_flat_indices_map_back_to_the_case_voxels(name):
    affine = AFFINES[name]
    volume = np.arange(np.prod(SHAPE), dtype=float).reshape(SHAPE)
    ras = _reoriented(volume, affine)
    flat = np.arange(ras.size)
    voxels = ras_to_voxel(flat, SHAPE, affine)
    # the value NiiVue sees at each RAS flat index is the case's value at the mapped voxel
    np.testing.assert_array_equal(ras.ravel(order="F"), volume[voxels])
    np.testing.assert_array_equal(voxel_to_ras_flat(voxels, SHAPE, affine), flat)


def test_ras_to_voxel_rejects_indices_outside():
    with pytest.raises(ValueError, match="outside"):
        ras_to_voxel(np.array([np.prod(SHAPE)]), SHAPE, AFFINES["RAS"])


def test_display_volume_is_8_bit_and_keeps_intensities():
    rng = np.random.default_rng(0)
    volume = np.zeros(SHAPE, np.float32)
    volume[1:5, 1:4, 1:3] = rng.uniform(100, 900, (4, 3, 2))
    image = nib.Nifti1Image.from_bytes(gzip.decompress(display_volume_bytes(volume, AFFINES["RAS"])))
    assert image.get_data_dtype() == np.uint8
    np.testing.assert_allclose(image.affine, AFFINES["RAS"])
    restored = image.get_fdata()
    step = (volume.max() - volume.min()) / 255
    assert np.abs(restored - volume).max() <= step  # within one grey level (top 0.1 % saturates)
    labels = np.zeros(SHAPE, np.uint8)
    labels[2, 2, 2] = 3
    back = nib.Nifti1Image.from_bytes(gzip.decompress(label_volume_bytes(labels, AFFINES["RAS"])))
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels)


def test_world_voxel_round_trip():
    affine = AFFINES["BraTS (LPS)"]
    assert world_to_voxel(voxel_to_world((10, 20, 30), affine), affine, (240, 240, 155)) == (10, 20, 30)
    assert world_to_voxel([1e6, -1e6, 0], affine, (240, 240, 155))[0] in (0, 239)  # clipped


def _value(events, epoch="e1", client="tabA"):
    return {"epoch": epoch, "client": client, "events": [{"epoch": epoch, **e} for e in events]}


def test_new_events_skip_applied_and_stale_and_sort():
    affine = AFFINES["RAS"]
    value = _value([{"rev": 3, "op": "undo"}, {"rev": 1, "op": "paint", "idx": [0], "val": [2]},
                    {"rev": 2, "op": "paint", "idx": [1, 2], "val": [1, 1]}])
    events = new_events(value, "e1", {"tabA": 1}, SHAPE, affine)
    assert [e.rev for e in events] == [2, 3]
    assert events[1].op == "undo" and {e.client for e in events} == {"tabA"}
    assert new_events(value, "other", {}, SHAPE, affine) == []
    assert new_events(None, "e1", {}, SHAPE, affine) == []
    with pytest.raises(ValueError, match="labels"):
        new_events(_value([{"rev": 1, "op": "paint", "idx": [0], "val": [4]}]), "e1", {}, SHAPE, affine)
    with pytest.raises(ValueError, match="indices"):
        new_events(_value([{"rev": 1, "op": "paint", "idx": [0, 1], "val": [1]}]), "e1", {}, SHAPE, affine)


def test_new_events_carry_the_stroke_an_undo_already_showed():
    affine = AFFINES["RAS"]
    value = _value([{"rev": 2, "op": "undo", "mirrors": 1}, {"rev": 3, "op": "redo"}])
    assert [(e.op, e.mirrors) for e in new_events(value, "e1", {}, SHAPE, affine)] == [("undo", 1), ("redo", None)]
    for bad in ("1", 1.5, True):
        with pytest.raises(ValueError, match="mirrors"):
            new_events(_value([{"rev": 1, "op": "undo", "mirrors": bad}]), "e1", {}, SHAPE, affine)


def test_new_events_count_revisions_per_browser_tab():
    """Two tabs of one session number their strokes independently: tab B's revision 2 is new after tab A's 5."""
    affine = AFFINES["RAS"]
    applied = {"tabA": 5}
    value_b = _value([{"rev": 1, "op": "paint", "idx": [0], "val": [2]},
                      {"rev": 2, "op": "paint", "idx": [1], "val": [3]}], client="tabB")
    assert [(e.client, e.rev) for e in new_events(value_b, "e1", applied, SHAPE, affine)] == [("tabB", 1), ("tabB", 2)]
    value_a = _value([{"rev": 5, "op": "undo"}, {"rev": 6, "op": "redo"}])
    assert [(e.client, e.rev) for e in new_events(value_a, "e1", applied, SHAPE, affine)] == [("tabA", 6)]
    forged = _value([{"rev": 1, "op": "undo"}], client="../../etc")  # not an id: counted as the anonymous client
    assert [e.client for e in new_events(forged, "e1", applied, SHAPE, affine)] == [""]


def test_paint_voxels_is_one_undoable_step():
    geometry = DisplayGeometry.from_affine(AFFINES["RAS"])
    editor = MaskEditor(np.zeros(SHAPE, np.uint8), geometry)
    voxels = (np.array([0, 1, 1]), np.array([0, 2, 2]), np.array([0, 3, 3]))
    assert editor.paint_voxels(voxels, np.array([1, 2, 3])) == 2  # (1,2,3) listed twice: the last value wins
    assert editor.labels[1, 2, 3] == 3 and editor.labels[0, 0, 0] == 1
    assert editor.paint_voxels(voxels, np.array([1, 3, 3])) == 0  # nothing changes: no step
    assert editor.undo_depth == 1
    editor.undo()
    assert not editor.labels.any()
    editor.redo()
    assert editor.labels[1, 2, 3] == 3
    editor.clear_slice("axial", 3)  # slice steps and voxel steps share one history
    editor.undo()
    editor.undo()
    assert not editor.labels.any()
    with pytest.raises(ValueError):
        editor.paint_voxels(voxels, np.array([1, 2, 4]))


def test_uncertainty_is_highest_at_even_odds_and_kept_on_the_case_grid():
    probs = np.zeros(SHAPE + (3,), np.float32)
    probs[0, 0, 0] = (1.0, 1.0, 1.0)  # sure: tumour everywhere
    probs[1, 0, 0] = (1.0, 0.5, 0.0)  # even odds for TC
    probs[2, 0, 0] = (0.75, 0.0, 0.0)  # a quarter of the way
    codes = probability_codes(probs)
    assert codes.dtype == np.uint8 and codes[1, 0, 0, 1] in (127, 128)
    with pytest.raises(ValueError, match=r"\(X, Y, Z, 3\)"):
        probability_codes(probs[..., :2])
    uncertainty = uncertainty_map(codes)
    assert uncertainty[0, 0, 0] == 0.0 and uncertainty[3, 0, 0] == 0.0  # sure either way
    assert uncertainty[1, 0, 0] == pytest.approx(1.0, abs=0.01)  # the most uncertain region counts
    assert uncertainty[2, 0, 0] == pytest.approx(0.5, abs=0.01)
    for name, affine in AFFINES.items():
        image = nib.Nifti1Image.from_bytes(gzip.decompress(uncertainty_volume_bytes(codes, affine)))
        assert np.allclose(image.affine, affine), name
        np.testing.assert_allclose(image.get_fdata(), uncertainty, atol=0.5 / 255 + 1e-6)
        assert image.header["cal_min"] == pytest.approx(UNCERTAIN_FROM) and image.header["cal_max"] == 1.0
