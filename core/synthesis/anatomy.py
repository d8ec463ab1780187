"""Healthy brain anatomy on the BraTS grid, from the MNI152 template shipped inside nilearn.

nilearn's wheel carries the ICBM 2009a symmetric MNI152 T1 template and its grey/white
matter probability maps (``nilearn/datasets/data/mni_icbm152_*_09a_converted.nii.gz``);
``nilearn.datasets.load_mni152_*`` read those package files and download nothing.

The template is skull-stripped (zero outside the brain) and resampled ONCE, with a fixed
scaling transform, into the BraTS grid (240 x 240 x 155, 1 mm, affine diag(-1, -1, 1) with
translation (0, 239, 0)). The transform puts the brain where real BraTS brains sit, matched on
the two real cases in ``shared/data/brats-real`` (brain boxes [49..188, 28..217, 10..146] and
[55..184, 45..215, 11..136], centroids (119.9, 127.5, 80.6) and (121.4, 134.3, 85.6)): the
template brain lands in [54..188, 39..213, 8..141], centroid (120.6, 131, 78), 1.48 L (the
MNI152 brain is larger than SRI24 brains, hence the scale; its lower brainstem reaches deeper).

Tissue probability maps: GM and WM from the template maps, CSF = brain minus GM minus WM
(ventricles and sulcal CSF). They are cached in memory (``functools.lru_cache``) and on
disk in the user cache dir (``$BRATS_STUDIO_CACHE`` or ``$XDG_CACHE_HOME/brats-studio`` or
``~/.cache/brats-studio``), written atomically; never inside the repository.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)
BRATS_AFFINE: np.ndarray = np.array(
    [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 239.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)

# Placement of the MNI brain in the BraTS grid, measured on the two real cases:
# brain centroid (voxel) and per-axis scale (MNI152 brains are larger than SRI24 ones; z matches the top).
_TARGET_CENTROID_VOXEL = np.array([120.6, 131.0, 78.0])
_MNI_TO_BRATS_SCALE = np.array([0.93, 0.97, 0.87])
_MNI_BRAIN_CENTROID_MM = np.array([0.0, -22.10, 9.47])  # centroid of the template's non-zero voxels
_CACHE_VERSION = 3
_CACHE_NAME = f"mni152-brats-anatomy-v{_CACHE_VERSION}.npz"


@dataclass(frozen=True)
class Anatomy:
    """Tissue probability maps of a healthy brain on the BraTS grid.

    Attributes:
        gm: float32 ``(240, 240, 155)`` grey-matter probability (cortex and deep nuclei).
        wm: float32 white-matter probability.
        csf: float32 CSF probability (ventricles and sulci); ``gm + wm + csf`` is the soft brain mask.
        brain: bool brain mask (soft mask > 0.5, holes filled).
        affine: ``(4, 4)`` BraTS voxel-to-world matrix.
    """

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape ``(X, Y, Z)``."""
        return tuple(int(s) for s in self.gm.shape)  # type: ignore[return-value]


def brats_header(dtype: type | np.dtype = np.float32) -> nib.Nifti1Header:
    """A NIfTI header of the BraTS grid (1 mm, qform/sform 'scanner', mm units) like the real files."""
    header = nib.Nifti1Header()
    header.set_data_shape(BRATS_SHAPE)
    header.set_data_dtype(dtype)
    header.set_zooms((1.0, 1.0, 1.0))
    header.set_xyzt_units("mm")
    header.set_qform(BRATS_AFFINE, code="scanner")
    header.set_sform(BRATS_AFFINE, code="scanner")
    return header


