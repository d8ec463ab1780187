"""core.io.nifti: reading paths and bytes, clear errors, writing that keeps affine and header."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from core.io.nifti import NiftiError, nifti_bytes, read_nifti, save_nifti

SHAPE = (12, 10, 8)
AFFINE = np.array([[-1.0, 0, 0, 3.0], [0, -1.0, 0, 9.0], [0, 0, 1.5, -2.0], [0, 0, 0, 1]])


def make_header() -> nib.Nifti1Header:
    """A header with non-default fields a writer could lose."""
    hdr = nib.Nifti1Header()
    hdr.set_qform(AFFINE, code=1)
    hdr.set_sform(AFFINE, code=2)
    hdr["descrip"] = b"brats-studio test header"
    hdr.set_xyzt_units("mm", "sec")
    hdr["pixdim"][4] = 2.5  # TR: not part of the 3D grid, must survive anyway
    return hdr


def volume(dtype: type = np.float32) -> np.ndarray:
    return (np.random.default_rng(0).random(SHAPE) * 100).astype(dtype)


def write_reference(path: Path, data: np.ndarray) -> Path:
    """Write with plain nibabel (independent of the code under test)."""
    nib.save(nib.Nifti1Image(data, AFFINE, make_header()), path)
    return path


def assert_same_geometry(header: nib.Nifti1Header, affine: np.ndarray) -> None:
    src = make_header()
    np.testing.assert_allclose(affine, AFFINE, atol=1e-6)
    assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 2
    np.testing.assert_allclose(header["pixdim"][1:4], src["pixdim"][1:4])
    assert header["descrip"] == src["descrip"]
    assert header.get_xyzt_units() == ("mm", "sec")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_read_path_and_bytes_agree(tmp_path: Path, suffix: str) -> None:
    data = volume(np.int16)
    path = write_reference(tmp_path / f"x{suffix}", data)
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b" if suffix == ".nii.gz" else raw[:2] != b"\x1f\x8b"
    for image in (read_nifti(path), read_nifti(raw, "x"), read_nifti(str(path))):
        assert isinstance(image.dataobj, np.ndarray)  # fully loaded, no lazy proxy
        np.testing.assert_array_equal(np.asarray(image.dataobj), data)
        assert_same_geometry(image.header, image.affine)


def test_read_is_fully_loaded(tmp_path: Path) -> None:
    path = write_reference(tmp_path / "x.nii.gz", volume())
    image = read_nifti(path)
    path.unlink()
    assert float(np.asarray(image.dataobj).sum()) == pytest.approx(float(volume().sum()), rel=1e-5)


def test_gzip_magic_decides_not_the_name(tmp_path: Path) -> None:
    path = write_reference(tmp_path / "x.nii", volume())
    misnamed = tmp_path / "misnamed.nii.gz"
    misnamed.write_bytes(path.read_bytes())  # uncompressed bytes under a .gz name
    np.testing.assert_array_equal(np.asarray(read_nifti(misnamed).dataobj), volume())


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    raw = write_reference(tmp_path / "x.nii.gz", volume()).read_bytes()
    with pytest.raises(NiftiError, match=r"brain_t1\.nii\.gz.*truncated"):
        read_nifti(raw[: len(raw) // 2], "brain_t1.nii.gz")


def test_truncated_plain_nifti_names_the_file(tmp_path: Path) -> None:
    raw = write_reference(tmp_path / "x.nii", volume()).read_bytes()
    bad = tmp_path / "cut.nii"
    bad.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(NiftiError, match=r"(?s)cut\.nii.*truncated"):
        read_nifti(bad)


@pytest.mark.parametrize("payload", [b"", b"not an image at all" * 40, gzip.compress(b"hello" * 200)])
def test_not_a_nifti_names_the_file(payload: bytes) -> None:
    with pytest.raises(NiftiError, match="scan.nii.gz") as info:
        read_nifti(payload, "scan.nii.gz")
    assert "NIfTI" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NiftiError, match="nothing.nii.gz"):
        read_nifti(tmp_path / "nothing.nii.gz")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_save_round_trip_keeps_affine_and_header(tmp_path: Path, suffix: str) -> None:
    header = make_header()
    before = header.binaryblock
    data = volume(np.float64)
    out = save_nifti(tmp_path / "sub" / f"out{suffix}", data, AFFINE, header, dtype=np.float32)
    assert out.exists() and sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temp file left
    image = nib.load(out)
    assert image.get_data_dtype() == np.float32
    np.testing.assert_allclose(image.get_fdata(), data, rtol=1e-6)
    assert_same_geometry(image.header, image.affine)
    assert image.header["pixdim"][4] == pytest.approx(2.5)  # unused pixdims survive too
    assert header.binaryblock == before  # the caller's header is copied, not mutated


def test_save_new_affine_keeps_codes(tmp_path: Path) -> None:
    shifted = AFFINE.copy()
    shifted[:3, 3] += [1.0, -2.0, 0.5]
    image = nib.load(save_nifti(tmp_path / "x.nii.gz", volume(), shifted, make_header()))
    np.testing.assert_allclose(image.affine, shifted, atol=1e-6)
    np.testing.assert_allclose(image.header.get_qform(), shifted, atol=1e-5)
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 2


def test_save_without_header_stores_affine(tmp_path: Path) -> None:
    image = nib.load(save_nifti(tmp_path / "x.nii", volume(), AFFINE, None))
    np.testing.assert_allclose(image.affine, AFFINE, atol=1e-6)
    assert int(image.header["sform_code"]) > 0
    assert image.header.get_zooms() == pytest.approx((1.0, 1.0, 1.5))


@pytest.mark.parametrize("data, expected", [(volume() > 50, np.uint8), (volume(np.int64), np.int32)])
def test_save_default_dtypes(tmp_path: Path, data: np.ndarray, expected: type) -> None:
    image = nib.load(save_nifti(tmp_path / "x.nii.gz", data, AFFINE, make_header()))
    assert image.get_data_dtype() == expected
    np.testing.assert_array_equal(np.asarray(image.dataobj), data.astype(expected))


def test_save_rejects_other_extensions(tmp_path: Path) -> None:
    with pytest.raises(NiftiError, match=r"\.nii"):
        save_nifti(tmp_path / "x.mgz", volume(), AFFINE, make_header())


def test_nifti_bytes_is_a_gzipped_nifti_with_geometry() -> None:
    labels = (volume() > 60).astype(np.uint8) * 2
    raw = nifti_bytes(labels, AFFINE, make_header(), dtype=np.uint8)
    assert raw[:2] == b"\x1f\x8b"
    image = nib.Nifti1Image.from_bytes(gzip.decompress(raw))
    assert image.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(image.dataobj), labels)
    assert_same_geometry(image.header, image.affine)
