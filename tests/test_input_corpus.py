"""Bad and unusual input (issue 15): the corpus of tests/input_corpus.py through the CLIs, the loaders and the app.

Every entry must end in a clean one-line ``error:`` (exit status 2) naming the file, or in a result
with a ``warning:`` line (exit status 0); never a traceback, never a silent wrong result.
"""

from __future__ import annotations

import gzip
import io
import os
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from core import info as info_cli
from core import segment as segment_cli
from core.io.case import CaseError, load_case, load_case_from_zip, save_label_map
from core.io.nifti import NiftiError, read_nifti
from core.io.orientation import axcodes, reorientation
from core.preprocessing.preprocess import brain_mask
from core.segmentation.segment import segment_oriented
from tests import input_corpus as corpus
from tests.conftest import ROOT

CROP_WARNING = "this is not a whole-brain volume like BraTS"


def _lines(text: str) -> list[str]:
    """Non-empty stderr lines, progress-bar redraws (``\\r``) dropped."""
    return [line for line in text.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]


# --------------------------------------------------------------------------- core.info over the whole corpus


@pytest.mark.parametrize("entry", list(corpus.CASES))
def test_info_on_the_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str], entry: str) -> None:
    folder = corpus.CASES[entry](tmp_path / corpus.CASE)
    level, fragment = corpus.EXPECTED_INFO[entry]
    status = info_cli.main([str(folder), "--json"])
    out, err = capsys.readouterr()
    lines = _lines(err)
    assert "Traceback" not in err
    if level == corpus.ERROR:
        assert status == 2 and out == ""
        assert len(lines) == 1 and lines[0].startswith(f"error: {fragment}"), lines
        assert " - " in lines[0] or "; " in lines[0]  # says what to do
    else:
        assert status == 0 and out.startswith("{")
        assert all(line.startswith("warning: ") for line in lines), lines
        assert any(fragment in line for line in lines), lines


def test_good_corpus_case_has_only_the_crop_warning(tmp_path: Path) -> None:
    case = load_case(corpus.write_case(tmp_path / corpus.CASE))
    info = info_cli.case_info(case)
    assert case.warnings == []
    assert len(info["warnings"]) == 1 and CROP_WARNING in info["warnings"][0]
    assert info["orientation"] == "LPS" and info["spacing"] == [1.0, 1.0, 1.0]


