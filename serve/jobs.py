"""What the API's jobs do, bytes in and bytes out (no HTTP here): segment an uploaded case, generate cases.

Everything is built from ``core``: ``load_case_from_bytes`` / ``load_case_from_zip`` read and validate the
upload (their ``CaseError`` / ``NiftiError`` messages name the file and the fix, as in the CLIs),
``core.segmentation.pipeline.segment`` checks, segments and measures it as ``python -m core.segment`` does and writes
the label map with the source affine and header, and ``iter_cases`` + ``cases_zip`` generate cases and zip them in
memory.
Nothing is left on disk: the one temporary folder (for reading an uploaded mask the way the CLI does) is
removed when the job ends, also on errors.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.io.case import Case, CaseError, cases_zip, identify_file, load_case_from_bytes, load_case_from_zip
from core.segmentation.pipeline import SegmentOptions, segment

UPLOAD_HELP = ("send the four modalities (t1, t1ce, t2, flair; optional seg) as repeated form field 'files', "
               "named as in a case folder (e.g. X_t1.nii.gz or X-t1n.nii.gz), or one .zip of the case folder")
AFFINE_TOLERANCE_MM = 1e-3


@dataclass
class SegmentResult:
    """A segmented upload: the label map file and what was measured on it."""

    case: str
    labels: str
    nii_gz: bytes
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    volumes_ml: dict[str, float]
    class_volumes_ml: dict[str, float]
    seconds: float
    tta: bool
    metrics: dict[str, dict[str, float]] | None = None
    files: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    prob_nii_gz: bytes | None = None  # WT/TC/ET probability map (core.io.case.region_probabilities_bytes), if asked

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (everything but the file bytes)."""
        return {"case": self.case, "labels": self.labels, "shape": list(self.shape),
                "spacing_mm": list(self.spacing_mm), "volumes_ml": self.volumes_ml,
                "class_volumes_ml": self.class_volumes_ml, "metrics": self.metrics, "seconds": round(self.seconds, 3),
                "tta": self.tta, "files": self.files, "warnings": self.warnings}


