"""Synthetic BraTS cases from a tumour mask with the conditional VAE (``core.synthesis.cvae``).

API (used by the app)::

    model = load_cvae(default_cvae_path())
    cases = generate_cases(mask, affine, header, model, n_samples=3, seed=0, temperature=1.0)
    recon = reconstruct(case, model)

A generated case has the four modalities on the mask's grid (affine and header of the mask, qform and
sform as in the mask file),
intensities ``core.synthesis.cvae.INTENSITY_OFFSET + INTENSITY_SCALE * z`` inside the brain (about
0..1000) and exactly 0 outside, and ``.seg`` = the conditioning mask. A bare label map brings
no brain outline, so the brain is the MNI152 template brain of ``core.synthesis.anatomy`` (the anatomy
the phantoms are built from) joined with the tumour; pass ``brain=`` to use another one. A mask whose
voxel axes are flipped or permuted (any orientation other than the BraTS grid's LPS) is turned into
the model's orientation for generation and the images are turned back (``core.io.orientation``), so
the generated brain is upright and overlays the mask in world space.

CLI: ``python -m core.generate`` (:mod:`core.generate`), which writes the cases as BraTS folders.

The mask may use either label convention.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from core.io.case import MODALITIES, Case, CaseError, affine_spacing, load_label_map
from core.io.labels import NUM_CLASSES
from core.io.orientation import reorientation
from core.io.weights import ModelLoadError, load_keras_file, shipped_path
from core.preprocessing.preprocess import brain_mask, zscore
from core.synthesis import cvae

import keras  # noqa: E402

Progress = Callable[[float, str], None]

SPACING_TOLERANCE = 0.05  # relative deviation from 1 mm voxels that is accepted
NAME_PATTERNS: dict[str, str] = {"2020": "BraTS20_CVAE_s{seed}_{index:03d}", "2023": "BraTS-CVAE-s{seed}-{index:03d}"}


def default_cvae_path() -> Path:
    """Path of the shipped CVAE weights (``weights/cvae.keras``)."""
    return shipped_path("cvae")


def load_cvae(path: str | Path) -> cvae.ConditionalVAE:
    """Load a CVAE from a ``.keras`` file with ``safe_mode=True`` (no code execution).

    Raises:
        ModelLoadError: the file is missing, not a ``.keras`` archive, corrupt or unsafe, or
            not a ``core.synthesis.cvae.ConditionalVAE``.
    """
    model = load_keras_file(path, "CVAE", "python -m train.cvae")
    if not isinstance(model, cvae.ConditionalVAE):
        raise ModelLoadError(f"{path} holds a {type(model).__name__}, not a conditional VAE "
                             "(core.synthesis.cvae.ConditionalVAE); is it the U-Net? "
                             "Use a file saved by `python -m train.cvae`.")
    return model


# ------------------------------------------------------------------------------- validation


def check_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """The mask as uint8 internal labels; ``CaseError`` for a non-3D map or labels outside 0..3."""
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise CaseError(f"{name}: shape {mask.shape} is not a 3D label map (X, Y, Z); "
                        "pass one tumour segmentation volume.")
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.bool_)):
        if not np.array_equal(mask, np.round(mask)):
            raise CaseError(f"{name}: holds non-integer values; a label map stores the classes 0/1/2/3 (or 0/1/2/4).")
    values = np.unique(mask)
    unknown = [v for v in values.tolist() if v not in range(NUM_CLASSES)]
    if unknown:
        hint = (" (4 is ET in the 2020 convention: convert with core.io.labels.to_internal)"
                if unknown == [4] else "")
        raise CaseError(f"{name}: unknown labels {unknown}{hint}; internal labels are 0 background, "
                        "1 NCR, 2 ED, 3 ET.")
    return mask.astype(np.uint8)


def _check_spacing(affine: np.ndarray, name: str) -> None:
    """``CaseError`` unless the affine (the transform actually used, not pixdim) has ~1 mm voxels."""
    zooms = np.asarray(affine_spacing(affine))
    if np.any(np.abs(zooms - 1.0) > SPACING_TOLERANCE):
        raise CaseError(f"{name}: voxel size {' x '.join(f'{float(z):.3g}' for z in zooms)} mm is not 1 mm; the "
                        "CVAE generates on 1 mm grids like BraTS: resample the mask to 1 mm (nearest neighbour) "
                        "first.")


def template_brain(shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """The MNI152 template brain mask on the BraTS grid (``core.synthesis.anatomy``)."""
    from core.synthesis.anatomy import BRATS_SHAPE, load_anatomy

    if tuple(shape) != tuple(BRATS_SHAPE):
        shown = " x ".join(str(int(s)) for s in shape)
        raise CaseError(f"{name}: shape {shown} (in the BraTS LPS orientation) is not the BraTS grid "
                        f"{' x '.join(map(str, BRATS_SHAPE))}, so the template brain "
                        "does not fit; resample the mask to the BraTS grid (SRI-24, 1 mm) or pass a brain mask "
                        "of the mask's grid (brain= / --brain).")
    return np.asarray(load_anatomy().brain, bool)


def _brain_for(mask: np.ndarray, brain: np.ndarray | None, name: str) -> np.ndarray:
    if brain is None:
        brain = template_brain(mask.shape, name)
    brain = np.asarray(brain, bool)
    if brain.shape != mask.shape:
        raise CaseError(f"{name}: brain mask {brain.shape} and label map {mask.shape} differ in shape; "
                        "both must be on the same grid.")
    return brain | (mask > 0)


def _check_model(model: keras.Model) -> cvae.ConditionalVAE:
    if not isinstance(model, cvae.ConditionalVAE):
        raise TypeError("expected a core.synthesis.cvae.ConditionalVAE (load_cvae / build_cvae), "
                        f"got {type(model).__name__}")
    return model


def _image_header(header: nib.Nifti1Header | None, shape: tuple[int, ...], affine: np.ndarray) -> nib.Nifti1Header:
    """Image header for generated volumes: a copy of the mask's without display window (a label map's
    cal_max means nothing for an MRI), or a fresh one with the affine's voxel size."""
    if header is None:
        hdr = nib.Nifti1Header()
        hdr.set_data_shape(shape)
        hdr.set_zooms(tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0)))
        hdr.set_xyzt_units("mm")
        hdr.set_qform(affine, code=1)
        hdr.set_sform(affine, code=1)
        return hdr
    hdr = header.copy()
    hdr["cal_min"] = hdr["cal_max"] = 0
    return hdr


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample ``index`` of a run with ``seed`` (independent streams, not ``seed + index``)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0] % (2**31 - 1))