def test_broken_mask_link_names_the_link(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.generate import main

    link = tmp_path / "mask_link.nii.gz"
    link.symlink_to(tmp_path / "moved" / "mask.nii.gz")
    assert main([str(link), "-o", str(tmp_path / "out")]) == 2
    assert _lines(capsys.readouterr().err) == [
        f"error: mask_link.nii.gz: symbolic link to {tmp_path / 'moved' / 'mask.nii.gz'} is broken (its target does "
        "not exist); copy the real file there or fix the link."]


def test_a_file_in_another_voxel_order_is_turned_onto_the_t1_grid(tmp_path: Path) -> None:
    case = load_case(corpus.CASES["one file in RAS order"](tmp_path / corpus.CASE))
    np.testing.assert_array_equal(case.image, corpus.image())
    np.testing.assert_array_equal(case.seg, corpus.brain_and_labels()[1])
    np.testing.assert_array_equal(case.affine, corpus.AFFINE)
    assert len(case.warnings) == 2 and case.warnings[1].startswith(f"{corpus.file_name('seg')}: voxels stored in RAS")


def test_nan_message_counts_the_voxels(tmp_path: Path) -> None:
    folder = corpus.CASES["nan"](tmp_path / corpus.CASE)
    bad = int(np.count_nonzero(corpus.image()[0] > 900))
    with pytest.raises(CaseError, match=rf"^{corpus.file_name('t1')}: {bad} voxels are NaN or Inf; replace them"):
        load_case(folder)


def test_finite_but_too_large_is_not_called_nan(tmp_path: Path) -> None:
    folder = corpus.CASES["values beyond float32"](tmp_path / corpus.CASE)
    with pytest.raises(CaseError) as info:
        load_case(folder)
    assert "NaN" not in str(info.value) and "do not fit 32-bit floats" in str(info.value)


# --------------------------------------------------------------------------- header-only rejection, memory


def test_huge_header_is_rejected_before_reading_voxels(tmp_path: Path) -> None:
    """Peak RSS of a process that rejects a 2000^3 claim stays that of the interpreter (no 32 GB buffer).

    The peak is the process's own VmHWM: ``ru_maxrss`` would carry over the forking pytest process's size.
    """
    folder = corpus.CASES["header claims 2000^3"](tmp_path / corpus.CASE)
    code = ("import sys; from core.info import main; status = main([sys.argv[1]]); "
            "hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0]; "
            "print(status, hwm)")
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    status, peak_kb = proc.stdout.split()
    assert status == "2" and "the header says 2000 x 2000 x 2000" in proc.stderr
    assert int(peak_kb) < 600_000, f"peak RSS {int(peak_kb) / 1000:.0f} MB"


def test_gzip_bomb_is_read_only_as_far_as_the_header_says(tmp_path: Path) -> None:
    data = np.arange(8 * 9 * 10, dtype=np.int16).reshape(8, 9, 10)
    raw = nib.Nifti1Image(data, corpus.AFFINE).to_bytes() + b"\0" * (64 << 20)  # 64 MB of trailing zeros
    image = read_nifti(gzip.compress(raw, compresslevel=1), name="bomb.nii.gz")
    np.testing.assert_array_equal(np.asarray(image.dataobj), data)


def _zero_voxel_size() -> bytes:
    """A NIfTI whose sform (the transform used) has a zero first column (nibabel will not write one itself)."""
    raw = bytearray(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)).to_bytes())
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw)))
    hdr["sform_code"] = 1
    hdr["srow_x"] = [0, 0, 0, 0]
    hdr["srow_y"] = [0, 0, 0, 0]
    raw[:348] = hdr.binaryblock
    return bytes(raw)


@pytest.mark.parametrize("make, fragment", [
    (lambda: nib.Nifti1Image(np.ones((4, 4, 4), np.complex64), np.eye(4)).to_bytes(), "complex-valued voxels"),
    (_zero_voxel_size, "degenerate"),
])
def test_unusable_voxel_types_and_affines(make, fragment: str) -> None:
    with pytest.raises(NiftiError, match=rf"^odd\.nii: .*{fragment}"):
        read_nifti(make(), name="odd.nii")


def test_vox_offset_beyond_the_limit() -> None:
    raw = bytearray(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)).to_bytes())
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw)))
    hdr["vox_offset"] = 1 << 30
    raw[:348] = hdr.binaryblock
    with pytest.raises(NiftiError, match=r"^x\.nii: the header puts the voxels at byte 1073741824"):
        read_nifti(bytes(raw), name="x.nii")


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.int64, np.float64, ">i2", ">f4"])
def test_scalar_dtypes_and_byte_orders_read_like_nibabel(dtype) -> None:
    data = (np.arange(5 * 6 * 7) % 200).reshape(5, 6, 7).astype(dtype)
    img = nib.Nifti1Image(data, corpus.AFFINE, corpus.header())
    img.header.set_slope_inter(2.0, -3.0)
    ours = read_nifti(img.to_bytes(), name="d.nii")
    theirs = nib.Nifti1Image.from_bytes(img.to_bytes())
    np.testing.assert_array_equal(ours.get_fdata(), theirs.get_fdata())
    np.testing.assert_array_equal(ours.affine, theirs.affine)


# --------------------------------------------------------------------------- geometry


def test_volumes_come_from_the_sform_not_pixdim(tmp_path: Path) -> None:
    case = load_case(corpus.CASES["pixdim != sform"](tmp_path / corpus.CASE))
    info = info_cli.case_info(case)
    assert info["spacing"] == [2.0, 2.0, 2.0]
    wt = np.count_nonzero(corpus.brain_and_labels()[1]) * 8 / 1000
    assert info["volumes_ml"]["WT"] == pytest.approx(wt)