def cache_dir() -> Path:
    """User cache folder of BraTS Studio (not created here)."""
    if os.environ.get("BRATS_STUDIO_CACHE"):
        return Path(os.environ["BRATS_STUDIO_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "brats-studio"


def _load_mni152() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """T1 template, GM and WM maps (float32) and their shared affine, read from nilearn's package data."""
    from nilearn import datasets  # imported lazily: nilearn is slow to import

    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1)
    wm = datasets.load_mni152_wm_template(resolution=1)
    for name, img in (("grey matter", gm), ("white matter", wm)):
        if img.shape != t1.shape or not np.allclose(img.affine, t1.affine):
            raise RuntimeError(f"nilearn's MNI152 {name} map is not on the T1 template grid; reinstall nilearn")
    as32 = [np.asarray(img.get_fdata(dtype=np.float32)) for img in (t1, gm, wm)]
    return as32[0], as32[1], as32[2], np.asarray(t1.affine, dtype=np.float64)


def brats_to_mni_world() -> np.ndarray:
    """``(4, 4)`` map from BraTS voxel indices to MNI152 world coordinates (mm).

    BraTS world = BRATS_AFFINE @ voxel (RAS). MNI world = (BraTS world - target centroid) / scale +
    MNI brain centroid, i.e. the MNI brain shrunk by ``_MNI_TO_BRATS_SCALE`` about its centroid.
    """
    target_mm = BRATS_AFFINE[:3, :3] @ _TARGET_CENTROID_VOXEL + BRATS_AFFINE[:3, 3]
    world = np.eye(4)
    world[:3, :3] = np.diag(1.0 / _MNI_TO_BRATS_SCALE)
    world[:3, 3] = _MNI_BRAIN_CENTROID_MM - world[:3, :3] @ target_mm
    return world @ BRATS_AFFINE


def voxel_to_mni(voxels: np.ndarray) -> np.ndarray:
    """MNI152 coordinates (mm) of ``(n, 3)`` BraTS-grid voxel positions of the template anatomy."""
    m = brats_to_mni_world()
    return np.asarray(voxels, dtype=np.float64) @ m[:3, :3].T + m[:3, 3]


def _resample(volume: np.ndarray, voxel_map: np.ndarray) -> np.ndarray:
    """Trilinear resampling of an MNI volume onto the BraTS grid (zero outside)."""
    return ndi.affine_transform(
        volume, voxel_map[:3, :3], offset=voxel_map[:3, 3], output_shape=BRATS_SHAPE, order=1, cval=0.0
    ).astype(np.float32)


def derive_anatomy() -> dict[str, np.ndarray]:
    """Derive GM/WM/CSF probabilities and the brain mask on the BraTS grid (slow: ~10 s)."""
    t1, gm, wm, mni_affine = _load_mni152()
    inside = (t1 > 0).astype(np.float32)  # the template is skull-stripped: zero outside the brain
    voxels = np.argwhere(inside > 0)
    centroid_mm = mni_affine[:3, :3] @ voxels.mean(axis=0) + mni_affine[:3, 3]
    if not np.allclose(centroid_mm, _MNI_BRAIN_CENTROID_MM, atol=0.05):
        raise RuntimeError(f"nilearn's MNI152 template changed (brain centroid {centroid_mm}); "
                           "update core.synthesis.anatomy")
    voxel_map = np.linalg.inv(mni_affine) @ brats_to_mni_world()

    soft = np.clip(_resample(inside, voxel_map), 0.0, 1.0)
    gm_b = np.clip(_resample(gm * inside, voxel_map), 0.0, 1.0)
    wm_b = np.clip(_resample(wm * inside, voxel_map), 0.0, 1.0)
    tissue = gm_b + wm_b
    over = tissue > soft  # GM + WM may not exceed the brain fraction of a voxel
    scale = np.where(over, soft / np.maximum(tissue, 1e-6), 1.0).astype(np.float32)
    gm_b *= scale
    wm_b *= scale
    csf_b = np.clip(soft - gm_b - wm_b, 0.0, 1.0)
    brain = ndi.binary_fill_holes(soft > 0.5)
    return {"gm": gm_b, "wm": wm_b, "csf": csf_b, "brain": brain}


def _quantise(p: np.ndarray) -> np.ndarray:
    return np.round(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8)


def _write_cache(path: Path, maps: dict[str, np.ndarray]) -> None:
    """Write the maps (probabilities as uint8) atomically: temp file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".anatomy-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(
                fh,
                gm=_quantise(maps["gm"]),
                wm=_quantise(maps["wm"]),
                csf=_quantise(maps["csf"]),
                brain=np.packbits(maps["brain"]),
            )
        os.replace(tmp, path)
        for stale in path.parent.glob("mni152-brats-anatomy-v*.npz"):
            if stale.name != path.name:
                stale.unlink(missing_ok=True)  # caches of older derivations
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """Maps from the disk cache, or ``None`` when absent or unreadable (then they are re-derived)."""
    try:
        with np.load(path) as data:
            maps = {k: data[k].astype(np.float32) / np.float32(255.0) for k in ("gm", "wm", "csf")}
            brain = np.unpackbits(data["brain"])[: int(np.prod(BRATS_SHAPE))]
        maps["brain"] = brain.reshape(BRATS_SHAPE).astype(bool)
    except (OSError, ValueError, KeyError, EOFError):
        return None
    if any(m.shape != BRATS_SHAPE for m in maps.values()):
        return None
    return maps


@functools.lru_cache(maxsize=1)
def load_anatomy() -> Anatomy:
    """The healthy anatomy on the BraTS grid (memory and disk cached; first call ~10 s, then < 1 s).

    Returns:
        Read-only :class:`Anatomy` shared by all callers (copy before modifying).
    """
    path = cache_dir() / _CACHE_NAME
    maps = _read_cache(path) if path.is_file() else None
    if maps is None:
        maps = derive_anatomy()
        try:
            _write_cache(path, maps)
        except OSError:
            pass  # a read-only home only costs the derivation next time
        maps = {k: (_quantise(v).astype(np.float32) / np.float32(255.0)) if k != "brain" else v
                for k, v in maps.items()}  # same values as a cache read, so results do not depend on the cache
    for m in maps.values():
        m.setflags(write=False)
    return Anatomy(gm=maps["gm"], wm=maps["wm"], csf=maps["csf"], brain=maps["brain"], affine=BRATS_AFFINE.copy())
