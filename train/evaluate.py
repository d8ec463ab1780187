"""Evaluate a U-Net on labelled case folders: ``python -m train.evaluate``.

Usage::

    python -m train.evaluate CASES_ROOT --out report.json [--weights weights/unet.keras] [--tta]

``CASES_ROOT`` is a folder of BraTS case folders (2020 or 2023 naming; e.g. the output of
``python -m core.phantom``) or one case folder. Every case with a segmentation is segmented with
``core.inference.segment_case`` and scored with ``core.metrics.region_metrics`` (Dice and HD95 for
WT/TC/ET); cases without a segmentation (or that fail to load) are skipped with a note. The JSON
report holds per-case results, means and the seconds per case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow: errors only on the console

import numpy as np
from tqdm import tqdm

from core.case import CaseError, load_case
from core.inference import ModelLoadError, default_unet_path, load_model, load_model_card, segment_case
from core.labels import REGIONS
from core.metrics import region_metrics
from core.nifti import NiftiError
from train.data import case_folders

REPORTED = ("dice", "hd95")


def evaluate(root: Path, model, *, tta: bool = False, quiet: bool = False) -> dict:
    """Per-case and mean Dice/HD95 (WT, TC, ET) of ``model`` over the labelled cases under ``root``."""
    cases, skipped = [], []
    for folder in tqdm(case_folders(root), desc="evaluate", unit="case", disable=quiet, file=sys.stderr):
        try:
            case = load_case(folder)
        except (CaseError, NiftiError) as exc:
            skipped.append({"case": folder.name, "reason": str(exc)})
            continue
        if case.seg is None:
            skipped.append({"case": case.name, "reason": "no segmentation file"})
            continue
        result = segment_case(case, model, tta=tta)
        metrics = region_metrics(result.labels, case.seg, case.spacing)
        cases.append({
            "case": case.name,
            "seconds": round(result.seconds, 2),
            **{r: {m: round(float(metrics[r][m]), 4) for m in REPORTED} for r in REGIONS},
        })
    mean = {r: {m: float(np.mean([c[r][m] for c in cases])) for m in REPORTED} for r in REGIONS} if cases else None
    return {
        "cases": cases,
        "mean": mean,
        "mean_seconds": float(np.mean([c["seconds"] for c in cases])) if cases else None,
        "skipped": skipped,
    }


def format_report(report: dict) -> str:
    """Markdown table of a report."""
    head = "| case | " + " | ".join(f"{r} Dice | {r} HD95" for r in REGIONS) + " | s |"
    rule = "|---" * (2 + 2 * len(REGIONS)) + "|"
    rows = [head, rule]
    for c in report["cases"]:
        cells = " | ".join(f"{c[r]['dice']:.3f} | {c[r]['hd95']:.1f}" for r in REGIONS)
        rows.append(f"| {c['case']} | {cells} | {c['seconds']:.1f} |")
    if report["mean"]:
        cells = " | ".join(f"{report['mean'][r]['dice']:.3f} | {report['mean'][r]['hd95']:.1f}" for r in REGIONS)
        rows.append(f"| **mean** | {cells} | {report['mean_seconds']:.1f} |")
    rows += [f"skipped {s['case']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (exit 2 on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("cases_root", type=Path, help="folder of case folders, or one case folder")
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    parser.add_argument("--weights", type=Path, default=default_unet_path(), help="U-Net .keras (default %(default)s)")
    parser.add_argument("--tta", action="store_true", help="mirror test-time augmentation")
    args = parser.parse_args(argv)
    if not args.cases_root.is_dir():
        print(f"error: {args.cases_root} is not a folder", file=sys.stderr)
        return 2
    try:
        model = load_model(args.weights)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    report = evaluate(args.cases_root, model, tta=args.tta)
    card = load_model_card(args.weights)
    report.update({
        "weights": str(args.weights),
        "weights_step": card.get("step") if card else None,
        "tta": args.tta,
        "cases_root": str(args.cases_root),
        "wall_time_s": round(time.perf_counter() - start, 1),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    if not report["cases"]:
        print(f"error: no case with a segmentation under {args.cases_root}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