def test_qform_and_sform_are_written_as_in_the_source(tmp_path: Path) -> None:
    folder = corpus.CASES["qform != sform"](tmp_path / corpus.CASE)
    case = load_case(folder)
    out = save_label_map(tmp_path / "out.nii.gz", case.seg, case.affine, case.header, "2020")
    source, written = nib.load(folder / corpus.file_name("t1")).header, nib.load(out).header
    for key in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim"):
        np.testing.assert_array_equal(written[key], source[key], err_msg=key)
    assert written.get_qform()[0, 3] == pytest.approx(corpus.AFFINE[0, 3] + 5.0)


# --------------------------------------------------------------------------- background detection


@pytest.mark.parametrize("entry", ["background -1000", "background -3.4e38"])
def test_non_zero_background_gives_the_brain_mask_of_background_0(tmp_path: Path, entry: str) -> None:
    case = load_case(corpus.CASES[entry](tmp_path / corpus.CASE))
    np.testing.assert_array_equal(brain_mask(case.image), brain_mask(corpus.image()))


# --------------------------------------------------------------------------- core.segment (tiny U-Net)


@pytest.fixture(scope="module")
def tiny_unet(tmp_path_factory):
    from core.segmentation.unet import build_unet

    import keras

    keras.utils.set_random_seed(0)
    model = build_unet(base_filters=2, depth=2)
    path = tmp_path_factory.mktemp("weights") / "tiny.keras"
    model.save(path)
    return model, path


def _segment(folder: Path, out: Path, weights: Path, *extra: str) -> int:
    return segment_cli.main([str(folder), "-o", str(out), "--weights", str(weights), "--no-postprocess", *extra])


@pytest.mark.parametrize("entry, fragment", [
    ("pure noise modality", f"{corpus.file_name('t2')}: neighbouring voxels are uncorrelated"),
    ("mask saved as a modality", f"{corpus.file_name('t1ce')}: constant (1) inside the brain"),
    ("same file for two modalities", f"{corpus.file_name('t2')}: identical to {corpus.file_name('t1')}"),
    ("good", f"{corpus.CASE}: brain of "),  # a 32 mm crop, not a whole brain (issue 35)
])
def test_segment_refuses_noise_masks_and_crops_unless_forced(tmp_path, capsys, tiny_unet, entry, fragment) -> None:
    folder = corpus.CASES[entry](tmp_path / corpus.CASE)
    out = tmp_path / "seg.nii.gz"
    assert _segment(folder, out, tiny_unet[1]) == 2
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"error: {fragment}") and "--force" in lines[0]
    assert not out.exists()
    assert _segment(folder, out, tiny_unet[1], "--force") == 0
    assert any(line.startswith(f"warning: {fragment}") for line in _lines(capsys.readouterr().err))
    assert out.exists()


def test_a_crop_is_refused_with_or_without_background_and_a_whole_brain_is_not(tmp_path) -> None:
    from core.preprocessing.input_check import ERROR, check_case

    def errors(volumes: np.ndarray, voxel_mm: float, name: str) -> list[str]:
        affine = corpus.AFFINE @ np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
        case = load_case(corpus.write_case(tmp_path / name / corpus.CASE, volumes, affine))
        return [f.message for f in check_case(case) if f.level == ERROR]

    inside = corpus.image()[:, 10:22, 12:24, 8:20]  # a 12 mm cube wholly inside the brain: no background border
    assert (inside != 0).all()
    refused = errors(inside, 1.0, "inside")
    assert len(refused) == 1 and "this is not a whole-brain volume" in refused[0] and "skull" not in refused[0]
    small = np.zeros_like(corpus.image())
    small[:, 10:22, 12:24, 8:20] = inside  # 110 mL of brain in a head-sized field of view (4 mm voxels)
    assert any("brain of 110.6 mL" in e for e in errors(small, 4.0, "small"))
    assert errors(corpus.image(), 4.0, "whole") == []  # 704 mL in 128 x 144 x 112 mm: a (coarse) whole brain


