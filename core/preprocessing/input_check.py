"""Is a loaded case something the models can segment? Plausibility checks with clear findings.

``core.io.case`` rejects files that cannot be read or used at all (not a NIfTI, NaN, constant, ...).
This module looks at the *content* of a loaded case and reports what would make a segmentation
silently wrong, as :class:`Finding` s naming the file and the fix:

errors (``core.segment`` refuses, unless ``--force``):
    - two modalities with identical voxels (the same file picked twice);
    - a brain region too large for one forward pass in bounded memory (e.g. a 0.5 mm grid);
    - a modality that is random noise (neighbouring brain voxels uncorrelated);
    - a modality that is constant inside the brain (a mask saved as an image);
    - no brain at all (every voxel equals the background);
    - a brain or field of view far smaller than a whole brain (a crop, e.g. 16 mm around a tumour, even one
      wholly inside the brain): the models were trained on whole brains.

warnings (the result is computed, but may be unreliable):
    - a background that is not 0 (it is detected and masked; see ``core.preprocessing.preprocess.border_background``);
    - no uniform background on the border, or a "brain" larger than a head: not skull-stripped;
    - voxels far from the 1 mm the models were trained on;
    - voxel axes rotated far from the world axes (oblique grids are only flipped/permuted, never resampled).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.io.case import MODALITIES, Case, CaseError
from core.preprocessing.preprocess import border_background, bounding_box, brain_mask

ERROR = "error"
WARNING = "warning"
NOISE_MAX_CORRELATION = 0.3  # MRI: 0.8-0.99 between neighbouring brain voxels; white noise: ~0
MIN_BRAIN_ML = 500.0  # whole adult brains are ~1000-1800 mL (BraTS cases measured here: 1018-1639 mL)
MAX_BRAIN_ML = 2500.0  # above this the "brain" is a head: not skull-stripped
MAX_BRAIN_FRACTION = 0.7  # skull-stripped BraTS brains fill ~11-18 % of the 240x240x155 field of view
MIN_FOV_MM = 100.0  # a brain is ~140 x 170 x 120 mm
SPACING_TOLERANCE_MM = 0.1  # around the 1 mm the models were trained on
MAX_BOX_VOXELS = 7_000_000  # network input; ~0.5 GB per million voxels (BraTS crop 3.6 M: 2.4 GB peak in all)
MAX_OBLIQUE_DEG = 15.0  # phantoms are rotated by up to 6 degrees per axis in training
_SAMPLE = 4  # correlation computed on every 4th line across the other two axes


@dataclass(frozen=True)
class Finding:
    """One problem of a case: ``level`` is ``"error"`` or ``"warning"``; ``message`` names the file and the fix."""

    level: str
    message: str


def _source(case: Case, channel: int) -> str:
    key = MODALITIES[channel]
    return case.files.get(key) or f"{case.name} ({key})"


def neighbour_correlation(volume: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of brain voxels with their neighbour along the first axis (subsampled).

    Close to 1 for images (smooth on the voxel scale), close to 0 for white noise; 1.0 when there
    are fewer than 100 voxel pairs to judge from.
    """
    a = volume[:-1, ::_SAMPLE, ::_SAMPLE]
    b = volume[1:, ::_SAMPLE, ::_SAMPLE]
    both = mask[:-1, ::_SAMPLE, ::_SAMPLE] & mask[1:, ::_SAMPLE, ::_SAMPLE]
    if np.count_nonzero(both) < 100:
        return 1.0
    x = a[both].astype(np.float64)
    y = b[both].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return 1.0 if denominator == 0 else float((x * y).sum() / denominator)


def obliquity_deg(affine: np.ndarray) -> float:
    """Largest angle (degrees) between a voxel axis of ``affine`` and its nearest world axis (0 when axis-aligned)."""
    columns = np.asarray(affine, dtype=np.float64)[:3, :3]
    cosines = np.abs(columns).max(axis=0) / np.linalg.norm(columns, axis=0)
    return float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))


