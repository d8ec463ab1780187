"""Read and write one NIfTI-1 volume, keeping its affine and header.

Like nnU-Net v2's ``NibabelIO``: the reader returns the image with its geometry untouched
(no reorientation), the writer puts the source affine *and* header back (pixdim, qform/sform
codes, units, description), so a written file overlays its source exactly in any viewer.

Sources may be a path or the raw bytes of a ``.nii`` / ``.nii.gz`` file (an upload); gzip is
recognised by its magic number, not by the name.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import nibabel as nib
import numpy as np
from nibabel.volumeutils import apply_read_scaling
from numpy.typing import DTypeLike

PathLike = str | os.PathLike
GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_HEADER_SIZE = 348
NIFTI1_MAGIC = b"n+1\x00"
# NIfTI has no 64-bit-safe story in most viewers: store these as the 32-bit type when values fit.
_NARROWER = {np.dtype(np.int64): np.dtype(np.int32), np.dtype(np.uint64): np.dtype(np.uint32)}
# gzip level of written files: BraTS volumes are big, level 1 is ~5x faster than 6 for a few % more size.
COMPRESS_LEVEL = 1
try:  # ISA-L's gzip decoder (python-isal): 0.16 s instead of 0.86 s for a BraTS case's four volumes (README)
    from isal import igzip as _gunzip
    from isal.isal_zlib import error as _isal_error

    GZIP_ERRORS: tuple[type[Exception], ...] = (EOFError, zlib.error, gzip.BadGzipFile, _isal_error)
except ImportError:  # the standard library's zlib: same results, slower
    _gunzip = gzip  # type: ignore[assignment]
    GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


class NiftiError(ValueError):
    """A file is not a readable NIfTI-1 volume (the message names the file and the fix)."""


# Limits checked from the header before any voxel is read (see README "What input is accepted").
MAX_VOXELS = 2**25  # 33.5 M voxels per 3D volume (BraTS 240x240x155 = 8.9 M; 320^3 = 32.8 M)
MAX_VOLUMES = 64  # 4D+ files: volumes per file (read_nifti without volume_3d)
MAX_HEADER_BYTES = 1 << 20  # header + extensions (vox_offset) larger than this is a damaged header
_CHUNK = 1 << 22
_SCALAR_KINDS = "iuf"
BinarySource = PathLike | bytes | bytearray | memoryview | BinaryIO


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


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    """Up to ``size`` bytes (fewer only at the end of the stream)."""
    parts, left = [], size
    while left > 0:
        part = stream.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _read_into(stream: BinaryIO, buffer: np.ndarray) -> int:
    """Fill the uint8 ``buffer`` from ``stream``; returns the number of bytes read."""
    view, done = memoryview(buffer).cast("B"), 0
    while done < len(view):
        n = stream.readinto(view[done : done + _CHUNK]) if hasattr(stream, "readinto") else None
        if n is None:  # a stream without readinto
            part = stream.read(min(_CHUNK, len(view) - done))
            n = len(part)
            view[done : done + n] = part
        if not n:
            break
        done += n
    return done


def _dtype_problem(header: nib.Nifti1Header, dtype: np.dtype) -> str | None:
    """Why voxels of ``dtype`` cannot be used as a scalar image, or ``None``."""
    if dtype.kind in _SCALAR_KINDS and dtype.fields is None and dtype.itemsize <= 8:
        return None
    code = str(header.get_value_label("datatype"))
    what = {"RGB": "colour (RGB) voxels", "RGBA": "colour (RGBA) voxels", "complex": "complex-valued voxels"}
    kind = next((text for key, text in what.items() if key.lower() in code.lower()), f"{code} voxels")
    return (f"stores {kind} (NIfTI datatype {code}), not one scalar intensity per voxel; convert it to a "
            "greyscale int16/float32 volume (e.g. nibabel: take one channel or the magnitude) and save it again.")


def describe_shape(shape: tuple[int, ...]) -> str:
    """``240 x 240 x 155`` for a shape tuple (error messages print plain ints, never numpy scalars)."""
    return " x ".join(str(int(s)) for s in shape)


def _spatial_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape without trailing singleton dimensions beyond the third."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def check_volume_shape(shape: tuple[int, ...], name: str) -> None:
    """Raise ``NiftiError`` unless ``shape`` is one 3D volume (trailing singleton dimensions allowed).

    The 4D message names the Medical Segmentation Decathlon layout (all modalities in one file).
    """
    spatial = _spatial_shape(shape)
    if len(spatial) < 3 or sum(s > 1 for s in spatial[:3]) < 3:
        dims = min(len(spatial), sum(s > 1 for s in spatial[:3]))
        raise NiftiError(
            f"{name}: {dims}D image of shape {spatial}; each modality must be a 3D volume (X, Y, Z) - "
            "export the whole volume, not a single slice."
        )
    if len(spatial) > 3:
        msd = (" (several images in one file, like the Medical Segmentation Decathlon's BrainTumour 4D files "
               "ordered FLAIR, T1w, T1gd, T2w)" if len(spatial) == 4 and spatial[3] in (2, 3, 4) else "")
        raise NiftiError(
            f"{name}: {len(spatial)}D image of shape {spatial}{msd}; each file must hold one 3D volume - "
            "split it into one file per modality (e.g. fslsplit, or nibabel slicing)."
        )


def _parse_header(head: bytes, name: str) -> nib.Nifti1Header:
    try:
        return nib.Nifti1Header.from_fileobj(io.BytesIO(head))
    except Exception:  # noqa: BLE001 - damaged extensions: keep the 348-byte header, drop them
        try:
            return nib.Nifti1Header.from_fileobj(io.BytesIO(head[:NIFTI1_HEADER_SIZE]))
        except Exception as exc:  # noqa: BLE001 - nibabel raises several types for bad fields
            raise NiftiError(f"{name}: the NIfTI header is damaged ({exc}); export the image again.") from exc


def _check_geometry(header: nib.Nifti1Header, name: str) -> np.ndarray:
    """The affine nibabel uses for ``header``; ``NiftiError`` when it is not finite or not invertible."""
    try:
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    except Exception as exc:  # noqa: BLE001
        raise NiftiError(f"{name}: the header's voxel-to-world transform is damaged ({exc}); "
                         "fix the qform/sform (e.g. copy them from a co-registered file) and save again.") from exc
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        zooms = describe_zooms(affine)
        raise NiftiError(f"{name}: the header's voxel-to-world transform is degenerate (voxel size {zooms} mm, "
                         "NaN or zero); fix pixdim/qform/sform (e.g. copy them from a co-registered file) and "
                         "save again.")
    return affine


def describe_zooms(affine: np.ndarray) -> str:
    """Voxel size of an affine as ``1 x 1 x 1.5`` (column norms, 3 significant digits)."""
    norms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return " x ".join(f"{float(z):.3g}" for z in norms)


GEOMETRY_TOLERANCE_MM = 1e-3  # qform vs sform, pixdim vs affine: differences below this are rounding


def header_warnings(header: nib.Nifti1Header, name: str) -> list[str]:
    """Inconsistencies of a header's geometry that do not stop reading it (one sentence each).

    nibabel (and this project) place the voxels with the sform when its code is set, else the
    qform: volumes and outputs follow that affine. A qform that disagrees with the sform, or a
    pixdim that disagrees with the affine used, means other tools may place or measure the image
    differently.
    """
    notes = []
    try:
        qform, qcode = header.get_qform(coded=True)
        sform, scode = header.get_sform(coded=True)
        used = header.get_best_affine()
    except Exception:  # noqa: BLE001 - read_nifti has rejected unusable headers already
        return notes
    if qcode and scode:
        diff = float(np.max(np.abs(qform - sform)))
        if diff > GEOMETRY_TOLERANCE_MM:
            notes.append(f"{name}: the qform and sform of the header disagree by up to {diff:.3g} mm; the sform is "
                         "used (as nibabel does) and both are written back unchanged - tools that read the qform "
                         "place the image elsewhere, so fix the header (e.g. set the qform from the sform).")
    zooms = np.asarray(header.get_zooms()[:3], dtype=np.float64)
    norms = np.linalg.norm(np.asarray(used, dtype=np.float64)[:3, :3], axis=0)
    if np.any(np.abs(zooms - norms) > GEOMETRY_TOLERANCE_MM * np.maximum(norms, 1.0)):
        which = "sform" if scode else "qform"
        notes.append(f"{name}: pixdim says {' x '.join(f'{float(z):.3g}' for z in zooms)} mm voxels but the "
                     f"{which} (the transform used) has {describe_zooms(used)} mm; volumes are computed from the "
                     f"{which} - fix pixdim or the {which} if that is wrong.")
    return notes


class _Source:
    """An opened binary source with its name and (when known) total size in bytes."""

    def __init__(self, source: BinarySource, name: str | None) -> None:
        self.owned = False
        self.size: int | None = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.name = name or "<bytes>"
            self.stream: BinaryIO = io.BytesIO(source)
            self.size = len(source)
        elif hasattr(source, "read"):
            self.name = name or str(getattr(source, "name", "<stream>"))
            self.stream = source  # type: ignore[assignment]
        else:
            path = Path(source)
            self.name = name or path.name
            try:
                self.stream = open(path, "rb")  # noqa: SIM115 - closed by close()
            except FileNotFoundError as exc:
                if path.is_symlink():
                    raise NiftiError(f"{self.name}: symbolic link to {os.readlink(path)} is broken (its target does "
                                     "not exist); copy the real file there or fix the link.") from exc
                raise NiftiError(f"{self.name}: file not found at {path}; check the path.") from exc
            except IsADirectoryError as exc:
                raise NiftiError(f"{self.name}: is a folder, not a NIfTI file; pass the .nii/.nii.gz file.") from exc
            except PermissionError as exc:
                raise NiftiError(f"{self.name}: permission denied reading {path}; make the file readable.") from exc
            except OSError as exc:
                if path.is_symlink():
                    raise NiftiError(f"{self.name}: symbolic link to {os.readlink(path)} cannot be followed ({exc}); "
                                     "copy the real file there or fix the link.") from exc
                raise NiftiError(f"{self.name}: cannot open {path} ({exc}); check the path.") from exc
            self.owned = True
            self.size = os.fstat(self.stream.fileno()).st_size

    def close(self) -> None:
        if self.owned:
            self.stream.close()


def read_nifti(source: BinarySource, name: str | None = None, *, max_voxels: int = MAX_VOXELS,
               volume_3d: bool = False) -> nib.Nifti1Image:
    """Read a ``.nii``/``.nii.gz`` file (path, bytes or binary stream) into a fully loaded image.

    The header is read and checked first; voxels are read only when the header is sound, into one
    buffer of the size the header states (gzip is decompressed incrementally and never past that
    size, so a gzip bomb or a header that claims a huge volume costs no memory).

    The returned image holds its voxels in memory (no open file, no lazy proxy) with the
    file's own dtype after scl_slope/scl_inter scaling, and the file's affine and header.

    Args:
        source: file path, the file's bytes (gzip-compressed or not), or an open binary stream.
        name: name used in error messages (default: the file name, or ``"<bytes>"``).
        max_voxels: largest number of voxels per 3D volume accepted (checked from the header).
        volume_3d: also reject (from the header) anything but one 3D volume.

    Raises:
        NiftiError: missing file, truncated or corrupt gzip, not a NIfTI-1 file, unsupported voxel type
            (RGB, complex), a volume above ``max_voxels``, a degenerate affine, or data shorter than the
            header says.
    """
    src = _Source(source, name)
    name = src.name
    try:
        return _read_open(src, name, max_voxels, volume_3d)
    finally:
        src.close()


def _read_open(src: _Source, name: str, max_voxels: int, volume_3d: bool) -> nib.Nifti1Image:
    stream = src.stream
    try:
        magic = stream.read(2)
        compressed = magic == GZIP_MAGIC
        if compressed:
            reader: BinaryIO = _gunzip.GzipFile(fileobj=_Prefixed(magic, stream), mode="rb")  # type: ignore[assignment]
        else:
            reader = _Prefixed(magic, stream)  # type: ignore[assignment]
        head = _read_up_to(reader, NIFTI1_HEADER_SIZE + 4)
        _check_header(head, name)
        header = _parse_header(head, name)
        offset = int(header["vox_offset"])
        if offset < NIFTI1_HEADER_SIZE + 4:
            offset = NIFTI1_HEADER_SIZE + 4  # 0 (unset) or too low: the data follow the header, as in nibabel
        if offset > MAX_HEADER_BYTES:
            raise NiftiError(f"{name}: the header puts the voxels at byte {offset} (vox_offset), beyond "
                             f"{MAX_HEADER_BYTES}; the header is damaged - export the image again.")
        if offset > len(head):
            head += _read_up_to(reader, offset - len(head))
            if len(head) < offset:
                raise NiftiError(f"{name}: the file ends inside the header extensions; it is truncated - "
                                 "copy/export it again.")
            header = _parse_header(head, name)
        try:
            shape = tuple(int(s) for s in header.get_data_shape())
            dtype = header.get_data_dtype()
        except Exception as exc:  # noqa: BLE001 - HeaderDataError and friends
            raise NiftiError(f"{name}: the header's dimensions or data type are invalid ({exc}); the header is "
                             "damaged - export the image again.") from exc
        problem = _dtype_problem(header, dtype)
        if problem:
            raise NiftiError(f"{name}: {problem}")
        if volume_3d:
            check_volume_shape(shape, name)
        if not shape or min(shape) <= 0:
            raise NiftiError(f"{name}: the header says shape {shape}, which holds no voxels; export the image "
                             "again.")
        spatial, volumes = math.prod(shape[:3]), math.prod(shape[3:])  # Python ints: no overflow
        if volumes > MAX_VOLUMES:
            raise NiftiError(f"{name}: the header says shape {describe_shape(shape)}: {volumes} volumes in one file, "
                             f"more than {MAX_VOLUMES}; save one 3D volume per file (or the header is damaged).")
        if spatial > max_voxels:
            raise NiftiError(
                f"{name}: the header says {describe_shape(shape)} voxels ({spatial * volumes / 1e6:.4g} M, "
                f"{spatial * volumes * dtype.itemsize / 1e9:.3g} GB), more than the limit of {max_voxels / 1e6:.3g} M "
                f"voxels per volume (a BraTS volume is 240 x 240 x 155 = 8.9 M); crop/resample the image to about "
                "1 mm, or the header is damaged."
            )
        affine = _check_geometry(header, name)
        nbytes = spatial * volumes * dtype.itemsize
        if not compressed and src.size is not None and src.size < offset + nbytes:
            raise NiftiError(
                f"{name}: the file has {src.size} bytes but its header says {describe_shape(shape)} {dtype.name} "
                f"voxels need {offset + nbytes}; it is truncated - copy/export it again."
            )
        buffer = np.empty(nbytes, dtype=np.uint8)  # untouched pages cost no memory until filled
        got = _read_into(reader, buffer)
    except GZIP_ERRORS as exc:
        raise NiftiError(
            f"{name}: the gzip stream is truncated or corrupt ({exc}); the upload or copy was probably "
            "interrupted - copy/upload the file again."
        ) from exc
    if got < nbytes:
        raise NiftiError(
            f"{name}: the data end after {got} of {nbytes} bytes of {describe_shape(shape)} {dtype.name} voxels; "
            "the file is truncated - copy/export it again."
        )
    array = np.ndarray(shape, dtype=dtype, buffer=buffer, order="F")
    if not dtype.isnative:
        array = array.byteswap().view(dtype.newbyteorder("="))
    array = _scaled(array, header, name)
    return nib.Nifti1Image(array, affine, header)


def _scaled(array: np.ndarray, header: nib.Nifti1Header, name: str) -> np.ndarray:
    """Apply scl_slope / scl_inter as nibabel does (no scaling when slope is 0 or NaN)."""
    try:
        slope, inter = header.get_slope_inter()
    except Exception as exc:  # noqa: BLE001 - inf slope/intercept
        raise NiftiError(f"{name}: invalid intensity scaling in the header ({exc}); set scl_slope/scl_inter "
                         "to finite values (or 0 for none) and save again.") from exc
    if slope is None or (slope == 1.0 and (inter or 0.0) == 0.0):
        return array
    return apply_read_scaling(array, slope, inter)


class _Prefixed(io.RawIOBase):
    """A read-only stream that yields ``prefix`` and then the rest of ``stream`` (un-reads a peek)."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        super().__init__()
        self._prefix = prefix
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if self._prefix:
            n = min(len(self._prefix), len(view))
            view[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        if hasattr(self._stream, "readinto"):
            return self._stream.readinto(view) or 0
        part = self._stream.read(len(view))
        view[: len(part)] = part
        return len(part)


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
    data: shape, dtype, scaling (recomputed on write). When ``affine`` is the header's own (the
    transform nibabel reads from it: sform, else qform), qform, sform and pixdim are kept exactly as in
    the source, even where they disagree with each other; otherwise the *codes* are kept and both
    transforms set to ``affine``. A header without codes gets code 1 (scanner) so the affine is stored.
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
    own = header is not None and (qcode, scode) == (int(hdr["qform_code"]), int(hdr["sform_code"])) and \
        _same_affine(hdr, affine)
    pixdim = hdr["pixdim"].copy()
    hdr.set_data_shape(data.shape)
    hdr["pixdim"][data.ndim + 1 :] = pixdim[data.ndim + 1 :]  # nibabel resets unused pixdims to 1
    if own:
        hdr["pixdim"][: data.ndim + 1] = pixdim[: data.ndim + 1]
    hdr.set_data_dtype(out_dtype)
    hdr.set_slope_inter(np.nan, np.nan)
    if own:
        affine = hdr.get_best_affine()  # exactly the header's, so nibabel leaves qform/sform alone
    else:
        hdr.set_qform(affine, code=qcode)
        hdr.set_sform(affine, code=scode)
    return nib.Nifti1Image(data, affine, hdr)


def _same_affine(header: nib.Nifti1Header, affine: np.ndarray) -> bool:
    """True when ``affine`` is the transform nibabel reads from ``header`` (to float32 precision)."""
    try:
        return bool(np.allclose(header.get_best_affine(), affine, rtol=0, atol=1e-5))
    except Exception:  # noqa: BLE001 - a damaged header: write the affine given
        return False


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
