"""core.io.case: finding files by name, loading (folder, bytes, zip), validation errors, writing."""

from __future__ import annotations

import gzip
import io
import stat
import struct
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from core.io.case import (
    MODALITIES,
    Case,
    CaseError,
    case_naming,
    cases_zip,
    find_case_files,
    identify_file,
    label_map_bytes,
    load_case,
    load_case_from_bytes,
    load_case_from_zip,
    save_case,
    save_label_map,
)

SHAPE = (12, 10, 8)
SPACING = (1.0, 1.0, 1.5)
AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 9.0], [0, 0, 1.5, 0], [0, 0, 0, 1]])
# File name stems per naming, written out literally (not taken from core.io.case).
NAMES: dict[str, dict[str, str]] = {
    "2020": {"t1": "{}_t1", "t1ce": "{}_t1ce", "t2": "{}_t2", "flair": "{}_flair", "seg": "{}_seg"},
    "2023": {"t1": "{}-t1n", "t1ce": "{}-t1c", "t2": "{}-t2w", "flair": "{}-t2f", "seg": "{}-seg"},
    "plain": {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"},
}


def make_header() -> nib.Nifti1Header:
    hdr = nib.Nifti1Header()
    hdr.set_qform(AFFINE, code=1)
    hdr.set_sform(AFFINE, code=1)
    hdr["descrip"] = b"case test"
    hdr.set_xyzt_units("mm")
    return hdr


def modality_volume(index: int) -> np.ndarray:
    """Distinct, non-zero float32 volume per channel (channel i lies in [10(i+1), 10(i+1)+1))."""
    return (np.random.default_rng(index).random(SHAPE) + 10 * (index + 1)).astype(np.float32)


def internal_labels() -> np.ndarray:
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[2:5, 2:5, 2:5] = 1
    seg[5:8, 2:6, 2:6] = 2
    seg[3:4, 6:8, 5:7] = 3
    return seg


def stored_labels(convention: str) -> np.ndarray:
    seg = internal_labels()
    seg[seg == 3] = 4 if convention == "2020" else 3
    return seg


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    """Plain nibabel writer, independent of the code under test."""
    nib.save(nib.Nifti1Image(data, affine, make_header()), path)
    return path


def write_case(
    folder: Path,
    naming: str = "2020",
    ext: str = ".nii.gz",
    seg: str | None = "same",
    upper: bool = False,
    case_id: str = "Case01",
) -> dict[str, Path]:
    """Write a tiny case; ``seg`` is the label convention ("same": the naming's, None: no seg)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, key in enumerate(MODALITIES):
        name = NAMES[naming][key].format(case_id) + ext
        paths[key] = write_nifti(folder / (name.upper() if upper else name), modality_volume(i))
    if seg is not None:
        convention = naming if seg == "same" else seg
        name = NAMES[naming]["seg"].format(case_id) + ext
        paths["seg"] = write_nifti(folder / (name.upper() if upper else name), stored_labels(convention))
    return paths


def expected_image() -> np.ndarray:
    return np.stack([modality_volume(i) for i in range(len(MODALITIES))])


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "file_name, expected",
    [
        ("BraTS20_Training_001_t1.nii", ("t1", "2020")),
        ("BraTS20_Training_001_t1ce.nii", ("t1ce", "2020")),
        ("BraTS2021_00000_t2.nii.gz", ("t2", "2020")),
        ("BraTS2021_00000_flair.nii.gz", ("flair", "2020")),
        ("BraTS2021_00000_seg.nii.gz", ("seg", "2020")),
        ("BraTS-GLI-00001-000-t1n.nii.gz", ("t1", "2023")),
        ("BraTS-GLI-00001-000-t1c.nii.gz", ("t1ce", "2023")),
        ("BraTS-GLI-00001-000-t2w.nii.gz", ("t2", "2023")),
        ("BraTS-GLI-00001-000-t2f.nii.gz", ("flair", "2023")),
        ("BraTS-GLI-00001-000-seg.nii.gz", ("seg", "2023")),
        ("X_T1CE.NII.GZ", ("t1ce", "2020")),
        ("Case-T2F.Nii", ("flair", "2023")),
        ("t1.nii", ("t1", "plain")),
        ("T1c.nii.gz", ("t1ce", "plain")),
        ("FLAIR.nii.gz", ("flair", "plain")),
        ("seg.nii", ("seg", "plain")),
        ("uploads/sub/x_t2.nii.gz", ("t2", "2020")),
        ("x_t1.nii.bak", None),
        ("x_t1_brain.nii.gz", None),
        ("x_t2star.nii.gz", None),
        ("._x_t1.nii.gz", None),
        ("readme.txt", None),
        (".nii.gz", None),
    ],
)
def test_identify_file(file_name: str, expected: tuple[str, str] | None) -> None:
    assert identify_file(file_name) == expected


@pytest.mark.parametrize("naming", ["2020", "2023", "plain"])
def test_find_case_files_ignores_unrelated_files(tmp_path: Path, naming: str) -> None:
    paths = write_case(tmp_path, naming)
    (tmp_path / "notes.txt").write_text("x")
    write_nifti(tmp_path / "Case01_brainmask.nii.gz", internal_labels())
    (tmp_path / "sub").mkdir()
    found = find_case_files(tmp_path)
    assert found == paths
    assert case_naming(found) == naming


def test_missing_modality_names_it_and_the_fix(tmp_path: Path) -> None:
    paths = write_case(tmp_path, "2023")
    paths["t1ce"].unlink()
    write_nifti(tmp_path / "Case01-t1ce-old.nii.gz", modality_volume(1))
    with pytest.raises(CaseError, match="missing t1ce") as info:
        find_case_files(tmp_path)
    assert "Case01-t1ce-old.nii.gz" in str(info.value) and "-t1c" in str(info.value)


def test_duplicate_modality_names_both_files(tmp_path: Path) -> None:
    write_case(tmp_path, "2020", ext=".nii.gz")
    write_nifti(tmp_path / "Case01_t1.nii", modality_volume(0))
    with pytest.raises(CaseError, match=r"Case01_t1\.nii, Case01_t1\.nii\.gz|Case01_t1\.nii\.gz, Case01_t1\.nii"):
        find_case_files(tmp_path)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(CaseError, match="nowhere"):
        load_case(tmp_path / "nowhere")


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("naming", ["2020", "2023", "plain"])
@pytest.mark.parametrize("ext, upper", [(".nii.gz", False), (".nii", False), (".nii.gz", True)])
def test_load_case_all_namings(tmp_path: Path, naming: str, ext: str, upper: bool) -> None:
    folder = tmp_path / "Case01"
    paths = write_case(folder, naming, ext=ext, upper=upper)
    case = load_case(folder)
    assert case.image.dtype == np.float32 and case.image.shape == (4, *SHAPE)
    np.testing.assert_array_equal(case.image, expected_image())  # channel order t1, t1ce, t2, flair
    assert case.seg.dtype == np.uint8
    np.testing.assert_array_equal(case.seg, internal_labels())
    assert case.label_convention == ("2023" if naming == "plain" else naming)  # plain: detected from the 3s
    np.testing.assert_allclose(case.affine, AFFINE, atol=1e-6)
    assert case.spacing == SPACING and case.shape == SHAPE
    assert case.header["descrip"] == b"case test"
    assert case.naming == naming and case.name == "Case01"
    assert case.files == {k: p.name for k, p in paths.items()}


def test_load_case_2020_labels_converted(tmp_path: Path) -> None:
    write_case(tmp_path, "plain", seg="2020")
    case = load_case(tmp_path)
    assert case.label_convention == "2020"
    np.testing.assert_array_equal(case.seg, internal_labels())


@pytest.mark.parametrize("naming, expected", [("2020", "2020"), ("2023", "2023"), ("plain", None)])
def test_seg_with_only_0_1_2_takes_convention_from_naming(tmp_path: Path, naming: str, expected: str | None) -> None:
    paths = write_case(tmp_path, naming)
    seg = internal_labels()
    seg[seg == 3] = 2
    write_nifti(paths["seg"], seg)
    case = load_case(tmp_path)
    assert case.label_convention == expected
    np.testing.assert_array_equal(case.seg, seg)


def test_load_case_without_seg(tmp_path: Path) -> None:
    write_case(tmp_path, "2023", seg=None)
    case = load_case(tmp_path)
    assert case.seg is None and case.label_convention is None and "seg" not in case.files


def test_integral_float_seg_accepted(tmp_path: Path) -> None:
    paths = write_case(tmp_path, "2020")
    write_nifti(paths["seg"], stored_labels("2020").astype(np.float32))
    np.testing.assert_array_equal(load_case(tmp_path).seg, internal_labels())


def test_trailing_singleton_dimension_is_squeezed(tmp_path: Path) -> None:
    paths = write_case(tmp_path, "2020")
    write_nifti(paths["t2"], modality_volume(2)[..., None])
    np.testing.assert_array_equal(load_case(tmp_path).image[2], modality_volume(2))


def test_affine_within_tolerance_accepted(tmp_path: Path) -> None:
    # Real BraTS files: -0.0 vs 0.0 and float32-rounded matrices between modalities.
    paths = write_case(tmp_path, "2023")
    nudged = AFFINE.copy()
    nudged[0, 1] = -0.0
    nudged[1, 3] += 2e-4
    write_nifti(paths["flair"], modality_volume(3), nudged.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(load_case(tmp_path).affine, AFFINE, atol=1e-6)


def test_progress_reports_each_file(tmp_path: Path) -> None:
    write_case(tmp_path, "2020")
    calls: list[tuple[float, str]] = []
    load_case(tmp_path, progress=lambda f, m: calls.append((f, m)))
    fractions = [f for f, _ in calls]
    assert len(calls) == 5 and fractions == sorted(fractions) and fractions[-1] == 1.0


# --------------------------------------------------------------------------- validation errors


def _gzip_bytes(data: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(data, AFFINE, make_header()).to_bytes())


def _write_raw(path: Path, raw: bytes) -> None:
    path.write_bytes(raw)


def _with(volume: np.ndarray, value: float) -> np.ndarray:
    volume = volume.copy()
    volume[3, 4, 5] = value
    return volume


def _mixed_3_and_4() -> np.ndarray:
    return np.where(internal_labels() == 1, 4, stored_labels("2023")).astype(np.uint8)


def _shifted_affine() -> np.ndarray:
    moved = AFFINE.copy()
    moved[0, 3] += 0.5
    return moved


# key to corrupt -> (how to corrupt it, expected message fragment)
CORRUPTIONS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "not a nifti": ("t1ce", lambda p: _write_raw(p, b"this is text, not an image" * 30), "not a NIfTI"),
    "truncated gzip": ("t2", lambda p: _write_raw(p, _gzip_bytes(modality_volume(2))[:300]), "truncated"),
    "2D": ("flair", lambda p: write_nifti(p, modality_volume(3)[:, :, 0]), "2D image"),
    "4D": ("t1", lambda p: write_nifti(p, np.stack([modality_volume(0)] * 2, axis=-1)), "4D image"),
    "shape": ("t2", lambda p: write_nifti(p, modality_volume(2)[:, :, :6]), "differs from"),
    "affine": ("flair", lambda p: write_nifti(p, modality_volume(3), _shifted_affine()), "affine"),
    "nan": ("t1ce", lambda p: write_nifti(p, _with(modality_volume(1), np.nan)), "NaN"),
    "inf": ("t1", lambda p: write_nifti(p, _with(modality_volume(0), -np.inf)), "Inf"),
    "all zero": ("t2", lambda p: write_nifti(p, np.zeros(SHAPE, np.float32)), "every voxel is 0"),
    "seg unknown label": ("seg", lambda p: write_nifti(p, stored_labels("2020") * 2), "unknown label"),
    "seg 3 and 4": ("seg", lambda p: write_nifti(p, _mixed_3_and_4()), "3 and 4"),
    "seg fractional": ("seg", lambda p: write_nifti(p, stored_labels("2023") * np.float32(0.5)), "unknown label"),
    "seg shape": ("seg", lambda p: write_nifti(p, stored_labels("2020")[:10]), "differs from"),
    "seg affine": ("seg", lambda p: write_nifti(p, stored_labels("2020"), _shifted_affine()), "affine"),
}


@pytest.mark.parametrize("problem", list(CORRUPTIONS))
def test_validation_error_names_the_file(tmp_path: Path, problem: str) -> None:
    key, corrupt, fragment = CORRUPTIONS[problem]
    paths = write_case(tmp_path, "2020")
    corrupt(paths[key])
    with pytest.raises(CaseError) as info:
        load_case(tmp_path)
    message = str(info.value)
    assert message.startswith(paths[key].name), message  # names the offending file first
    assert fragment in message
    assert " - " in message or "; " in message  # says what to do


@pytest.mark.parametrize("problem", ["not a nifti", "seg unknown label", "affine"])
def test_validation_errors_from_bytes_name_the_file(tmp_path: Path, problem: str) -> None:
    key, corrupt, fragment = CORRUPTIONS[problem]
    paths = write_case(tmp_path, "2023")
    corrupt(paths[key])
    with pytest.raises(CaseError, match=fragment) as info:
        load_case_from_bytes({p.name: p.read_bytes() for p in paths.values()})
    assert str(info.value).startswith(paths[key].name)


# --------------------------------------------------------------------------- bytes and zip


@pytest.mark.parametrize("compress", [True, False])
def test_load_case_from_bytes(tmp_path: Path, compress: bool) -> None:
    paths = write_case(tmp_path, "2023", ext=".nii.gz" if compress else ".nii")
    files = {f"some/dir/{p.name}": p.read_bytes() for p in paths.values()}
    files["notes.txt"] = b"ignored"
    case = load_case_from_bytes(files, name="patient-7")
    np.testing.assert_array_equal(case.image, expected_image())
    np.testing.assert_array_equal(case.seg, internal_labels())
    assert case.name == "patient-7" and case.naming == "2023"
    assert case.files["t1"] == paths["t1"].name


def test_load_case_from_bytes_missing_modality() -> None:
    with pytest.raises(CaseError, match="missing t1, t1ce, t2"):
        load_case_from_bytes({"x_flair.nii.gz": b"", "x_seg.nii.gz": b""}, name="up")


def _zip(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buffer.getvalue()


@pytest.fixture()
def case_entries(tmp_path: Path) -> dict[str, bytes]:
    paths = write_case(tmp_path / "src", "2020")
    return {p.name: p.read_bytes() for p in paths.values()}


@pytest.fixture()
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Route tempfile into a folder of our own to check that zip loading leaves nothing there."""
    folder = tmp_path / "tempdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.mark.parametrize("prefix, expected_name", [("", "upload"), ("Case01/", "Case01")])
def test_load_case_from_zip_bytes(
    case_entries: dict[str, bytes], private_tmp: Path, prefix: str, expected_name: str
) -> None:
    entries = {prefix + k: v for k, v in case_entries.items()}
    entries["__MACOSX/._Case01_t1.nii.gz"] = b"junk"
    if prefix:
        entries[prefix] = b""  # folder entry
    case = load_case_from_zip(_zip(entries))
    np.testing.assert_array_equal(case.image, expected_image())
    np.testing.assert_array_equal(case.seg, internal_labels())
    assert case.name == expected_name and case.naming == "2020"
    assert list(private_tmp.iterdir()) == []  # temporary folder removed


def test_load_case_from_zip_path(case_entries: dict[str, bytes], tmp_path: Path) -> None:
    path = tmp_path / "BraTS_x.zip"
    path.write_bytes(_zip(case_entries))
    assert load_case_from_zip(path).name == "BraTS_x"


@pytest.mark.parametrize(
    "evil, symlink",
    [
        ("../escaped_t1.nii.gz", None),
        ("Case01/../../escaped.nii.gz", None),
        ("/tmp/escaped.nii.gz", None),
        ("..\\escaped.nii.gz", None),
        (None, "Case01_link.nii.gz"),
    ],
)
def test_zip_slip_rejected(
    case_entries: dict[str, bytes], private_tmp: Path, tmp_path: Path, evil: str | None, symlink: str | None
) -> None:
    entries = dict(case_entries)
    if evil:
        entries[evil] = b"payload"
    with pytest.raises(CaseError, match="unsafe") as info:
        load_case_from_zip(_zip(entries, symlink=symlink))
    assert (evil or symlink) in str(info.value)
    assert list(private_tmp.iterdir()) == []
    assert not list(tmp_path.parent.glob("escaped*")) and not Path("/tmp/escaped.nii.gz").exists()


def test_zip_size_cap(case_entries: dict[str, bytes], private_tmp: Path) -> None:
    with pytest.raises(CaseError, match="limit"):
        load_case_from_zip(_zip(case_entries), max_bytes=1000)
    assert list(private_tmp.iterdir()) == []


def test_zip_with_understated_sizes_rejected(case_entries: dict[str, bytes], private_tmp: Path) -> None:
    """A zip bomb that understates its sizes passes the up-front check, then fails as corrupt."""
    raw = bytearray(_zip(case_entries))
    real_total = sum(len(v) for v in case_entries.values())
    start = 0
    while (start := raw.find(b"PK\x01\x02", start)) >= 0:  # central directory: uncompressed size at +24
        struct.pack_into("<I", raw, start + 24, 100)
        start += 4
    with pytest.raises(CaseError, match="Case01_.*corrupt"):
        load_case_from_zip(bytes(raw), max_bytes=real_total // 2)
    assert list(private_tmp.iterdir()) == []


def test_zip_errors(case_entries: dict[str, bytes]) -> None:
    with pytest.raises(CaseError, match="not a readable zip"):
        load_case_from_zip(b"PK but not really a zip")
    with pytest.raises(CaseError, match="several folders"):
        load_case_from_zip(_zip({"a/" + k: v for k, v in case_entries.items()} | {"b/x_t1.nii": b"1"}))
    with pytest.raises(CaseError, match="no .nii"):
        load_case_from_zip(_zip({"readme.txt": b"hello"}))
    partial = {k: v for k, v in case_entries.items() if "_t2" not in k}
    with pytest.raises(CaseError, match="^uploaded zip: missing t2"):
        load_case_from_zip(_zip(partial))
    broken = dict(case_entries)
    broken["Case01_t2.nii.gz"] = broken["Case01_t2.nii.gz"][:200]
    with pytest.raises(CaseError, match=r"^Case01_t2\.nii\.gz.*truncated"):
        load_case_from_zip(_zip(broken))


# --------------------------------------------------------------------------- writing


def _case() -> Case:
    return Case(expected_image(), AFFINE.copy(), make_header(), seg=internal_labels(), name="Case01")


@pytest.mark.parametrize("naming, et_value", [("2020", 4), ("2023", 3)])
def test_save_case_round_trip(tmp_path: Path, naming: str, et_value: int) -> None:
    folder = save_case(_case(), tmp_path, naming=naming, name="Out7")
    assert folder == tmp_path / "Out7"
    expected = sorted(NAMES[naming][k].format("Out7") + ".nii.gz" for k in (*MODALITIES, "seg"))
    assert sorted(p.name for p in folder.iterdir()) == expected
    seg_file = nib.load(folder / (NAMES[naming]["seg"].format("Out7") + ".nii.gz"))
    assert seg_file.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(seg_file.dataobj), stored_labels(naming))
    assert et_value in np.unique(np.asarray(seg_file.dataobj))
    t1_file = nib.load(folder / (NAMES[naming]["t1"].format("Out7") + ".nii.gz"))
    assert t1_file.get_data_dtype() == np.float32
    for image in (seg_file, t1_file):
        np.testing.assert_allclose(image.affine, AFFINE, atol=1e-6)
        assert image.header["descrip"] == b"case test" and int(image.header["sform_code"]) == 1
    back = load_case(folder)
    np.testing.assert_array_equal(back.image, expected_image())
    np.testing.assert_array_equal(back.seg, internal_labels())
    assert back.naming == naming and back.label_convention == naming and back.spacing == SPACING


@pytest.mark.parametrize("naming", ["2020", "2023"])
def test_cases_zip_holds_what_save_case_writes(tmp_path: Path, naming: str) -> None:
    folder = save_case(_case(), tmp_path, naming=naming, name="A")
    data = cases_zip((c for c in (_case(), _case())), naming, names=["A", "B"])  # a generator is enough
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = sorted(zf.namelist())
        assert members == sorted(f"{n}/{p.name.replace('A', n, 1)}" for n in "AB" for p in folder.iterdir())
        for file in folder.iterdir():
            written = nib.Nifti1Image.from_bytes(gzip.decompress(zf.read(f"A/{file.name}")))
            on_disk = nib.load(file)
            np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(on_disk.dataobj))
            np.testing.assert_allclose(written.affine, on_disk.affine, atol=1e-6)
            assert written.get_data_dtype() == on_disk.get_data_dtype()
    back = load_case_from_zip(cases_zip([_case()], naming), name=None)
    np.testing.assert_array_equal(back.seg, internal_labels())
    with pytest.raises(CaseError, match="folder name"):
        cases_zip([_case()], naming, names=["../x"])


