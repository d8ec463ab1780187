"""How rough is real tumour tissue compared with the healthy brain? ``bench/results/synthesis/tumour_texture.json``.

For each real *training* case (never the validation split): the robust level (1.4826 x MAD) of the 1-voxel
high-pass residual (``core.synthesis.texture.high_pass``) inside each tumour class (NCR, ED, ET; eroded by one voxel,
classes under 500 voxels skipped) over the same level in the healthy brain (eroded 3 voxels from its edge, 3 voxels
away from the tumour), per modality. The medians over the cases are ``core.synthesis.texture.TUMOUR_LEVEL_RATIO``:
the level each class of a generated tumour is given.

Second, the tissue's coarser heterogeneity: the robust level of the band ``gaussian(z, 1) - gaussian(z, 3)``
(:func:`core.synthesis.texture.mid_band`) inside each class, in z-scores of the case's healthy brain (mean and std
over the brain outside the tumour dilated by 4 voxels, as the generator normalises). Its medians are
``core.synthesis.texture.TUMOUR_MID_LEVEL``; the share of voxels beyond 3 of those levels (the tails) is what
``core.synthesis.texture.TAIL_FRACTION`` matches.

    .venv/bin/python bench/analysis/tumour_texture.py [--json bench/results/synthesis/tumour_texture.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core.io.case import MODALITIES, load_case  # noqa: E402
from core.io.labels import ED, ET, NCR  # noqa: E402
from core.preprocessing.preprocess import brain_mask  # noqa: E402
from core.synthesis import region as rg  # noqa: E402
from core.synthesis.texture import (  # noqa: E402
    TAIL_FRACTION,
    TUMOUR_LEVEL_RATIO,
    TUMOUR_MID_LEVEL,
    high_pass,
    mid_band,
    robust_level,
)
from train.common import labelled_case_folders, read_case_ids  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "brats-real"
SPLIT = ROOT / "train" / "splits" / "brats-real-validation.txt"
CLASSES = {"NCR": NCR, "ED": ED, "ET": ET}
MIN_VOXELS = 500


def level_ratios(image: np.ndarray, seg: np.ndarray) -> dict[str, list[float]]:
    """``{class: [ratio per modality]}`` of one case (image ``(4, X, Y, Z)``, internal labels)."""
    residual = high_pass(np.moveaxis(image, 0, -1))
    tumour = seg > 0
    healthy = ndimage.binary_erosion(brain_mask(image), iterations=3) & ~ndimage.binary_dilation(tumour, iterations=3)
    reference = robust_level(residual[healthy])
    out = {}
    for name, label in CLASSES.items():
        inner = ndimage.binary_erosion(seg == label, iterations=1)
        if inner.sum() >= MIN_VOXELS:
            out[name] = [round(float(v), 3) for v in robust_level(residual[inner]) / reference]
    return out


def mid_levels(image: np.ndarray, seg: np.ndarray) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """``{class: [mid-band level per modality]}`` of one case, in healthy z-scores, and ``{class: [share of the
    class's voxels beyond 3 such levels from the median]}`` (how heavy the tails are)."""
    brain = brain_mask(image)
    mean, std = rg.healthy_stats(image, brain, rg.dilate(seg > 0, 4))
    band = mid_band(np.moveaxis(rg.normalise(image, brain, mean, std), 0, -1))
    out, tails = {}, {}
    for name, label in CLASSES.items():
        inner = ndimage.binary_erosion(seg == label, iterations=1)
        if inner.sum() >= MIN_VOXELS:
            values = band[inner]
            level = robust_level(values)
            out[name] = [round(float(v), 3) for v in level]
            far = np.abs(values - np.median(values, axis=0)) > 3 * level
            tails[name] = [round(float(v), 4) for v in far.mean(axis=0)]
    return out, tails


def summarise(cases: dict[str, dict[str, list[float]]], shipped: dict[int, tuple[float, ...]] | None = None,
              digits: int = 2) -> dict:
    """Median and quartiles per class over the cases that have it, beside the shipped values."""
    summary = {}
    for name, label in CLASSES.items():
        rows = np.array([c[name] for c in cases.values() if name in c])
        summary[name] = {"cases": len(rows), "median": np.median(rows, 0).round(digits).tolist(),
                         "q25": np.percentile(rows, 25, 0).round(digits).tolist(),
                         "q75": np.percentile(rows, 75, 0).round(digits).tolist()}
        if shipped is not None:
            summary[name]["shipped"] = list(shipped[label])
        print(name, summary[name])
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "synthesis" / "tumour_texture.json")
    args = parser.parse_args()
    if not REAL.is_dir():
        print(f"real data not found at {REAL}")
        return 1
    folders = labelled_case_folders(str(REAL), exclude=read_case_ids(str(SPLIT)))
    cases, mids, tails = {}, {}, {}
    for folder in folders:
        case = load_case(folder)
        cases[folder.name] = level_ratios(case.image, case.seg)
        mids[folder.name], tails[folder.name] = mid_levels(case.image, case.seg)
        print(folder.name, cases[folder.name], mids[folder.name], flush=True)
    result = {"what": "robust high-pass level in each tumour class / in the healthy brain, per modality, real "
                      "training cases", "modalities": list(MODALITIES),
              "summary": summarise(cases, TUMOUR_LEVEL_RATIO), "cases": cases,
              "mid_band_what": "robust level of gaussian(z, 1) - gaussian(z, 3) in each class, healthy z-scores",
              "mid_band_summary": summarise(mids, TUMOUR_MID_LEVEL), "mid_band_cases": mids,
              "mid_band_tail_what": "share of the class's voxels whose mid band is beyond 3 robust levels from its "
                                    f"median (shipped noise: TAIL_FRACTION {TAIL_FRACTION})",
              "mid_band_tail_summary": summarise(tails, digits=4)}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
