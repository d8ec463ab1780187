"""Read and write one NIfTI-1 volume, keeping its affine and header.

Like nnU-Net v2's ``NibabelIO``: the reader returns the image with its geometry untouched
(no reorientation), the writer puts the source affine *and* header back (pixdim, qform/sform
codes, units, description), so a written file overlays its source exactly in any viewer.

Sources may be a path or the raw bytes of a ``.nii`` / ``.nii.gz`` file (an upload); gzip is
recognised by its magic number, not by the name.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError, ImageDataError
from numpy.typing import DTypeLike

PathLike = str | os.PathLike
GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_HEADER_SIZE = 348
NIFTI1_MAGIC = b"n+1\x00"
# NIfTI has no 64-bit-safe story in most viewers: store these as the 32-bit type when values fit.
_NARROWER = {np.dtype(np.int64): np.dtype(np.int32), np.dtype(np.uint64): np.dtype(np.uint32)}
# gzip level of written files: BraTS volumes are big, level 1 is ~5x faster than 6 for a few % more size.
COMPRESS_LEVEL = 1


class NiftiError(ValueError):
    """A file is not a readable NIfTI-1 volume (the message names the file and the fix)."""


def _decompress(data: bytes, name: str) -> bytes:
    """Gunzip ``data`` if it starts with the gzip magic number."""
    if not data.startswith(GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as exc:
        raise NiftiError(
            f"{name}: the gzip stream is truncated or corrupt ({exc}); the upload or copy was probably "
            "interrupted - copy/upload the file again."
        ) from exc


def _check_header(raw: bytes, name: str) -> None:
    """Raise ``NiftiError`` unless ``raw`` starts with a single-file NIfTI-1 header."""
    if len(raw) < NIFTI1_HEADER_SIZE:
        raise NiftiError(
            f"{name}: only {len(raw)} bytes, too short for a NIfTI header; the file is empty or truncated - "
            "provide the complete .nii/.nii.gz file."
        )
    sizes = {struct.unpack(f"{order}i", raw[:4])[0] for order in "<>"}
    if 540 in sizes:
        raise NiftiError(f"{name}: this is a NIfTI-2 file; convert it to NIfTI-1 (e.g. with nibabel) first.")
    if NIFTI1_HEADER_SIZE not in sizes:
        raise NiftiError(
            f"{name}: not a NIfTI file (no NIfTI-1 header); provide the .nii or .nii.gz volume itself "
            "(DICOM series must be converted first, e.g. with dcm2niix)."
        )
    if raw[344:348] != NIFTI1_MAGIC:
        raise NiftiError(
            f"{name}: header/image pair (.hdr/.img) or Analyze file, not a single-file NIfTI; "
            "convert it to one .nii/.nii.gz file (e.g. nib.save(nib.load('x.hdr'), 'x.nii.gz'))."
        )


def read_nifti(source: PathLike | bytes, name: str | None = None) -> nib.Nifti1Image:
    """Read a ``.nii``/``.nii.gz`` file or its bytes into a fully loaded image.

    The returned image holds its voxels in memory (no open file, no lazy proxy) with the
    file's own dtype after scl_slope/scl_inter scaling, and the file's affine and header.

    Args:
        source: file path, or the file's bytes (gzip-compressed or not).
        name: name used in error messages (default: the file name, or ``"<bytes>"``).

    Raises:
        NiftiError: missing file, truncated gzip, not a NIfTI-1 file, or data shorter than the header says.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "<bytes>"
        data = bytes(source)
    else:
        path = Path(source)
        name = name or path.name
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise NiftiError(f"{name}: file not found at {path}; check the path.") from exc
        except IsADirectoryError as exc:
            raise NiftiError(f"{name}: is a folder, not a NIfTI file; pass the .nii/.nii.gz file.") from exc
    raw = _decompress(data, name)
    del data
    _check_header(raw, name)
    try:
        lazy = nib.Nifti1Image.from_bytes(raw)
        array = np.asanyarray(lazy.dataobj)
    except (OSError, ValueError, EOFError, HeaderDataError, ImageDataError, ImageFileError) as exc:
        raise NiftiError(
            f"{name}: cannot read the voxel data ({exc}); the file is truncated or damaged - "
            "copy/export it again."
        ) from exc
    return nib.Nifti1Image(array, lazy.affine, lazy.header)


