"""Generator of a corpus of bad and unusual inputs (issue 15), made at test time in a temporary folder.

Every entry is a small synthetic case folder (or zip, or mask file) written with plain nibabel, so
the files do not depend on the code under test. ``CASES`` maps an entry name to a builder
``(folder) -> Path`` and ``EXPECTED`` to what ``python -m core.info`` / ``core.segment`` must do with
it: ``("error", fragment)`` (exit status 2, one ``error:`` line on stderr naming the file) or
``("warning", fragment)`` (exit status 0 and a ``warning:`` line holding the fragment).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE = (32, 36, 28)
# The BraTS orientation (LPS, affine diag(-1, -1, 1)) with an origin of its own.
AFFINE = np.array([[-1.0, 0, 0, 20.0], [0, -1.0, 0, 30.0], [0, 0, 1.0, -10.0], [0, 0, 0, 1]])
MODALITIES = ("t1", "t1ce", "t2", "flair")
CASE = "Corpus01"


def file_name(key: str) -> str:
    """BraTS 2020 file name of a modality (or ``"seg"``) of the corpus case."""
    return f"{CASE}_{key}.nii.gz"


def brain_and_labels(shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoid brain and a layered tumour inside it (internal labels 0..3)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    brain = (grid**2).sum(axis=0) < 0.8
    r = np.sqrt(((grid - np.array([0.2, -0.1, 0.05])[:, None, None, None]) ** 2).sum(axis=0))
    labels = np.zeros(shape, np.uint8)
    labels[brain & (r < 0.4)] = 2
    labels[brain & (r < 0.28)] = 3
    labels[brain & (r < 0.15)] = 1
    return brain, labels


def image(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """float32 ``(4, X, Y, Z)``: smooth anatomy-like contrast per modality inside the brain, exactly 0 outside."""
    brain, labels = brain_and_labels(shape)
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    smooth = 80 * np.sin(3 * grid[0]) * np.cos(2 * grid[1]) + 40 * grid[2]
    means = np.array([[0, 0, 0, 0], [300, 200, 900, 700], [500, 450, 1100, 1200], [550, 1400, 800, 900]], float)
    out = means[labels].transpose(3, 0, 1, 2) + 600 + smooth[None] + rng.normal(0, 5, (4, *shape))
    return (out * brain).astype(np.float32)


def header(affine: np.ndarray = AFFINE) -> nib.Nifti1Header:
    hdr = nib.Nifti1Header()
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_xyzt_units("mm")
    return hdr


def write(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE, hdr: nib.Nifti1Header | None = None) -> Path:
    """Plain nibabel writer (independent of ``core.io.nifti``), storing ``data``'s own dtype."""
    hdr = header(affine) if hdr is None else hdr
    hdr.set_data_dtype(data.dtype)
    nib.save(nib.Nifti1Image(data, affine, hdr), path)
    return path


def write_case(folder: Path, volumes: np.ndarray | None = None, affine: np.ndarray = AFFINE,
               labels: np.ndarray | None = None, with_seg: bool = True) -> Path:
    """A BraTS-2020-named case folder of ``volumes`` (default :func:`image`) and the tumour labels (ET=4)."""
    folder.mkdir(parents=True, exist_ok=True)
    volumes = image() if volumes is None else volumes
    for i, key in enumerate(MODALITIES):
        write(folder / file_name(key), volumes[i], affine)
    if with_seg:
        seg = brain_and_labels(volumes.shape[1:])[1] if labels is None else labels
        write(folder / file_name("seg"), np.where(seg == 3, 4, seg).astype(np.uint8), affine)
    return folder