def test_require_plausible_names_the_way_to_force(tmp_path) -> None:
    from core.preprocessing.input_check import require_plausible

    case = load_case(corpus.CASES["same file for two modalities"](tmp_path / corpus.CASE))
    with pytest.raises(CaseError, match=r"identical to .*\(pass force=true to segment it anyway\)$"):
        require_plausible(case, force_hint="force=true")
    with pytest.raises(CaseError) as refused:  # the app: nothing to force with
        require_plausible(case, force_hint=None)
    assert "identical to" in str(refused.value) and "pass" not in str(refused.value)
    warnings = require_plausible(case, force=True)
    assert any("identical to" in w for w in warnings) and warnings[: len(case.warnings)] == case.warnings


def test_segment_refuses_a_brain_region_too_large_for_memory(tmp_path, capsys, tiny_unet, monkeypatch) -> None:
    from core.preprocessing import input_check

    monkeypatch.setattr(input_check, "MAX_BOX_VOXELS", 1000)  # the corpus brain box is 28 x 32 x 24 voxels
    folder = corpus.write_case(tmp_path / corpus.CASE)
    assert _segment(folder, tmp_path / "seg.nii.gz", tiny_unet[1]) == 2
    lines = _lines(capsys.readouterr().err)
    box = tuple(s.stop - s.start for s in input_check.bounding_box(brain_mask(corpus.image())))
    assert len(lines) == 1 and lines[0].startswith(
        f"error: {corpus.CASE}: the brain region is {' x '.join(map(str, box))} voxels"), lines
    assert "--force" in lines[0]


@pytest.mark.parametrize("entry, shown", [("background -1000", "-1000"), ("background -3.4e38", "-3.40282e+38")])
def test_segment_with_a_non_zero_background_equals_background_0(tmp_path, capsys, tiny_unet, entry, shown) -> None:
    good = corpus.write_case(tmp_path / "good" / corpus.CASE)
    odd = corpus.CASES[entry](tmp_path / "odd" / corpus.CASE)
    assert _segment(good, tmp_path / "good.nii.gz", tiny_unet[1], "--force") == 0  # the corpus case is a crop
    capsys.readouterr()
    assert _segment(odd, tmp_path / "odd.nii.gz", tiny_unet[1], "--force") == 0
    lines = _lines(capsys.readouterr().err)
    assert sum(f"the background is {shown} " in line for line in lines) == 4  # one per modality
    assert any(CROP_WARNING in line for line in lines)
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "odd.nii.gz").dataobj),
                                  np.asarray(nib.load(tmp_path / "good.nii.gz").dataobj))


def _turned(folder: Path) -> tuple[Path, np.ndarray]:
    """The corpus case with voxel axes permuted (z, x, y) and two of them flipped, affine adjusted (same world)."""
    volumes = corpus.image()
    seg = corpus.brain_and_labels()[1]
    order = (2, 0, 1)
    moved = np.flip(np.transpose(volumes, (0, *(a + 1 for a in order))), axis=(1, 3))
    labels = np.flip(np.transpose(seg, order), axis=(0, 2))
    # new voxel (i, j, k) = old voxel (z, x, y) with i, k flipped: build the affine from that mapping
    n = np.array(moved.shape[1:])
    old_from_new = np.zeros((4, 4))
    old_from_new[3, 3] = 1
    old_from_new[2, 0], old_from_new[2, 3] = -1, n[0] - 1  # old z = n0 - 1 - i
    old_from_new[0, 1] = 1  # old x = j
    old_from_new[1, 2], old_from_new[1, 3] = -1, n[2] - 1  # old y = n2 - 1 - k
    affine = corpus.AFFINE @ old_from_new
    corpus.write_case(folder, moved, affine, labels)
    return folder, affine