def _output_dtype(data: np.ndarray, dtype: DTypeLike | None) -> np.dtype:
    """Dtype to store ``data`` as: ``dtype`` if given, else the array's (bool -> uint8, 64-bit int -> 32-bit)."""
    if dtype is not None:
        return np.dtype(dtype)
    if data.dtype == np.bool_:
        return np.dtype(np.uint8)
    narrow = _NARROWER.get(data.dtype)
    if narrow is None:
        return data.dtype
    info = np.iinfo(narrow)
    if data.size and (data.min() < info.min or data.max() > info.max):
        raise NiftiError(f"{data.dtype} values do not fit {narrow}; pass dtype= explicitly (e.g. np.float32).")
    return narrow


def build_image(
    data: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
    dtype: DTypeLike | None = None,
) -> nib.Nifti1Image:
    """A ``Nifti1Image`` of ``data`` with ``affine`` and a copy of ``header``.

    The header keeps everything (pixdim, units, descrip, intent, ...) except what must follow the
    data: shape, dtype, scaling (recomputed on write). Its qform/sform *codes* are kept and both
    transforms set to ``affine``; a header without codes gets code 1 (scanner) so the affine is stored.
    """
    data = np.asanyarray(data)
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    out_dtype = _output_dtype(data, dtype)
    if header is None:
        hdr = nib.Nifti1Header()
        qcode = scode = 1
    else:
        hdr = header.copy() if isinstance(header, nib.Nifti1Header) else nib.Nifti1Header.from_header(header)
        qcode, scode = int(hdr["qform_code"]), int(hdr["sform_code"])
        if qcode == 0 and scode == 0:
            qcode = scode = 1
    affine = np.asarray(affine, dtype=np.float64)
    pixdim = hdr["pixdim"].copy()
    hdr.set_data_shape(data.shape)
    hdr["pixdim"][data.ndim + 1 :] = pixdim[data.ndim + 1 :]  # nibabel resets unused pixdims to 1
    hdr.set_data_dtype(out_dtype)
    hdr.set_slope_inter(np.nan, np.nan)
    hdr.set_qform(affine, code=qcode)
    hdr.set_sform(affine, code=scode)
    return nib.Nifti1Image(data, affine, hdr)


def _nifti_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return suffix
    raise NiftiError(f"{path.name}: output name must end with .nii or .nii.gz.")


def save_nifti(
    path: PathLike,
    data: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
    dtype: DTypeLike | None = None,
) -> Path:
    """Write ``data`` as ``.nii`` or ``.nii.gz`` (chosen by the name) keeping affine and header.

    The file is written to a temporary name first and renamed, so a crash never leaves a
    half-written volume under the final name.

    Args:
        path: output file, ending in ``.nii`` or ``.nii.gz``; parent folders are created.
        data: 3D array (any numeric dtype; bool is stored as uint8).
        affine: ``(4, 4)`` voxel-to-world matrix (usually the source file's).
        header: source header to copy (see ``build_image``); ``None`` for a fresh one.
        dtype: on-disk dtype (default: the array's).

    Returns:
        The written path.
    """
    path = Path(path)
    suffix = _nifti_suffix(path)
    image = build_image(data, affine, header, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name[: -len(suffix)]}.tmp{os.getpid()}{suffix}")
    try:
        image.to_filename(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _gzip(raw: bytes) -> bytes:
    """Deterministic (mtime 0) fast gzip."""
    return gzip.compress(raw, compresslevel=COMPRESS_LEVEL, mtime=0)


def nifti_bytes(
    data: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None = None,
    dtype: DTypeLike | None = None,
) -> bytes:
    """The bytes of a ``.nii.gz`` file of ``data`` (for downloads); same rules as ``save_nifti``."""
    return _gzip(build_image(data, affine, header, dtype).to_bytes())