def huge_header_file(path: Path, shape: tuple[int, ...], dtype: type = np.float32, compress: bool = True) -> Path:
    """A few hundred bytes whose header claims ``shape`` voxels (the data are missing)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_qform(AFFINE, code=1)
    hdr.set_sform(AFFINE, code=1)
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + b"\0" * 4 + b"\0" * 1000
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def _replace(key: str, make: Callable[[Path], None]) -> Callable[[Path], Path]:
    """Builder of the good case with one file replaced by ``make(path)``."""

    def build(folder: Path) -> Path:
        write_case(folder)
        make(folder / file_name(key))
        return folder

    return build


def _with_image(change: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], Path]:
    """Builder of the good case with ``change`` applied to the whole ``(4, X, Y, Z)`` image."""
    return lambda folder: write_case(folder, change(image()))


def _rgb(path: Path) -> None:
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = 100
    nib.save(nib.Nifti1Image(rgb, AFFINE), path)


def _background(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(volumes: np.ndarray) -> np.ndarray:
        brain = brain_and_labels()[0]
        return np.where(brain[None], volumes, np.float32(value)).astype(np.float32)

    return change


def _noise(volumes: np.ndarray) -> np.ndarray:
    out = volumes.copy()
    out[2] = np.random.default_rng(5).uniform(1, 1000, SHAPE).astype(np.float32)
    return out


def _mask_as_modality(volumes: np.ndarray) -> np.ndarray:
    out = volumes.copy()
    out[1] = brain_and_labels()[0].astype(np.float32)
    return out


def _not_skull_stripped(volumes: np.ndarray) -> np.ndarray:
    head = np.random.default_rng(3).normal(40, 10, volumes.shape).astype(np.float32)  # noisy air and skull
    return np.where(volumes != 0, volumes, head)


def _qform_sform(folder: Path) -> Path:
    write_case(folder)
    for key in (*MODALITIES, "seg"):
        path = folder / file_name(key)
        img = nib.load(path)
        hdr = img.header.copy()
        moved = AFFINE.copy()
        moved[0, 3] += 5.0  # the qform 5 mm away from the sform
        hdr.set_qform(moved, code=1)
        hdr.set_sform(AFFINE, code=2)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, hdr), path)
    return folder


def _pixdim_sform(folder: Path) -> Path:
    """sform with 2 mm voxels, pixdim saying 1 mm (volumes must be 8x the pixdim ones)."""
    coarse = AFFINE @ np.diag([2.0, 2.0, 2.0, 1.0])
    write_case(folder, affine=coarse)
    for key in (*MODALITIES, "seg"):
        path = folder / file_name(key)
        img = nib.load(path)
        hdr = img.header.copy()
        hdr.set_qform(None, code=0)
        hdr["pixdim"][1:4] = 1.0
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, hdr), path)
    return folder


def _symlink(folder: Path) -> Path:
    write_case(folder)
    path = folder / file_name("t2")
    path.unlink()
    path.symlink_to(folder / "gone" / "t2.nii.gz")
    return folder


def _symlink_loop(folder: Path) -> Path:
    write_case(folder)
    path = folder / file_name("t1")
    path.unlink()
    path.symlink_to(folder / "loop_b")
    (folder / "loop_b").symlink_to(path)
    return folder


def _rotated(degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    rotation = np.array([[np.cos(t), -np.sin(t), 0, 0], [np.sin(t), np.cos(t), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    return rotation @ AFFINE


def _ras(folder: Path) -> Path:
    """Voxel axes 0 and 1 reversed (RAS), affine adjusted: the same brain in world space."""
    flip = np.array([[-1.0, 0, 0, SHAPE[0] - 1], [0, -1, 0, SHAPE[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
    return write_case(folder, image()[:, ::-1, ::-1].copy(), AFFINE @ flip,
                      brain_and_labels()[1][::-1, ::-1].copy())


def _one_file_ras(folder: Path) -> Path:
    """The t2 file (and the seg) stored in RAS voxel order, the others in LPS: the same grid in world space."""
    write_case(folder)
    flip = np.array([[-1.0, 0, 0, SHAPE[0] - 1], [0, -1, 0, SHAPE[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]])
    write(folder / file_name("t2"), image()[2][::-1, ::-1].copy(), AFFINE @ flip)
    seg = brain_and_labels()[1]
    write(folder / file_name("seg"), np.where(seg == 3, 4, seg).astype(np.uint8)[::-1, ::-1].copy(), AFFINE @ flip)
    return folder


def _mixed_dtypes(folder: Path) -> Path:
    write_case(folder)
    volumes = image()
    write(folder / file_name("t1"), np.rint(volumes[0]).astype(np.int16))
    write(folder / file_name("t2"), volumes[2].astype(np.float64))
    scaled = nib.Nifti1Image(np.rint(volumes[3] / 4).astype(np.int16), AFFINE, header())
    scaled.header.set_data_dtype(np.int16)
    scaled.header.set_slope_inter(4.0, 0.0)
    nib.save(scaled, folder / file_name("flair"))
    return folder


def _msd_4d(folder: Path) -> Path:
    write_case(folder)
    write(folder / file_name("t1"), np.moveaxis(image(), 0, -1))
    return folder


# name -> builder of the case folder
CASES: dict[str, Callable[[Path], Path]] = {
    "good": write_case,
    "rgb24 modality": _replace("t1ce", _rgb),
    "header claims 2000^3": _replace("t1", lambda p: huge_header_file(p, (2000, 2000, 2000))),
    "header claims 1000^3 int16": _replace("flair", lambda p: huge_header_file(p, (1000, 1000, 1000), np.int16)),
    "truncated data": _replace("t2", lambda p: huge_header_file(p, (64, 64, 64), compress=False)),
    "constant modality": _replace("t2", lambda p: write(p, np.full(SHAPE, 5.0, np.float32))),
    "values beyond float32": _replace("t1", lambda p: write(p, image()[0].astype(np.float64) * 1e300)),
    "nan": _replace("t1", lambda p: write(p, np.where(image()[0] > 900, np.nan, image()[0]).astype(np.float32))),
    "4D MSD file": _msd_4d,
    "broken symlink": _symlink,
    "background -1000": _with_image(_background(-1000.0)),
    "background -3.4e38": _with_image(_background(float(np.finfo(np.float32).min))),
    "pure noise modality": _with_image(_noise),
    "mask saved as a modality": _with_image(_mask_as_modality),
    # 4 mm voxels: a head-sized field of view (128 x 144 x 112 mm), or the checks would call it a crop first
    "not skull-stripped": lambda folder: write_case(folder, _not_skull_stripped(image()),
                                                    affine=AFFINE @ np.diag([4.0, 4.0, 4.0, 1.0])),
    "qform != sform": _qform_sform,
    "pixdim != sform": _pixdim_sform,
    "2 mm voxels": lambda folder: write_case(folder, affine=AFFINE @ np.diag([2.0, 2.0, 2.0, 1.0])),
    "5 mm slices": lambda folder: write_case(folder, affine=AFFINE @ np.diag([1.0, 1.0, 5.0, 1.0])),
    "oblique 30 degrees": lambda folder: write_case(folder, affine=_rotated(30.0)),
    "RAS orientation": _ras,
    "int16, float64 and scaled int16 files": _mixed_dtypes,
    "one file in RAS order": _one_file_ras,
    "same file for two modalities": _replace("t2", lambda p: write(p, image()[0])),
    "single slice": _replace("flair", lambda p: write(p, image()[3][:, :, 10:11])),
    "NIfTI-2 file": _replace("t1ce", lambda p: nib.save(nib.Nifti2Image(image()[1], AFFINE), p)),
    "empty file": _replace("t2", lambda p: p.write_bytes(b"")),
    "text named .nii.gz": _replace("t1", lambda p: p.write_text("patient notes, not an image\n" * 20)),
    "symlink loop": _symlink_loop,
    "seg label 255": _replace("seg", lambda p: write(p, (brain_and_labels()[1] > 0).astype(np.uint8) * 255)),
    "seg with 3 and 4": _replace("seg", lambda p: write(p, np.where(brain_and_labels()[1] == 1, 4,
                                                                    brain_and_labels()[1]).astype(np.uint8))),
}

# name -> (level, fragment) of ``core.info``; "ok" entries load with the crop warning only
ERROR, WARNING = "error", "warning"
EXPECTED_INFO: dict[str, tuple[str, str]] = {
    "good": (WARNING, "this is not a whole-brain volume like BraTS"),
    "rgb24 modality": (ERROR, f"{file_name('t1ce')}: stores colour (RGB) voxels"),
    "header claims 2000^3": (ERROR, f"{file_name('t1')}: the header says 2000 x 2000 x 2000 voxels (8000 M, 32 GB)"),
    "header claims 1000^3 int16": (ERROR, f"{file_name('flair')}: the header says 1000 x 1000 x 1000 voxels"),
    "truncated data": (ERROR, f"{file_name('t2')}: the file has 1352 bytes but its header says 64 x 64 x 64 float32 "
                              "voxels need 1048928; it is truncated"),
    "constant modality": (ERROR, f"{file_name('t2')}: every voxel is 5 (constant volume, no image)"),
    "values beyond float32": (ERROR, f"{file_name('t1')}: values from 0 to "),
    "nan": (ERROR, f"{file_name('t1')}: "),
    "4D MSD file": (ERROR, f"{file_name('t1')}: 4D image of shape (32, 36, 28, 4) (several images in one file, like "
                           "the Medical Segmentation Decathlon"),
    "broken symlink": (ERROR, f"{file_name('t2')}: symbolic link to "),
    "background -1000": (WARNING, f"{file_name('t1')}: the background is -1000 (the dominant value on the volume "
                                  "border), not 0"),
    "background -3.4e38": (WARNING, f"{file_name('t1')}: the background is -3.40282e+38"),
    "pure noise modality": (WARNING, f"{file_name('t2')}: neighbouring voxels are uncorrelated"),
    "mask saved as a modality": (WARNING, f"{file_name('t1ce')}: constant (1) inside the brain"),
    "not skull-stripped": (WARNING, f"{CASE}: no uniform background on the border of {file_name('t1')}"),
    "qform != sform": (WARNING, f"{file_name('t1')}: the qform and sform of the header disagree by up to 5 mm"),
    "pixdim != sform": (WARNING, f"{file_name('t1')}: pixdim says 1 x 1 x 1 mm voxels but the sform (the transform "
                                 "used) has 2 x 2 x 2 mm; volumes are computed from the sform"),
    "seg with 3 and 4": (ERROR, f"{file_name('seg')}: labels 3 and 4 both present"),
    "2 mm voxels": (WARNING, f"{CASE}: voxel size 2 x 2 x 2 mm; the models were trained on 1 mm voxels"),
    "5 mm slices": (WARNING, f"{CASE}: voxel size 1 x 1 x 5 mm; the models were trained on 1 mm voxels"),
    "oblique 30 degrees": (WARNING, f"{CASE}: the voxel axes are rotated 30 degrees from the world axes"),
    "RAS orientation": (WARNING, "this is not a whole-brain volume like BraTS"),
    "int16, float64 and scaled int16 files": (WARNING, "this is not a whole-brain volume like BraTS"),
    "one file in RAS order": (WARNING, f"{file_name('t2')}: voxels stored in RAS order, {file_name('t1')} in LPS; it "
                                       f"was flipped/permuted onto the {file_name('t1')} grid (exact"),
    "same file for two modalities": (WARNING, f"{file_name('t2')}: identical to {file_name('t1')} voxel for voxel"),
    "single slice": (ERROR, f"{file_name('flair')}: 2D image of shape (32, 36, 1); each modality must be a 3D "
                            "volume"),
    "NIfTI-2 file": (ERROR, f"{file_name('t1ce')}: this is a NIfTI-2 file; convert it to NIfTI-1"),
    "empty file": (ERROR, f"{file_name('t2')}: only 0 bytes, too short for a NIfTI header"),
    "text named .nii.gz": (ERROR, f"{file_name('t1')}: not a NIfTI file (no NIfTI-1 header)"),
    "symlink loop": (ERROR, f"{file_name('t1')}: symbolic link to "),
    "seg label 255": (ERROR, f"{file_name('seg')}: unknown label values [255]"),
}