def test_segment_any_orientation_aligns_in_world_space(tmp_path, capsys, tiny_unet) -> None:
    good = corpus.write_case(tmp_path / "good" / corpus.CASE)
    turned, affine = _turned(tmp_path / "turned" / corpus.CASE)
    assert axcodes(affine) != "LPS"
    case_good, case_turned = load_case(good), load_case(turned)
    turn = reorientation(case_turned.affine, case_turned.shape)
    np.testing.assert_allclose(turn.model_affine(case_turned.affine), corpus.AFFINE, atol=1e-9)
    model = tiny_unet[0]
    a = segment_oriented(case_good, model, postprocess=False)
    b = segment_oriented(case_turned, model, postprocess=False)
    np.testing.assert_array_equal(turn.to_model(b.probabilities), a.probabilities)
    np.testing.assert_array_equal(turn.to_model(b.labels), a.labels)
    assert _segment(turned, tmp_path / "turned.nii.gz", tiny_unet[1], "--force") == 0
    written = nib.load(tmp_path / "turned.nii.gz")
    np.testing.assert_array_equal(written.affine, nib.load(turned / corpus.file_name("t1")).affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.where(b.labels == 3, 4, b.labels))


# --------------------------------------------------------------------------- core.generate


@pytest.fixture(scope="module")
def tiny_cvae():
    from core.synthesis import cvae

    return cvae.build_cvae(base_filters=4, latent_channels=2, depth=2, grid=cvae.CvaeGrid((32, 32, 16), 2))


def test_generate_any_mask_orientation_aligns_in_world_space(tmp_path, tiny_cvae) -> None:
    from core.synthesis.generate import generate_cases

    shape = (40, 36, 20)
    mask = np.zeros(shape, np.uint8)
    mask[14:26, 12:24, 6:15] = 2
    mask[17:23, 15:21, 8:13] = 3
    brain = np.zeros(shape, bool)
    brain[6:34, 4:32, 2:18] = True
    affine = corpus.AFFINE
    flipped_affine = affine @ np.array([[-1.0, 0, 0, shape[0] - 1], [0, 1, 0, 0], [0, 0, -1, shape[2] - 1],
                                        [0, 0, 0, 1]])  # voxel axes 0 and 2 reversed, same world
    a = generate_cases(mask, affine, None, tiny_cvae, seed=3, brain=brain)[0]
    b = generate_cases(mask[::-1, :, ::-1], flipped_affine, None, tiny_cvae, seed=3, brain=brain[::-1, :, ::-1])[0]
    np.testing.assert_array_equal(b.affine, flipped_affine)
    np.testing.assert_allclose(b.image[:, ::-1, :, ::-1], a.image, rtol=0, atol=1e-4)