def test_save_case_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="naming"):
        save_case(_case(), tmp_path, naming="plain")
    with pytest.raises(CaseError, match="folder name"):
        save_case(_case(), tmp_path, name="../x")


@pytest.mark.parametrize("convention", ["2020", "2023"])
def test_save_label_map_and_bytes(tmp_path: Path, convention: str) -> None:
    path = save_label_map(tmp_path / "pred.nii.gz", internal_labels(), AFFINE, make_header(), convention)
    from_disk = nib.load(path)
    raw = label_map_bytes(internal_labels(), AFFINE, make_header(), convention)
    from_bytes = nib.Nifti1Image.from_bytes(gzip.decompress(raw))
    for image in (from_disk, from_bytes):
        assert image.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asarray(image.dataobj), stored_labels(convention))
        np.testing.assert_allclose(image.affine, AFFINE, atol=1e-6)
        assert image.header["descrip"] == b"case test"


def test_save_label_map_rejects_stored_values(tmp_path: Path) -> None:
    with pytest.raises(CaseError, match="0..3"):
        save_label_map(tmp_path / "x.nii.gz", stored_labels("2020"), AFFINE, make_header(), "2020")


# --------------------------------------------------------------------------- real data


def test_load_real_case_matches_nibabel(real_root: Path) -> None:
    folder = real_root / "BraTS-GLI-demo-0001"
    start = time.perf_counter()
    case = load_case(folder)
    seconds = time.perf_counter() - start
    assert case.image.shape == (4, 240, 240, 155) and case.image.dtype == np.float32
    assert case.naming == "2023" and case.label_convention == "2023"
    t2f = nib.load(folder / "BraTS-GLI-demo-0001-t2f.nii.gz")
    np.testing.assert_array_equal(case.modality("flair"), np.asarray(t2f.dataobj, dtype=np.float32))
    np.testing.assert_allclose(case.affine, t2f.affine, atol=1e-6)
    seg = np.asarray(nib.load(folder / "BraTS-GLI-demo-0001-seg.nii.gz").dataobj)
    np.testing.assert_array_equal(case.seg, seg)
    assert seconds < 30  # generous: the shared CI machine is slow; ~1-3 s when idle