def check_case(case: Case) -> list[Finding]:
    """Plausibility findings of a loaded case (errors first, then warnings; empty for a BraTS-like case)."""
    errors: list[str] = []
    notes: list[str] = []
    image = np.asarray(case.image)
    spacing = np.asarray(case.spacing, dtype=np.float64)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    fov = np.asarray(case.shape, dtype=np.float64) * spacing
    fov_text = " x ".join(f"{v:.0f}" for v in fov)
    for a in range(image.shape[0]):
        for b in range(a + 1, image.shape[0]):
            if np.array_equal(image[a], image[b]):
                errors.append(f"{_source(case, b)}: identical to {_source(case, a)} voxel for voxel - the same image "
                              f"was picked for {MODALITIES[a]} and {MODALITIES[b]}; choose the right file for each "
                              "modality.")
    no_background = []
    for c in range(image.shape[0]):
        value = border_background(image[c])
        if value is None:
            no_background.append(_source(case, c))
        elif value != 0:
            notes.append(f"{_source(case, c)}: the background is {value:.6g} (the dominant value on the volume "
                         "border), not 0; it is treated as background and masked out - BraTS files use 0.")
    mask = brain_mask(image)
    brain_ml = np.count_nonzero(mask) * voxel_ml
    if not mask.any():
        return [Finding(ERROR, f"{case.name}: no brain found - every voxel of every modality equals its background "
                               "value; export the modalities again.")]
    box = tuple(s.stop - s.start for s in bounding_box(mask))
    if int(np.prod(box)) > MAX_BOX_VOXELS:
        errors.append(f"{case.name}: the brain region is {' x '.join(map(str, box))} voxels "
                      f"({np.prod(box) / 1e6:.1f} M), too large for one forward pass within about 4 GB of memory "
                      f"(limit {MAX_BOX_VOXELS / 1e6:.0f} M; a 1 mm BraTS brain is ~3.6 M) - resample the case to 1 mm "
                      "and skull-strip it.")
    for c in range(image.shape[0]):
        values = image[c][mask]
        if float(values.min()) == float(values.max()):
            errors.append(f"{_source(case, c)}: constant ({float(values.min()):g}) inside the brain - a mask or a "
                          "failed export, not an MRI; export this modality again.")
            continue
        r = neighbour_correlation(image[c], mask)
        if r < NOISE_MAX_CORRELATION:
            errors.append(f"{_source(case, c)}: neighbouring voxels are uncorrelated (r = {r:.2f}; MRI > 0.8): this "
                          "is random noise, not an MRI - check that the right file was exported.")
    crop_error = (f"{case.name}: brain of {brain_ml:.1f} mL in a field of view of {fov_text} mm - this is not a "
                  "whole-brain volume like BraTS (240 x 240 x 155 mm, brains ~1000-1800 mL); the models were trained "
                  "on whole brains, so labels of a crop are unreliable - segment the whole brain.")
    if fov.min() < MIN_FOV_MM:  # a crop, even one that lies wholly inside the brain (no background on its border)
        errors.append(crop_error)
    elif no_background or brain_ml > MAX_BRAIN_ML or mask.mean() > MAX_BRAIN_FRACTION:
        why = (f"no uniform background on the border of {', '.join(no_background)}" if no_background
               else f"the non-background region is {brain_ml:.0f} mL ({100 * mask.mean():.0f} % of the field of view)")
        notes.append(f"{case.name}: {why} - the input does not look skull-stripped; the models were trained on "
                     "skull-stripped brains (background 0), so run skull stripping (e.g. HD-BET, SynthStrip) first "
                     "or expect tumour labels outside the brain.")
    elif brain_ml < MIN_BRAIN_ML:
        errors.append(crop_error)
    if np.any(np.abs(spacing - 1.0) > SPACING_TOLERANCE_MM):
        notes.append(f"{case.name}: voxel size {' x '.join(f'{s:.3g}' for s in spacing)} mm; the models were "
                     "trained on 1 mm voxels (BraTS), so labels at this voxel size are less reliable - resample the "
                     "case to 1 mm isotropic if you can (volumes are computed with this voxel size).")
    angle = obliquity_deg(case.affine)
    if angle > MAX_OBLIQUE_DEG:
        notes.append(f"{case.name}: the voxel axes are rotated {angle:.0f} degrees from the world axes (an oblique "
                     "grid); the image is only flipped/permuted into the models' orientation, so they see the brain "
                     f"tilted by up to {angle:.0f} degrees (trained within 6) - resample it onto an axis-aligned 1 mm "
                     "grid (e.g. register to SRI-24) for reliable labels.")
    return [Finding(ERROR, m) for m in errors] + [Finding(WARNING, m) for m in notes]


def require_plausible(case: Case, *, force: bool = False, force_hint: str | None = "--force") -> list[str]:
    """Refuse a case with an error finding (unless ``force``); otherwise return every message to show.

    This is the gate of ``python -m core.segment``, the app's Segment run, the REST API and batch runs.

    Args:
        force: segment anyway (the error findings are then returned as warnings).
        force_hint: how the caller's user forces a run (``--force``, ``force=true``), named in the refusal;
            ``None`` where the caller names it itself (the app's "Segment anyway" toggle).

    Returns:
        The loader's warnings (``case.warnings``) and the messages of all findings, in that order.

    Raises:
        CaseError: the first error finding, naming the file, the fix and ``force_hint``.
    """
    findings = check_case(case)
    errors = [f.message for f in findings if f.level == ERROR]
    if errors and not force:
        raise CaseError(errors[0] if force_hint is None else f"{errors[0]} (pass {force_hint} to segment it anyway)")
    return [*case.warnings, *(f.message for f in findings)]
