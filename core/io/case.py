"""A BraTS case: four co-registered MRI modalities and an optional segmentation.

Like a TorchIO ``Subject``: one object holds the named images, their geometry and where
they came from. Channel order is fixed: ``MODALITIES = ("t1", "t1ce", "t2", "flair")``.

This module also finds a case's files by name (BraTS 2020/2021, BraTS 2023 or plain names),
loads and validates a case from a folder, uploaded bytes or a zip, and writes BraTS case
folders and label maps that keep the source affine and header. Every problem with the input
is a ``CaseError`` whose message names the offending file and says how to fix it.
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import nibabel as nib
import numpy as np

from core.io.labels import CONVENTIONS, check_convention, detect_convention, from_internal, to_internal
from core.io.nifti import NiftiError, check_volume_shape, header_warnings, nifti_bytes, read_nifti, save_nifti
from core.io.orientation import axcodes, onto_grid

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")


@dataclass
class Case:
    """Four modalities on one grid plus an optional label map.

    Attributes:
        image: float32 array ``(4, X, Y, Z)``, channels in ``MODALITIES`` order.
        affine: ``(4, 4)`` voxel-to-world matrix of the reference (t1) file.
        header: copy of the reference NIfTI header (written back on save).
        seg: uint8 ``(X, Y, Z)`` internal labels 0..3 (see ``core.io.labels``), or ``None``.
        label_convention: convention of the source segmentation file (``"2020"``/``"2023"``) or ``None``.
        files: source file name per modality (and ``"seg"``).
        naming: how the files were named: ``"2020"``, ``"2023"``, ``"plain"`` or ``None`` (in memory).
        name: case identifier (usually the folder name).
        warnings: problems found while loading that did not stop it (header inconsistencies, ...),
            one sentence each, naming the file.
    """

    image: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    seg: np.ndarray | None = None
    label_convention: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    naming: str | None = None
    name: str = "case"
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(X, Y, Z)``."""
        return tuple(int(s) for s in self.image.shape[1:])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm of the affine actually used (column norms), not the header's pixdim.

        They agree in a consistent header; where they do not, the affine is what places the voxels
        in the world (and what viewers use), so volumes computed from it are the true ones.
        """
        return affine_spacing(self.affine)

    def modality(self, name: str) -> np.ndarray:
        """One modality volume ``(X, Y, Z)`` by name (``"t1"``, ``"t1ce"``, ``"t2"``, ``"flair"``)."""
        return self.image[MODALITIES.index(name)]


def affine_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm of a ``(4, 4)`` voxel-to-world matrix (norms of its first three columns)."""
    norms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    return tuple(float(round(z, 6)) for z in norms)  # type: ignore[return-value]


# --------------------------------------------------------------------------- errors & names


class CaseError(ValueError):
    """A case cannot be used as given; the message names the offending file and the fix."""


SEG = "seg"
NAMINGS: tuple[str, ...] = ("2020", "2023", "plain")
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
AFFINE_TOLERANCE_MM = 1e-3
MAX_ZIP_BYTES = 2 * 1024**3  # a BraTS case is ~300 MB uncompressed even stored as float64
MAX_ZIP_ENTRIES = 256  # a case zip holds 4-5 NIfTI files (plus macOS/__MACOSX clutter)
FLOAT32_MAX = float(np.finfo(np.float32).max)
Progress = Callable[[float, str], None]

# File-name token -> (modality, naming). The token is what follows the last "_", "-", "." or
# space of the name without extension; a name that *is* a token is "plain" naming.
_TOKENS: dict[str, tuple[str, str]] = {
    "t1": ("t1", "2020"),
    "t1ce": ("t1ce", "2020"),
    "t2": ("t2", "2020"),
    "flair": ("flair", "2020"),
    "t1n": ("t1", "2023"),
    "t1c": ("t1ce", "2023"),
    "t2w": ("t2", "2023"),
    "t2f": ("flair", "2023"),
    SEG: (SEG, "2020"),  # "-seg" is 2023 naming, see identify_file
}
# Suffix written per naming and modality (save_case).
SUFFIXES: dict[str, dict[str, str]] = {
    "2020": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", SEG: "_seg"},
    "2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", SEG: "-seg"},
}
_NAMING_HELP = (
    "name the files <case>_t1/_t1ce/_t2/_flair[/_seg] (BraTS 2020/2021), <case>-t1n/-t1c/-t2w/-t2f[/-seg] "
    "(BraTS 2023) or t1/t1ce/t2/flair[/seg], each .nii or .nii.gz"
)