def safe_name(name: str, default: str = "upload") -> str:
    """``name`` reduced to letters, digits, ``-``, ``_`` and ``.`` (file names and HTTP headers)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return cleaned or default


def upload_case_name(file_names: list[str]) -> str:
    """Case id from BraTS-named uploads (``X_t1.nii.gz`` -> ``X``); ``"upload"`` for plain names."""
    for file_name in file_names:
        ident = identify_file(file_name)
        if ident is None or ident[1] == "plain":
            continue
        stem = Path(file_name.replace("\\", "/")).name
        for suffix in (".nii.gz", ".nii"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
        cut = max(stem.rfind(sep) for sep in "_-. ")
        if cut > 0:
            return safe_name(stem[:cut])
    return "upload"


def case_from_uploads(uploads: Mapping[str, bytes]) -> Case:
    """Load a case from uploaded files ``{file name: bytes}``: the four modalities or one ``.zip``.

    Raises:
        CaseError: nothing sent, a zip mixed with other files, or any ``core.io.case`` check (message names the file).
        NiftiError: a file is not a readable NIfTI.
    """
    names = list(uploads)
    if not names:
        raise CaseError(f"no files received; {UPLOAD_HELP}.")
    zips = [n for n in names if n.lower().endswith(".zip")]
    if zips:
        if len(names) > 1:
            raise CaseError(f"{zips[0]}: a .zip was sent together with {len(names) - 1} other file(s); "
                            f"send either one .zip of the case folder or the NIfTI files, not both.")
        return load_case_from_zip(uploads[zips[0]], name=None)
    return load_case_from_bytes(uploads, name=upload_case_name(names))


def segment_upload(uploads: Mapping[str, bytes], model: Any, *, labels: str = "2020", tta: bool = False,
                   force: bool = False, probabilities: bool = False,
                   progress: Callable[[float, str], None] | None = None) -> SegmentResult:
    """Segment an uploaded case: the ``.nii.gz`` label map (source affine/header, ``labels`` values) + volumes.

    Dice/HD95 against the upload's own seg file are added when one was sent; with ``probabilities``, the WT/TC/ET
    probability map as ``core.segment --probabilities`` writes it. ``progress(fraction, message)`` is called
    between the pipeline's stages (it may raise to stop the job).
    """
    case = case_from_uploads(uploads)
    options = SegmentOptions(tta=tta, probabilities=probabilities, labels=labels, force=force, force_hint="force=true")
    result = segment(case, model, options, progress=progress)
    metrics = None
    if result.metrics is not None:
        metrics = {region: {k: _finite(v) for k, v in values.items()} for region, values in result.metrics.items()}
    return SegmentResult(
        case=case.name, labels=labels, nii_gz=result.label_map_bytes(), shape=case.shape, spacing_mm=case.spacing,
        volumes_ml={k: round(v, 3) for k, v in result.volumes_ml.items()},
        class_volumes_ml={k: round(v, 3) for k, v in result.class_volumes_ml.items()},
        seconds=result.seconds, tta=tta, metrics=metrics, files=dict(case.files), warnings=result.warnings,
        prob_nii_gz=result.probabilities_bytes() if probabilities else None)


def _finite(value: float) -> float | None:
    """JSON has no inf/nan: HD95 of an empty region is ``None``."""
    return round(float(value), 4) if np.isfinite(value) else None


def _read_mask(mask_name: str, mask_bytes: bytes, tmp: Path, notes: list[str]) -> tuple[np.ndarray, np.ndarray, Any]:
    """``(internal labels, affine, header)`` of an uploaded label map, read the way ``core.generate`` reads one."""
    from core.synthesis.generate import read_mask

    path = tmp / safe_name(Path(mask_name.replace("\\", "/")).name, "mask.nii.gz")
    path.write_bytes(mask_bytes)
    try:
        return read_mask(path, notes)
    finally:
        path.unlink(missing_ok=True)


def _check_host(mask_name: str, mask: np.ndarray, affine: np.ndarray, host: Case) -> None:
    """Raise unless the mask lies on the host case's grid."""
    reference = host.files.get("t1", host.name)
    if mask.shape != host.shape:
        raise CaseError(f"{mask_name}: shape {mask.shape} differs from the host case's {reference} {host.shape}; "
                        "the mask must be on the host case's grid - resample it (nearest neighbour) or send the "
                        "case it was drawn on.")
    diff = float(np.max(np.abs(np.asarray(affine, float) - np.asarray(host.affine, float))))
    if diff > AFFINE_TOLERANCE_MM:
        raise CaseError(f"{mask_name}: affine differs from the host case's {reference} by up to {diff:.3g} mm; "
                        "the mask must be on the host case's grid - resample it or send the case it was drawn on.")


def generate_upload(mask_name: str, mask_bytes: bytes, host_uploads: Mapping[str, bytes] | None, model: Any, *,
                    samples: int = 1, seed: int = 0, temperature: float = 1.0,
                    naming: str = "2020") -> tuple[bytes, list[str]]:
    """CVAE samples conditioned on an uploaded mask, as a ``.zip`` of BraTS-named case folders.

    Without a host case the brain is the MNI152 template (BraTS grid only, as ``python -m core.generate``);
    with one (``host_uploads``, same forms as :func:`case_from_uploads`) the samples take its brain outline,
    affine and header, like the app's Generate page. Case names are those of the CLI.

    Returns:
        ``(zip bytes, warnings)``: the CLI's warnings (header inconsistencies, a mask without tumour).
    """
    from core.preprocessing.preprocess import brain_mask
    from core.synthesis.generate import NAME_PATTERNS, iter_cases

    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="brats_api_") as tmp_name:
        tmp = Path(tmp_name)
        mask, affine, header = _read_mask(mask_name, mask_bytes, tmp, notes)
        brain = None
        if host_uploads:
            host = case_from_uploads(host_uploads)
            _check_host(mask_name, mask, affine, host)
            affine, header, brain = host.affine, host.header, brain_mask(host.image)
            notes.extend(host.warnings)
        cases = iter_cases(mask, affine, header, model, n_samples=samples, seed=seed, temperature=temperature,
                           brain=brain, name=mask_name)
        if not mask.any():  # the CLI's note
            notes.append(f"{mask_name}: no tumour label (every voxel is 0); the generated cases are tumour-free "
                         "brains - pass a tumour segmentation to get tumours.")
        names = [NAME_PATTERNS[naming].format(seed=seed, index=i) for i in range(samples)]
        data = cases_zip(cases, naming, names)
    return data, notes
