"""Does the plausibility gate refuse crops and nothing else? Every real case whole, then cropped around its tumour.

``core.segment``, the API, batch runs and the app refuse a case with an error finding of
``core.preprocessing.input_check.check_case`` unless forced. A gate that refuses a real whole-brain scan is worse
than none, so this script runs the checks on every case folder under ROOT as it is (expected: 0 refused) and on
cubic crops of each labelled case centred on its tumour (expected: every crop under a whole brain refused), and
reports each case's brain volume and field of view beside the verdict. No model is loaded.

Usage (from the project root)::

    python -m bench.segmentation.bench_input_gate ../shared/data/brats-real \
        --out bench/results/segmentation/input_gate.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.io.case import Case, CaseError, load_case
from core.preprocessing.input_check import ERROR, check_case
from core.preprocessing.preprocess import brain_mask

CROP_SIDES_MM = (16, 32, 64, 96)


def tumour_crop(case: Case, side_mm: float) -> Case:
    """A cube of ``side_mm`` (clipped to the volume) centred on the reference tumour's centre, affine moved with it."""
    assert case.seg is not None
    centre = np.round(np.argwhere(case.seg > 0).mean(axis=0)).astype(int)
    half = np.maximum(1, np.round(side_mm / np.asarray(case.spacing) / 2).astype(int))
    lo = np.clip(centre - half, 0, np.asarray(case.shape))
    hi = np.clip(centre + half, 0, np.asarray(case.shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    affine = case.affine.copy()
    affine[:3, 3] = case.affine[:3, :3] @ lo + case.affine[:3, 3]
    return replace(case, image=case.image[(slice(None), *box)].copy(), seg=case.seg[box].copy(), affine=affine,
                   name=f"{case.name} ({side_mm:g} mm crop)")


def verdict(case: Case) -> dict:
    """The gate's verdict on ``case``: refused or not, its first error, brain volume and field of view."""
    findings = check_case(case)
    errors = [f.message for f in findings if f.level == ERROR]
    voxel_ml = float(np.prod(case.spacing)) / 1000.0
    return {"refused": bool(errors), "first_error": errors[0] if errors else "",
            "brain_ml": round(float(np.count_nonzero(brain_mask(np.asarray(case.image)))) * voxel_ml, 1),
            "fov_mm": [round(float(n * s), 1) for n, s in zip(case.shape, case.spacing, strict=True)],
            "warnings": [f.message for f in findings if f.level != ERROR]}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="folder of case folders (e.g. ../shared/data/brats-real)")
    parser.add_argument("--out", type=Path, help="write the report here (JSON)")
    args = parser.parse_args(argv)
    folders = sorted(p for p in args.root.iterdir() if p.is_dir())
    if not folders:
        print(f"error: no case folders in {args.root}", file=sys.stderr)
        return 2
    whole, crops = {}, {str(s): {} for s in CROP_SIDES_MM}
    start = time.perf_counter()
    for folder in folders:
        try:
            case = load_case(folder)
        except CaseError as exc:
            whole[folder.name] = {"refused": True, "first_error": f"not loadable: {exc}"}
            continue
        whole[folder.name] = verdict(case)
        if case.seg is not None and case.seg.any():
            for side in CROP_SIDES_MM:
                crops[str(side)][folder.name] = verdict(tumour_crop(case, side))
        print(f"{folder.name}: whole {'REFUSED' if whole[folder.name]['refused'] else 'accepted'}; crops refused "
              + ", ".join(f"{s} mm {'yes' if crops[str(s)].get(folder.name, {}).get('refused') else 'no'}"
                          for s in CROP_SIDES_MM), flush=True)
    summary = {"whole_cases": len(whole), "whole_refused": sum(v["refused"] for v in whole.values()),
               "crops_refused": {s: f"{sum(v['refused'] for v in c.values())}/{len(c)}" for s, c in crops.items()}}
    report = {"root": str(args.root), "seconds": round(time.perf_counter() - start, 1), "summary": summary,
              "whole": whole, "crops": crops}
    print(json.dumps(summary))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