def _base_name(file_name: str | os.PathLike) -> str:
    """Last path component of a file name that may use / or \\ separators."""
    return str(file_name).replace("\\", "/").rsplit("/", 1)[-1]


def _strip_nifti_suffix(name: str) -> str | None:
    low = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if low.endswith(suffix) and len(low) > len(suffix):
            return low[: -len(suffix)]
    return None


def identify_file(file_name: str | os.PathLike) -> tuple[str, str] | None:
    """Modality key and naming of a case file name, or ``None`` for an unrelated file.

    Matches on the last name token only, so ``x_t1`` is t1 while ``x_t1ce`` is t1ce, and ``t2`` is
    never confused with ``t2f``/``t2w``. Letter case is ignored; hidden files (``._x_t1.nii``) are unrelated.

    Returns:
        ``(key, naming)`` with key in ``MODALITIES`` or ``"seg"`` and naming ``"2020"``, ``"2023"`` or ``"plain"``.
    """
    name = _base_name(file_name)
    stem = None if name.startswith(".") else _strip_nifti_suffix(name)
    if stem is None:
        return None
    cut = max(stem.rfind(sep) for sep in "_-. ")
    token = stem[cut + 1 :]
    if token not in _TOKENS:
        return None
    key, naming = _TOKENS[token]
    if cut < 0:
        naming = "plain"
    elif key == SEG and stem[cut] == "-":
        naming = "2023"
    return key, naming


def case_naming(files: Mapping[str, str | os.PathLike]) -> str | None:
    """Naming convention of a case's files: the most common among them (``None`` if none is recognised)."""
    found = [ident[1] for f in files.values() if (ident := identify_file(f)) is not None]
    if not found:
        return None
    return max(NAMINGS, key=lambda n: (found.count(n), -NAMINGS.index(n)))


def _match_files(names: Sequence[str], where: str) -> dict[str, str]:
    """Pick the file name of each modality (and the optional seg) among ``names``."""
    found: dict[str, list[str]] = {}
    ignored: list[str] = []
    for name in names:
        ident = identify_file(name)
        if ident is None:
            if _strip_nifti_suffix(_base_name(name)) is not None:
                ignored.append(name)
            continue
        found.setdefault(ident[0], []).append(name)
    duplicates = {key: group for key, group in found.items() if len(group) > 1}
    if duplicates:
        listed = "; ".join(f"{key}: {', '.join(group)}" for key, group in duplicates.items())
        raise CaseError(
            f"{where}: more than one file per modality ({listed}); keep exactly one file per modality "
            "(one case per folder, not both a .nii and a .nii.gz copy)."
        )
    missing = [m for m in MODALITIES if m not in found]
    if missing:
        have = ", ".join(f"{k}={v[0]}" for k, v in found.items()) or "none"
        extra = f"; unrecognised NIfTI files: {', '.join(ignored[:8])}" if ignored else ""
        raise CaseError(f"{where}: missing {', '.join(missing)} (recognised: {have}{extra}); {_NAMING_HELP}.")
    return {key: group[0] for key, group in found.items()}