# ------------------------------------------------------------------------------------- API


def iter_cases(
    mask: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None,
    model: cvae.ConditionalVAE,
    *,
    n_samples: int = 1,
    seed: int = 0,
    temperature: float = 1.0,
    progress: Progress | None = None,
    brain: np.ndarray | None = None,
    name: str = "mask",
) -> Iterator[Case]:
    """Like :func:`generate_cases`, but yields each case as soon as it is made (the CLI writes them one by one).

    The inputs are checked before the first case is yielded; ``name`` (the mask's file name) starts
    every error message.
    """
    model = _check_model(model)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not (np.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be a 4x4 matrix, got shape {affine.shape}")
    report = progress or (lambda fraction, message: None)
    mask = check_mask(mask, name)
    _check_spacing(affine, name)
    report(0.0, "preparing the condition")
    turn = reorientation(affine, mask.shape)  # generate in the model's (BraTS) orientation, write on the mask's
    if brain is not None:
        brain = np.asarray(brain, bool)
        if brain.shape != mask.shape:
            raise CaseError(f"{name}: brain mask {brain.shape} and label map {mask.shape} differ in shape; "
                            "both must be on the same grid.")
        brain = turn.to_model(brain)
    oriented = np.ascontiguousarray(turn.to_model(mask))
    brain = np.ascontiguousarray(_brain_for(oriented, brain, name))
    box, cond, _ = cvae.model_inputs(model.grid, oriented, brain)
    cond = cond[None]
    header = _image_header(header, mask.shape, affine)
    return _sample(model, mask, brain, box, cond, affine, header, n_samples, seed, temperature, report, turn)


def _sample(model, mask, brain, box, cond, affine, header, n_samples, seed, temperature, report,
            turn) -> Iterator[Case]:
    for i in range(n_samples):
        report(i / n_samples, f"sampling case {i + 1}/{n_samples}")
        z = model.sample_latent(1, seed=sample_seed(seed, i), temperature=temperature)
        zscores = keras.ops.convert_to_numpy(model.decode(z, cond))[0]
        image = np.ascontiguousarray(turn.to_source(cvae.decoded_to_case(model.grid, zscores, box, brain)))
        yield Case(image=image, affine=affine.copy(), header=header.copy(),
                   seg=mask.copy(), label_convention=None, files={}, naming=None, name=f"cvae-s{seed}-{i:03d}")
    report(1.0, "done")


def generate_cases(
    mask: np.ndarray,
    affine: np.ndarray,
    header: nib.Nifti1Header | None,
    model: cvae.ConditionalVAE,
    *,
    n_samples: int = 1,
    seed: int = 0,
    temperature: float = 1.0,
    progress: Progress | None = None,
    brain: np.ndarray | None = None,
    name: str = "mask",
) -> list[Case]:
    """Sample synthetic cases whose tumour is ``mask``.

    Args:
        mask: uint8 ``(X, Y, Z)`` internal labels 0..3 (1 mm grid; the BraTS grid unless
            ``brain`` is given).
        affine: ``(4, 4)`` voxel-to-world matrix of the mask (copied to every case).
        header: NIfTI header of the mask (copied, without display window), or ``None`` (a fresh one).
        model: a :class:`core.synthesis.cvae.ConditionalVAE`.
        n_samples: number of cases.
        seed: sample ``i`` uses latent seed :func:`sample_seed` ``(seed, i)``: same seed, same cases.
        temperature: scale of the prior's standard deviation (0: the mean anatomy; < 1: tamer samples).
        progress: ``(fraction, message)`` callback.
        brain: optional bool brain mask of the mask's grid (default: the template brain).
        name: the mask's file name, used in error messages.

    Returns:
        ``n_samples`` cases named ``cvae-s{seed}-{i:03d}``, ``.seg`` = ``mask``.

    Raises:
        CaseError: bad mask (shape, labels, voxel size) or brain mask.
        ValueError: ``n_samples < 1``, a negative temperature or a bad affine.
    """
    return list(iter_cases(mask, affine, header, model, n_samples=n_samples, seed=seed, temperature=temperature,
                           progress=progress, brain=brain, name=name))


def reconstruct(case: Case, model: cvae.ConditionalVAE, *, progress: Progress | None = None) -> Case:
    """Encode ``case`` (image + segmentation) and decode the posterior mean: the model's reconstruction.

    Returns:
        A case on ``case``'s grid (same affine/header, ``.seg`` = ``case.seg``), named ``{name}-recon``.

    Raises:
        CaseError: the case has no segmentation, or a bad segmentation.
    """
    model = _check_model(model)
    report = progress or (lambda fraction, message: None)
    if case.seg is None:
        raise CaseError(f"case {case.name!r} has no segmentation; the CVAE is conditioned on the tumour mask: "
                        "load the case with its seg file or segment it first.")
    if case.image.shape[0] != len(MODALITIES):
        raise CaseError(f"case {case.name!r}: image shape {case.image.shape} is not (4, X, Y, Z)")
    labels = check_mask(case.seg, f"case {case.name!r} segmentation")
    if labels.shape != case.shape:
        raise CaseError(f"case {case.name!r}: segmentation {labels.shape} and image {case.shape} differ in shape")
    _check_spacing(case.affine, f"case {case.name!r}")
    report(0.0, "normalising")
    turn = reorientation(case.affine, case.shape)  # encode/decode in the model's orientation
    oriented = np.ascontiguousarray(turn.to_model(labels))
    case_image = np.ascontiguousarray(turn.to_model(case.image))
    brain = brain_mask(case_image) | (oriented > 0)
    box, cond, image = cvae.model_inputs(model.grid, oriented, brain, zscore(case_image, brain))
    del case_image
    report(0.3, "encoding")
    z_mean, _ = model.encode(image[None], cond[None])
    report(0.6, "decoding")
    zscores = keras.ops.convert_to_numpy(model.decode(z_mean, cond[None]))[0]
    out = np.ascontiguousarray(turn.to_source(cvae.decoded_to_case(model.grid, zscores, box, brain)))
    report(1.0, "done")
    return Case(image=out, affine=np.array(case.affine, copy=True), header=case.header.copy(), seg=labels.copy(),
                label_convention=case.label_convention, files={}, naming=None, name=f"{case.name}-recon")


def read_mask(
    path: str | Path, warnings: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """``(internal labels, affine, header)`` of a label-map file in either BraTS convention.

    Header inconsistencies (qform vs sform, pixdim vs affine) are appended to ``warnings`` if given.
    """
    labels, affine, header, _ = load_label_map(path, warnings)
    return labels, affine, header