def test_generate_cli_warns_about_an_empty_mask(tmp_path, capsys, tiny_cvae) -> None:
    from core.generate import main

    weights = tmp_path / "cvae.keras"
    tiny_cvae.save(weights)
    shape = (40, 36, 20)
    brain = np.zeros(shape, np.uint8)
    brain[6:34, 4:32, 2:18] = 1
    mask = corpus.write(tmp_path / "empty_seg.nii.gz", np.zeros(shape, np.uint8))
    flip = np.array([[-1.0, 0, 0, shape[0] - 1], [0, -1, 0, shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
    brain_file = corpus.write(tmp_path / "brain.nii.gz", brain[::-1, ::-1].copy(), corpus.AFFINE @ flip)  # RAS
    assert main([str(mask), "-o", str(tmp_path / "out"), "--weights", str(weights), "--brain", str(brain_file)]) == 0
    lines = [line for line in _lines(capsys.readouterr().err) if "it/s" not in line and "case/s" not in line]
    assert lines[0] == ("warning: empty_seg.nii.gz: no tumour label (every voxel is 0); the generated cases are "
                        "tumour-free brains - pass a tumour segmentation to get tumours.")
    (case_dir,) = (tmp_path / "out").iterdir()
    generated = load_case(case_dir)
    assert np.array_equal(generated.image[0] != 0, brain.astype(bool))  # the RAS brain file, turned onto the mask
    small = corpus.write(tmp_path / "small_brain.nii.gz", brain[:-1])
    assert main([str(mask), "-o", str(tmp_path / "out2"), "--weights", str(weights), "--brain", str(small)]) == 2
    assert _lines(capsys.readouterr().err) == [
        "error: small_brain.nii.gz: not on the grid of empty_seg.nii.gz (shape (39, 36, 20) vs (40, 36, 20), or "
        "another affine); resample it onto the mask's grid."]


def test_real_cases_load_without_findings(real_root: Path) -> None:
    """The real BraTS cases beside the project raise no warning at all (no false alarm on the data it is for)."""
    for name in ("BraTS-GLI-demo-0001", "Brats18_2013_11_1"):
        if not (real_root / name).is_dir():
            continue
        info = info_cli.case_info(load_case(real_root / name))
        assert info["warnings"] == [] and info["orientation"] == "LPS", (name, info["warnings"])


def test_generate_cli_names_the_mask_file(tmp_path, capsys, tiny_cvae) -> None:
    from core.generate import main

    weights = tmp_path / "cvae.keras"
    tiny_cvae.save(weights)
    huge = corpus.huge_header_file(tmp_path / "huge_seg.nii.gz", (2000, 2000, 2000), np.uint8)
    assert main([str(huge), "-o", str(tmp_path / "out"), "--weights", str(weights)]) == 2
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: huge_seg.nii.gz: the header says 2000 x 2000 x 2000")
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[2, 2, 2] = 7
    bad = corpus.write(tmp_path / "my_mask.nii.gz", labels)
    assert main([str(bad), "-o", str(tmp_path / "out"), "--weights", str(weights)]) == 2
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: my_mask.nii.gz: unknown label values [7]")
    coarse = corpus.write(tmp_path / "coarse.nii.gz", np.zeros((8, 8, 8), np.uint8),
                          np.diag([2.0, 2.0, 2.0, 1.0]))
    assert main([str(coarse), "-o", str(tmp_path / "out"), "--weights", str(weights)]) == 2
    assert _lines(capsys.readouterr().err) == [
        "error: coarse.nii.gz: voxel size 2 x 2 x 2 mm is not 1 mm; the CVAE generates on 1 mm grids like BraTS: "
        "resample the mask to 1 mm (nearest neighbour) first."]


# --------------------------------------------------------------------------- zip


def _zip_of(folder: Path, extra: int = 0) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"{folder.name}/{path.name}")
        for i in range(extra):
            zf.writestr(f"{folder.name}/notes/{i}.txt", b"x")
    return buffer.getvalue()


def test_zip_entry_count_is_checked_before_the_directory_is_parsed(tmp_path, monkeypatch) -> None:
    data = _zip_of(corpus.write_case(tmp_path / corpus.CASE), extra=300)

    def no_parse(*args, **kwargs):
        raise AssertionError("the central directory must not be parsed")

    monkeypatch.setattr(zipfile, "ZipFile", no_parse)
    with pytest.raises(CaseError, match=r"^uploaded zip: 305 entries, more than the 256 a case zip may hold"):
        load_case_from_zip(data)


def test_zip_with_a_huge_header_entry_is_rejected_without_inflating_it(tmp_path) -> None:
    folder = corpus.CASES["header claims 2000^3"](tmp_path / corpus.CASE)
    with pytest.raises(CaseError, match=rf"^{corpus.file_name('t1')}: the header says 2000 x 2000 x 2000"):
        load_case_from_zip(_zip_of(folder))


def test_zip_loading_leaves_nothing_behind_on_sigterm(tmp_path: Path) -> None:
    """SIGTERM while a zip is being read: no temporary file or folder remains (nothing is extracted)."""
    folder = corpus.write_case(tmp_path / corpus.CASE)
    archive = tmp_path / "case.zip"
    archive.write_bytes(_zip_of(folder))
    private = tmp_path / "tmp"
    private.mkdir()
    code = ("import sys, time; from core.io.case import load_case_from_zip\n"
            "def slow(fraction, message):\n    print('reading', flush=True); time.sleep(60)\n"
            "load_case_from_zip(sys.argv[1], progress=slow)\n")
    env = {**os.environ, "TMPDIR": str(private), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(archive)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "reading"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(private.iterdir()) == []
    assert tempfile.gettempdir() != str(private)


# --------------------------------------------------------------------------- the app's Load page


def test_load_page_shows_warnings_and_clean_errors(tmp_path, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BRATS_UNET_WEIGHTS", str(tmp_path / "none.keras"))
    monkeypatch.setenv("BRATS_CVAE_WEIGHTS", str(tmp_path / "none_cvae.keras"))
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    app.run()

    def upload(folder: Path) -> None:
        files = [(p.name, p.read_bytes(), "application/octet-stream") for p in sorted(folder.iterdir())]
        app.file_uploader(key="upload_files").set_value(files)
        app.run()
        app.button(key="load_upload").click().run()

    upload(corpus.CASES["background -1000"](tmp_path / "bg" / corpus.CASE))
    assert not app.exception and not app.error
    warnings = [w.value for w in app.warning]
    assert sum("the background is -1000" in w for w in warnings) == 4, warnings
    assert any(CROP_WARNING in w for w in warnings)
    rejected = {
        "rgb24 modality": f"{corpus.file_name('t1ce')}: stores colour (RGB) voxels",
        "header claims 2000^3": f"{corpus.file_name('t1')}: the header says 2000 x 2000 x 2000 voxels",
        "4D MSD file": f"{corpus.file_name('t1')}: 4D image of shape (32, 36, 28, 4)",
    }
    for entry, fragment in rejected.items():
        upload(corpus.CASES[entry](tmp_path / entry.replace(" ", "_") / corpus.CASE))
        assert not app.exception
        errors = [e.value for e in app.error]
        assert len(errors) == 1 and errors[0].startswith(fragment), (entry, errors)
        assert app.session_state["studio"].case.name == corpus.CASE  # the previous case stays
    many = tmp_path / "many.zip"
    many.write_bytes(_zip_of(corpus.write_case(tmp_path / "many" / corpus.CASE), extra=300))
    app.file_uploader(key="upload_files").set_value([("many.zip", many.read_bytes(), "application/zip")])
    app.run()
    app.button(key="load_upload").click().run()
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and errors[0].startswith("uploaded zip: 305 entries, more than the 256"), errors


# --------------------------------------------------------------------------- more careless-user input


def test_an_image_given_as_label_map_lists_few_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.generate import main

    path = corpus.write(tmp_path / "t1_as_mask.nii.gz", corpus.image()[0])
    assert main([str(path), "-o", str(tmp_path / "out")]) == 2
    lines = _lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: t1_as_mask.nii.gz: unknown label values [")
    assert "distinct unknown values: an image, not a label map?" in lines[0] and len(lines[0]) < 600


def test_generate_rejects_a_nan_temperature(tiny_cvae) -> None:
    from core.synthesis.generate import generate_cases

    mask = np.zeros((40, 36, 20), np.uint8)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0, got nan"):
        generate_cases(mask, corpus.AFFINE, None, tiny_cvae, temperature=float("nan"), brain=mask > 0)


def test_segment_reports_an_unwritable_output(tmp_path, capsys, tiny_unet) -> None:
    folder = corpus.write_case(tmp_path / corpus.CASE)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "seg.nii.gz").mkdir()  # a folder where the file should go: the final rename fails
    assert _segment(folder, out_dir / "seg.nii.gz", tiny_unet[1], "--force") == 2
    lines = [line for line in _lines(capsys.readouterr().err) if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write {out_dir / 'seg.nii.gz'} (")


def test_zip_with_an_unsupported_compression_method(tmp_path: Path) -> None:
    data = bytearray(_zip_of(corpus.write_case(tmp_path / corpus.CASE)))
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) >= 0:  # central directory: method at +10 -> Deflate64 (9)
        data[start + 10 : start + 12] = (9).to_bytes(2, "little")
        start += 4
    with pytest.raises(CaseError, match=r"^uploaded zip: entry Corpus01/Corpus01_\w+\.nii\.gz uses a compression "
                                        r"method Python cannot read"):
        load_case_from_zip(bytes(data))


def test_sigterm_while_writing_leaves_no_temporary_file(tmp_path: Path) -> None:
    """A CLI process killed by SIGTERM in the middle of save_nifti removes the half-written temporary file."""
    out = tmp_path / "out"
    out.mkdir()
    code = ("import os, signal, sys, time\n"
            "import nibabel as nib, numpy as np\n"
            "from core.services.cli import exit_on_sigterm\n"
            "from core.io.nifti import save_nifti\n"
            "def slow(self, filename, **kwargs):\n"
            "    open(filename, 'wb').write(b'partial'); print('writing', flush=True); time.sleep(60)\n"
            "nib.Nifti1Image.to_filename = slow\n"
            "exit_on_sigterm()\n"
            "save_nifti(sys.argv[1], np.zeros((4, 4, 4), np.uint8), np.eye(4))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out / "seg.nii.gz")], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert [p.name.startswith(".seg.tmp") for p in out.iterdir()] == [True]  # the temporary file exists
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------- fuzzing: never anything but a clean error


def test_fuzzed_headers_give_a_volume_or_a_clean_error() -> None:
    """Random bytes written into the header of a valid file: a read or a NiftiError, nothing else."""
    data = (np.arange(6 * 7 * 8) % 50).reshape(6, 7, 8).astype(np.int16)
    base = nib.Nifti1Image(data, corpus.AFFINE).to_bytes()
    rng = np.random.default_rng(0)
    outcomes = {"read": 0, "error": 0}
    for _ in range(400):
        raw = bytearray(base)
        for _ in range(int(rng.integers(1, 6))):
            raw[int(rng.integers(4, 344))] = int(rng.integers(0, 256))
        try:
            image = read_nifti(bytes(raw), name="f.nii")
            np.asarray(image.dataobj).sum()
            outcomes["read"] += 1
        except NiftiError as exc:
            assert str(exc).startswith("f.nii: ")
            outcomes["error"] += 1
    assert outcomes["read"] > 0 and outcomes["error"] > 0, outcomes


def test_fuzzed_zips_give_a_case_or_a_clean_error(tmp_path: Path) -> None:
    """Random bytes written into a case zip (headers, directory, data) or a cut: a case or a CaseError only."""
    base = _zip_of(corpus.write_case(tmp_path / corpus.CASE))
    rng = np.random.default_rng(2)
    outcomes = {"case": 0, "error": 0}
    for _ in range(250):
        raw = bytearray(base)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, len(raw))) if rng.random() < 0.5 else len(raw) - 1 - int(rng.integers(0, 600))
            raw[at] = int(rng.integers(0, 256))
        if rng.random() < 0.1:
            raw = raw[: int(rng.integers(0, len(raw)))]
        try:
            load_case_from_zip(bytes(raw))
            outcomes["case"] += 1
        except CaseError:
            outcomes["error"] += 1
    assert outcomes["error"] > 0, outcomes


def test_app_segment_refuses_what_the_cli_refuses(tmp_path, monkeypatch, tiny_unet) -> None:
    """The app's Segment page shows the CLI's refusal for a noise modality and runs only when forced."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BRATS_UNET_WEIGHTS", str(tiny_unet[1]))
    monkeypatch.setenv("BRATS_CVAE_WEIGHTS", str(tmp_path / "none_cvae.keras"))
    app = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    app.run()
    folder = corpus.CASES["pure noise modality"](tmp_path / corpus.CASE)
    files = [(p.name, p.read_bytes(), "application/octet-stream") for p in sorted(folder.iterdir())]
    app.file_uploader(key="upload_files").set_value(files)
    app.run()
    app.button(key="load_upload").click().run()
    noise = f"{corpus.file_name('t2')}: neighbouring voxels are uncorrelated"
    assert any(noise in w.value and "Segment refuses this case" in w.value for w in app.warning)
    app.switch_page("pages/segment.py").run()
    assert not app.exception and any(w.value.startswith(noise) for w in app.warning)
    assert app.button(key="seg_run").disabled and app.session_state["studio"].prediction is None
    app.checkbox(key="seg_force").check().run()
    app.toggle(key="seg_tta").set_value(False)
    app.button(key="seg_run").click().run()
    for _ in range(5):
        if app.session_state["studio"].prediction is not None:
            break
        app.run()
    assert not app.exception and app.session_state["studio"].prediction is not None