def find_case_files(folder: str | os.PathLike) -> dict[str, Path]:
    """The four modality files (and the segmentation if present) of a case folder.

    Recognises BraTS 2020/2021 (``_t1 _t1ce _t2 _flair _seg``), BraTS 2023 (``-t1n -t1c -t2w -t2f
    -seg``) and plain names (``t1``, ``t1ce``/``t1c``, ``t2``, ``flair``, ``seg``), ``.nii``/``.nii.gz``,
    any letter case; other files are ignored. ``case_naming`` tells which naming was found.

    Returns:
        ``{"t1": path, "t1ce": path, "t2": path, "flair": path[, "seg": path]}``.

    Raises:
        CaseError: not a folder, a modality missing, or two files for one modality.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CaseError(f"{folder}: not a folder; pass the case folder that holds the four modality files.")
    try:
        entries = sorted(folder.iterdir())
    except PermissionError as exc:
        raise CaseError(f"{folder}: permission denied listing the folder; make it readable.") from exc
    for entry in entries:
        if entry.is_symlink() and identify_file(entry.name) is not None and not entry.is_file():
            _raise_bad_link(entry)
    names = [p.name for p in entries if p.is_file()]
    return {key: folder / name for key, name in _match_files(names, str(folder)).items()}


def _raise_bad_link(link: Path) -> None:
    """``CaseError`` for a case file that is a symbolic link to nothing usable (names the link and its target)."""
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    try:
        link.resolve(strict=True)
        what = "points to a folder, not a file" if link.is_dir() else "points to something that is not a file"
    except RuntimeError:
        what = "is part of a symbolic-link loop"
    except OSError:
        what = "is broken (its target does not exist)"
    raise CaseError(f"{link.name}: symbolic link to {target} {what}; copy the real file into {link.parent} or "
                    "fix the link.")


# --------------------------------------------------------------------------- validation


def _as_3d(data: np.ndarray, file_name: str) -> np.ndarray:
    """Drop trailing singleton dimensions; raise unless a 3D volume remains."""
    try:
        check_volume_shape(data.shape, file_name)
    except NiftiError as exc:
        raise CaseError(str(exc)) from exc
    while data.ndim > 3:
        data = data[..., 0]
    return data


def _modality_volume(data: np.ndarray, file_name: str) -> np.ndarray:
    """A modality as float32 after checking it is finite, fits float32 and is not constant."""
    data = _as_3d(data, file_name)
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not finite.all():
            bad = int(data.size - np.count_nonzero(finite))
            raise CaseError(
                f"{file_name}: {bad} voxels are NaN or Inf; replace them (e.g. numpy.nan_to_num) and save the "
                "file again."
            )
        del finite
    lo, hi = float(data.min()), float(data.max())
    if max(abs(lo), abs(hi)) > FLOAT32_MAX:
        raise CaseError(
            f"{file_name}: values from {lo:.4g} to {hi:.4g} do not fit 32-bit floats (|x| <= {FLOAT32_MAX:.3g}); "
            "rescale the intensities (e.g. to 0..10000) and save the file again."
        )
    if lo == hi:
        if lo == 0:
            raise CaseError(
                f"{file_name}: every voxel is 0 (empty volume); the export failed or the wrong file was picked - "
                "export this modality again."
            )
        raise CaseError(
            f"{file_name}: every voxel is {lo:g} (constant volume, no image); the export failed or the wrong file "
            "was picked - export this modality again."
        )
    return data.astype(np.float32, copy=False)


def _seg_labels(data: np.ndarray, file_name: str) -> tuple[np.ndarray, str | None]:
    """Internal uint8 labels and the detected convention of a stored segmentation."""
    data = _as_3d(data, file_name)
    if data.dtype.kind == "f" and np.isfinite(data).all():
        lo, hi = float(data.min()), float(data.max())
        if lo >= 0 and hi <= 255 and np.array_equal(data, np.rint(data)):
            data = data.astype(np.uint8)  # integral float labels: use the fast integer path
    try:
        convention = detect_convention(data)
        return to_internal(data, convention or "2023"), convention
    except ValueError as exc:
        raise CaseError(
            f"{file_name}: {exc}. A BraTS segmentation holds only 0/1/2/4 (2020) or 0/1/2/3 (2023) - if this is a "
            "probability map or another label scheme, convert it (argmax / relabel) and save it again."
        ) from exc


@dataclass
class _Volume:
    """One checked file: its data (float32 image or internal labels) and geometry."""

    file_name: str
    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    convention: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _ZipMember:
    """A NIfTI entry of an open zip archive, read by streaming (never extracted to disk)."""

    archive: zipfile.ZipFile
    info: zipfile.ZipInfo
    label: str


Source = str | os.PathLike | bytes | _ZipMember


def _read(source: Source, file_name: str) -> nib.Nifti1Image:
    """``read_nifti`` of a path, bytes or zip entry, as a ``CaseError`` on failure."""
    try:
        if isinstance(source, _ZipMember):
            with source.archive.open(source.info) as stream:
                return read_nifti(stream, name=file_name, volume_3d=True)
        return read_nifti(source, name=file_name, volume_3d=True)
    except NiftiError as exc:
        raise CaseError(str(exc)) from exc
    except MemoryError:
        raise
    except NotImplementedError as exc:  # e.g. Deflate64 or zstd entries
        label, entry = source.label, source.info.filename  # type: ignore[union-attr]
        raise CaseError(f"{label}: entry {entry} uses a compression method Python cannot read ({exc}); zip the case "
                        "folder again with standard deflate (zip -r).") from exc
    except Exception as exc:  # a damaged archive raises BadZipFile, zlib.error, EOFError, OSError, ValueError, ...
        if not isinstance(source, _ZipMember):
            raise
        raise CaseError(f"{source.label}: entry {source.info.filename} is corrupt ({type(exc).__name__}: {exc}); "
                        "upload/zip the case folder again.") from exc


def _load_one(key: str, file_name: str, source: Source) -> _Volume:
    """Read one file and run its own checks (runs in a worker thread)."""
    image = _read(source, file_name)
    data = np.asanyarray(image.dataobj)
    notes = header_warnings(image.header, file_name)
    if key == SEG:
        labels, convention = _seg_labels(data, file_name)
        return _Volume(file_name, labels, image.affine, image.header, convention, notes)
    return _Volume(file_name, _modality_volume(data, file_name), image.affine, image.header, warnings=notes)


def load_label_map(
    path: str | os.PathLike, warnings: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header, str | None]:
    """Read one label-map file (either BraTS convention) with the checks ``load_case`` runs on a seg file.

    Args:
        path: the label-map file.
        warnings: if given, header inconsistencies found are appended to it (one sentence each).

    Returns:
        ``(internal labels uint8 (X, Y, Z), affine, header, convention found or None)``.

    Raises:
        CaseError: not a NIfTI, truncated, not 3D, too large, or unknown label values (the message names the file).
    """
    volume = _load_one(SEG, Path(path).name, path)
    if warnings is not None:
        warnings.extend(volume.warnings)
    return volume.data, volume.affine, volume.header, volume.convention


def _check_same_grid(volume: _Volume, reference: _Volume) -> None:
    """Raise unless ``volume`` has the shape and affine of ``reference``."""
    if volume.data.shape != reference.data.shape:
        raise CaseError(
            f"{volume.file_name}: shape {volume.data.shape} differs from {reference.file_name} "
            f"{reference.data.shape}; all files of a case must share one voxel grid - resample/co-register it "
            f"onto the {reference.file_name} grid."
        )
    diff = float(np.max(np.abs(np.asarray(volume.affine, np.float64) - np.asarray(reference.affine, np.float64))))
    if diff > AFFINE_TOLERANCE_MM:
        raise CaseError(
            f"{volume.file_name}: affine (voxel-to-world matrix) differs from {reference.file_name} by up to "
            f"{diff:.3g} mm; the files are not co-registered - register/resample it onto the {reference.file_name} "
            "grid (same origin, spacing and orientation)."
        )


def _on_reference_grid(volume: _Volume, reference: _Volume) -> _Volume:
    """``volume`` on the grid of ``reference``: as is, or exactly flipped/permuted onto it (with a warning).

    Converters store the same grid in different voxel orders (RAS vs LPS); such a file is turned
    onto the reference grid without resampling. Anything else raises the grid mismatch ``CaseError``.
    """
    same_shape = volume.data.shape == reference.data.shape
    diff = float(np.max(np.abs(np.asarray(volume.affine, np.float64) - np.asarray(reference.affine, np.float64))))
    if same_shape and diff <= AFFINE_TOLERANCE_MM:
        return volume
    moved = onto_grid(volume.data, volume.affine, reference.affine, reference.data.shape, AFFINE_TOLERANCE_MM)
    if moved is None:
        _check_same_grid(volume, reference)  # raises the shape / affine message
    note = (f"{volume.file_name}: voxels stored in {axcodes(volume.affine)} order, {reference.file_name} in "
            f"{axcodes(reference.affine)}; it was flipped/permuted onto the {reference.file_name} grid (exact, same "
            "world positions, no resampling).")
    return replace(volume, data=np.ascontiguousarray(moved), affine=np.asarray(reference.affine),
                   warnings=[*volume.warnings, note])


def _load_sources(
    sources: Mapping[str, tuple[str, Source]],
    name: str,
    naming: str | None,
    progress: Progress | None = None,
) -> Case:
    """Read, validate and assemble a case from ``{key: (file name, path or bytes)}``.

    Files are read in parallel threads (gzip decoding releases the GIL), each exactly once.
    """
    keys = list(MODALITIES) + ([SEG] if SEG in sources else [])
    workers = max(1, min(len(keys), os.cpu_count() or 1))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="load_case")
    try:
        futures = {key: pool.submit(_load_one, key, *sources[key]) for key in keys}
        reference: _Volume | None = None
        image: np.ndarray | None = None
        seg: _Volume | None = None
        notes: list[str] = []
        for i, key in enumerate(keys):
            volume = futures.pop(key).result()
            if reference is None:
                image = np.empty((len(MODALITIES), *volume.data.shape), dtype=np.float32)
                image[0] = volume.data
                reference = replace(volume, data=image[0])  # keep geometry, not a second copy of the voxels
            else:
                volume = _on_reference_grid(volume, reference)
            notes.extend(volume.warnings)
            if key == SEG:
                seg = volume
            else:
                image[MODALITIES.index(key)] = volume.data
            del volume
            if progress is not None:
                progress((i + 1) / len(keys), f"loaded {sources[key][0]}")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    convention = None
    if seg is not None:  # only 0/1/2 in the file: both conventions agree, trust a BraTS file name
        seg_naming = identify_file(seg.file_name)
        convention = seg.convention or (seg_naming[1] if seg_naming and seg_naming[1] in CONVENTIONS else None)
    return Case(
        image=image,
        affine=np.asarray(reference.affine, dtype=np.float64).copy(),
        header=reference.header.copy(),
        seg=None if seg is None else seg.data,
        label_convention=convention,
        files={key: sources[key][0] for key in keys},
        naming=naming,
        name=name,
        warnings=notes,
    )


# --------------------------------------------------------------------------- loading


def load_case(folder: str | os.PathLike, progress: Progress | None = None) -> Case:
    """Load and validate a case folder (see ``find_case_files`` for the accepted names).

    Returns:
        A ``Case`` with float32 ``(4, X, Y, Z)`` image, internal-label seg (if present), t1 affine/header.

    Raises:
        CaseError: naming problems, unreadable files, 2D/4D data, grids that differ (shape or affine
            beyond 1e-3 mm), NaN/Inf, empty volumes, or unknown segmentation labels.
    """
    files = find_case_files(folder)
    sources = {key: (path.name, path) for key, path in files.items()}
    return _load_sources(sources, Path(folder).resolve().name, case_naming(files), progress)


def load_case_from_bytes(
    files: Mapping[str, bytes], name: str = "upload", progress: Progress | None = None
) -> Case:
    """Load a case from uploaded files ``{file name: bytes}`` (modality told by the file name).

    Same names and checks as ``load_case``; bytes may be gzip-compressed or not.
    """
    by_name = {_base_name(file_name): data for file_name, data in files.items()}
    matched = _match_files([_base_name(f) for f in files], f"upload {name!r}")
    sources = {key: (file_name, by_name[file_name]) for key, file_name in matched.items()}
    return _load_sources(sources, name, case_naming(matched), progress)


def _unsafe_member(info: zipfile.ZipInfo) -> bool:
    """True for entries that could land outside the extraction folder (zip-slip) or are links."""
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    is_link = stat.S_ISLNK(info.external_attr >> 16)
    return name.startswith("/") or (len(name) > 1 and name[1] == ":") or ".." in parts or is_link


def _is_case_member(info: zipfile.ZipInfo) -> bool:
    """NIfTI files outside ``__MACOSX`` and hidden folders."""
    parts = PurePosixPath(info.filename.replace("\\", "/")).parts
    if info.is_dir() or not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return _strip_nifti_suffix(parts[-1]) is not None


_EOCD = b"PK\x05\x06"


def _declared_entry_count(stream: BinaryIO) -> int | None:
    """Entry count of a zip's end-of-central-directory record, read from its tail before parsing the
    whole central directory (``None`` when not found or a ZIP64 archive: ``zipfile`` then counts)."""
    try:
        size = stream.seek(0, os.SEEK_END)
        tail_size = min(size, 65535 + 22)
        stream.seek(size - tail_size)
        tail = stream.read(tail_size)
        stream.seek(0)
    except (OSError, ValueError):
        return None
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) < at + 22:
        return None
    total = int.from_bytes(tail[at + 10 : at + 12], "little")
    return None if total == 0xFFFF else total


def _too_many_entries(label: str, count: int, limit: int) -> CaseError:
    return CaseError(f"{label}: {count} entries, more than the {limit} a case zip may hold; zip only one case "
                     "folder (its four modality files and the optional segmentation).")


def load_case_from_zip(
    source: str | os.PathLike | bytes,
    name: str | None = None,
    max_bytes: int = MAX_ZIP_BYTES,
    progress: Progress | None = None,
    max_entries: int = MAX_ZIP_ENTRIES,
) -> Case:
    """Load a case from a zip of its folder (files at the top or inside one folder).

    Nothing is extracted to disk: each NIfTI entry is streamed from the archive into memory with the
    checks of ``core.io.nifti.read_nifti`` (header first, so a header that claims a huge volume is
    rejected before its voxels are inflated), so no temporary file can be left behind whatever ends
    the process. Before any entry is read, the archive is rejected if it has more than
    ``max_entries`` entries (counted from its end record, before the central directory is parsed),
    if any entry could escape a folder (absolute path, ``..``, symlink), or if its NIfTI entries
    declare more than ``max_bytes`` in total; an entry that inflates past its declared size fails
    ``zipfile``'s CRC check and is reported corrupt.

    Args:
        source: path of the ``.zip`` or its bytes.
        name: case name (default: the folder inside the zip, else the zip's stem, else ``"upload"``).
        max_bytes: cap on the total declared uncompressed size of the NIfTI entries.
        progress: ``(fraction, message)`` callback, once per file read.
        max_entries: cap on the number of entries of the archive.

    Raises:
        CaseError: not a zip, too many entries, unsafe or encrypted entry, too big, NIfTI files in
            several folders, or any ``load_case`` problem.
    """
    in_memory = isinstance(source, (bytes, bytearray, memoryview))
    label = "uploaded zip" if in_memory else Path(source).name
    try:
        stream: BinaryIO = io.BytesIO(source) if in_memory else open(source, "rb")  # noqa: SIM115
    except OSError as exc:
        raise CaseError(f"{label}: cannot open the zip ({exc}); check the path.") from exc
    try:
        declared = _declared_entry_count(stream)
        if declared is not None and declared > max_entries:
            raise _too_many_entries(label, declared, max_entries)
        try:
            zf = zipfile.ZipFile(stream)
        except MemoryError:
            raise
        except Exception as exc:  # BadZipFile, OSError, ValueError, NotImplementedError (a damaged version field), ...
            raise CaseError(f"{label}: not a readable zip archive ({exc}); zip the case folder again.") from exc
        with zf:
            return _load_zip(zf, label, in_memory, name, max_bytes, max_entries, progress)
    finally:
        stream.close()


def _load_zip(
    zf: zipfile.ZipFile,
    label: str,
    in_memory: bool,
    name: str | None,
    max_bytes: int,
    max_entries: int,
    progress: Progress | None,
) -> Case:
    """Check the entries of an open archive, then stream its NIfTI entries into a case."""
    infos = zf.infolist()
    if len(infos) > max_entries:
        raise _too_many_entries(label, len(infos), max_entries)
    unsafe = [i.filename for i in infos if _unsafe_member(i)]
    if unsafe:
        raise CaseError(
            f"{label}: unsafe entries {', '.join(unsafe[:5])} (absolute path, '..' or link) would be written "
            "outside the extraction folder; the archive is rejected - zip the case folder again with a normal "
            "zip tool."
        )
    members = [i for i in infos if _is_case_member(i)]
    folders = sorted({str(PurePosixPath(i.filename.replace("\\", "/")).parent) for i in members})
    if not members:
        raise CaseError(f"{label}: no .nii/.nii.gz files inside; zip the case folder with its four modality files.")
    if len(folders) > 1:
        raise CaseError(
            f"{label}: NIfTI files in several folders ({', '.join(folders)}); zip one case folder only."
        )
    total = sum(i.file_size for i in members)
    if total > max_bytes:
        raise CaseError(
            f"{label}: unpacks to {total / 1e6:.0f} MB, more than the {max_bytes / 1e6:.0f} MB limit; "
            "zip only one case folder."
        )
    by_name = {_base_name(i.filename): i for i in members}
    matched = _match_files(sorted(_base_name(i.filename) for i in members), label)  # duplicates are reported
    for file_name in matched.values():
        if by_name[file_name].flag_bits & 0x1:
            raise CaseError(f"{label}: {by_name[file_name].filename} is password-protected; zip the case without "
                            "encryption.")
    inner = PurePosixPath(folders[0]).name
    if name is None:
        name = inner or ("upload" if in_memory else Path(label).stem)
    sources = {key: (file_name, _ZipMember(zf, by_name[file_name], label)) for key, file_name in matched.items()}
    return _load_sources(sources, name, case_naming(matched), progress)


# --------------------------------------------------------------------------- writing


def _label_header(header: nib.Nifti1Header | None) -> nib.Nifti1Header | None:
    """Copy of ``header`` without the MRI display window (cal_min/cal_max mean nothing for labels)."""
    if header is None:
        return None
    hdr = header.copy()
    hdr["cal_min"] = hdr["cal_max"] = 0
    return hdr


def _stored_labels(labels_internal: np.ndarray, convention: str) -> np.ndarray:
    try:
        return from_internal(labels_internal, convention)
    except ValueError as exc:
        raise CaseError(f"label map: {exc}; pass internal labels 0..3 (see core.io.labels).") from exc


def save_label_map(
    path: str | os.PathLike,
    labels_internal: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None,
    convention: str,
) -> Path:
    """Write an internal label map as uint8 in ``convention`` (``"2020"``: ET=4, ``"2023"``: ET=3).

    Keeps ``affine`` and ``header`` (see ``core.io.nifti.save_nifti``); ``.nii`` or ``.nii.gz`` by name.
    """
    stored = _stored_labels(labels_internal, check_convention(convention))
    return save_nifti(path, stored, affine, _label_header(header), dtype=np.uint8)


def label_map_bytes(
    labels_internal: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None, convention: str
) -> bytes:
    """``.nii.gz`` bytes of an internal label map stored in ``convention`` (for downloads)."""
    stored = _stored_labels(labels_internal, check_convention(convention))
    return nifti_bytes(stored, affine, _label_header(header), dtype=np.uint8)


PROBABILITY_INTENT = "P(WT,TC,ET)"  # intent_name of a region-probability map (16 characters at most)


def save_region_probabilities(
    path: str | os.PathLike, probabilities: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None
) -> Path:
    """Write region probabilities ``(X, Y, Z, 3)`` (WT, TC, ET in [0, 1]) as a 4D NIfTI on the case's grid.

    Stored as uint8 with a scale factor (``scl_slope``, about 1/255: readers that apply it, as nibabel, ITK-SNAP and
    3D Slicer do, get the probability to within 0.002) and the source ``affine`` and ``header``; the fourth axis is
    the region, named in ``intent_name`` (``PROBABILITY_INTENT``).

    Raises:
        CaseError: ``probabilities`` is not ``(X, Y, Z, 3)`` with values in [0, 1].
    """
    probs, hdr = _probability_map(probabilities, header)
    return save_nifti(path, probs, affine, hdr, dtype=np.uint8)


def region_probabilities_bytes(probabilities: np.ndarray, affine: np.ndarray,
                               header: nib.Nifti1Header | None) -> bytes:
    """``.nii.gz`` bytes of a region-probability map (as :func:`save_region_probabilities` writes it)."""
    probs, hdr = _probability_map(probabilities, header)
    return nifti_bytes(probs, affine, hdr, dtype=np.uint8)


def _probability_map(probabilities: np.ndarray, header: nib.Nifti1Header | None) -> tuple[np.ndarray, nib.Nifti1Header]:
    """Checked float32 ``(X, Y, Z, 3)`` probabilities and the header to store them with."""
    probs = np.asarray(probabilities, dtype=np.float32)
    if probs.ndim != 4 or probs.shape[-1] != 3:
        raise CaseError(f"region probabilities must be (X, Y, Z, 3) for WT, TC, ET, got shape {probs.shape}")
    if probs.size and not (np.isfinite(probs).all() and probs.min() >= 0.0 and probs.max() <= 1.0):
        raise CaseError("region probabilities must lie in [0, 1]; pass core.io.labels.region_probabilities of "
                        "a segmentation's class probabilities")
    hdr = _label_header(header) or nib.Nifti1Header()
    hdr["intent_code"] = 0
    hdr["intent_name"] = PROBABILITY_INTENT.encode()
    return probs, hdr


def case_file_name(name: str, key: str, naming: str) -> str:
    """BraTS file name of one modality (or ``"seg"``), e.g. ``("X", "t1ce", "2023") -> "X-t1c.nii.gz"``."""
    if naming not in SUFFIXES:
        raise ValueError(f"unknown naming {naming!r}; use '2020' or '2023'")
    return f"{name}{SUFFIXES[naming][key]}.nii.gz"


def _folder_name(name: str, naming: str) -> str:
    """``name`` checked as a case folder name (and ``naming`` as a file naming)."""
    if naming not in SUFFIXES:
        raise ValueError(f"unknown naming {naming!r}; use '2020' or '2023'")
    if not name or name in (".", "..") or any(c in name for c in "/\\"):
        raise CaseError(f"case name {name!r} cannot be a folder name; use letters, digits, '-' and '_'.")
    return name


def save_case(
    case: Case,
    out_dir: str | os.PathLike,
    naming: str = "2020",
    name: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write ``case`` as a BraTS case folder ``out_dir/name/`` and return that folder.

    Modalities are written float32, the segmentation (if any) uint8 with the label values of
    ``naming`` (2020: ET=4, 2023: ET=3); every file keeps the case's affine and header.

    Args:
        naming: ``"2020"`` (``name_t1.nii.gz`` ...) or ``"2023"`` (``name-t1n.nii.gz`` ...).
        name: case id used for the folder and file names (default ``case.name``).
    """
    name = _folder_name(name or case.name, naming)
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    steps = len(MODALITIES) + (case.seg is not None)
    for i, key in enumerate(MODALITIES):
        save_nifti(folder / case_file_name(name, key, naming), case.image[i], case.affine, case.header, np.float32)
        if progress is not None:
            progress((i + 1) / steps, f"wrote {key}")
    if case.seg is not None:
        save_label_map(folder / case_file_name(name, SEG, naming), case.seg, case.affine, case.header, naming)
        if progress is not None:
            progress(1.0, "wrote seg")
    return folder


def cases_zip(cases: Iterable[Case], naming: str = "2020", names: Sequence[str] | None = None) -> bytes:
    """A ``.zip`` of BraTS case folders, one per case, laid out and written as :func:`save_case` writes them.

    Built in memory (no temporary files); ``cases`` may be a generator (each case is encoded, then dropped).

    Args:
        naming: ``"2020"`` or ``"2023"``: file names and the label values of ``seg``.
        names: folder / case ids in order (default: each ``case.name``).
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:  # members are gzipped already
        for i, case in enumerate(cases):
            name = _folder_name(names[i] if names is not None else case.name, naming)
            for channel, key in enumerate(MODALITIES):
                zf.writestr(f"{name}/{case_file_name(name, key, naming)}",
                            nifti_bytes(case.image[channel], case.affine, case.header, np.float32))
            if case.seg is not None:
                zf.writestr(f"{name}/{case_file_name(name, SEG, naming)}",
                            label_map_bytes(case.seg, case.affine, case.header, naming))
    return buffer.getvalue()
