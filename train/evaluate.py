"""Evaluate a U-Net on labelled case folders: ``python -m train.evaluate``.

Usage::

    python -m train.evaluate CASES_ROOT [CASES_ROOT ...] --out report.json [--cases IDS|FILE]
        [--weights weights/unet.keras] [--tta]
    # the real validation split
    python -m train.evaluate ../shared/data/brats-real --cases train/splits/brats-real-validation.txt --out val.json

Each ``CASES_ROOT`` is a folder of BraTS case folders (2020 or 2023 naming; e.g. the output of
``python -m core.phantom``) or one case folder; ``--cases`` keeps only the named cases
(comma-separated ids or a file with one id per line). Every case with a segmentation is segmented
with ``core.segmentation.inference.segment_case`` and scored with ``core.segmentation.metrics.region_metrics``
(Dice and HD95 for WT/TC/ET) and ``core.segmentation.metrics.lesion_wise_metrics`` (BraTS 2023 lesion-wise
Dice/HD95); cases
without a segmentation (or that fail to load) are skipped with a note. The JSON report holds
per-case results and, per region, the mean (with a 95 % bootstrap interval over the cases: with 6 cases it is wide),
median and worst case (lowest Dice, highest HD95). ``python -m train.compare A.json B.json`` says whether two such
reports differ by more than the case-to-case noise.
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

from core.io.case import CaseError, load_case
from core.io.labels import REGIONS
from core.io.nifti import NiftiError
from core.segmentation.inference import ModelLoadError, default_unet_path, load_model, load_model_card, segment_case
from core.segmentation.metrics import lesion_wise_metrics, region_metrics
from train.common import folders_named, read_case_ids
from train.compare import mean_ci
from train.data import case_folders

REPORTED = ("dice", "hd95")
LESION_REPORTED = ("lesion_dice", "lesion_hd95")


def select_folders(roots: Sequence[Path], ids: Sequence[str] | None = None) -> list[Path]:
    """Case folders under ``roots`` (each a folder of cases or one case), optionally only those named ``ids``.

    Raises:
        SystemExit: an id names no case folder under the roots.
    """
    folders = [folder for root in roots for folder in case_folders(root)]
    if ids is None:
        return folders
    return folders_named(folders, ids, "--cases", f"under {', '.join(map(str, roots))}")


def summarise(cases: Sequence[dict]) -> dict:
    """Per region and metric: mean with its 95 % bootstrap interval over cases, median, and the worst case (lowest
    Dice, highest HD95) with its id."""
    out: dict = {}
    for region in REGIONS:
        out[region] = {}
        for metric in (*REPORTED, *LESION_REPORTED):
            values = np.array([c[region][metric] for c in cases], dtype=float)
            worst = int(np.argmax(values) if "hd95" in metric else np.argmin(values))
            low, high = mean_ci(values)
            out[region][metric] = {"mean": float(values.mean()), "mean_ci95": [round(low, 4), round(high, 4)],
                                   "median": float(np.median(values)),
                                   "worst": float(values[worst]), "worst_case": cases[worst]["case"]}
    return out


def evaluate(roots: Path | Sequence[Path], model, *, ids: Sequence[str] | None = None, tta: bool | str = False,
             quiet: bool = False) -> dict:
    """Per-case Dice/HD95 (WT, TC, ET, also lesion-wise) of ``model`` over the labelled cases under ``roots``."""
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    cases, skipped = [], []
    folders = select_folders([Path(r) for r in roots], ids)
    for folder in tqdm(folders, desc="evaluate", unit="case", disable=quiet, file=sys.stderr):
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
        lesions = lesion_wise_metrics(result.labels, case.seg, case.spacing)
        cases.append({
            "case": case.name,
            "seconds": round(result.seconds, 2),
            **{r: {**{m: round(float(metrics[r][m]), 4) for m in REPORTED},
                   "lesion_dice": round(lesions[r]["dice"], 4), "lesion_hd95": round(lesions[r]["hd95"], 4)}
               for r in REGIONS},
        })
    summary = summarise(cases) if cases else None
    mean = ({r: {m: summary[r][m]["mean"] for m in (*REPORTED, *LESION_REPORTED)} for r in REGIONS}
            if summary else None)
    return {
        "cases": cases,
        "mean": mean,
        "summary": summary,
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
    if report["summary"]:
        for stat in ("mean", "median", "worst"):
            cells = " | ".join(f"{report['summary'][r]['dice'][stat]:.3f} | {report['summary'][r]['hd95'][stat]:.1f}"
                               for r in REGIONS)
            seconds = f"{report['mean_seconds']:.1f}" if stat == "mean" else ""
            rows.append(f"| **{stat}** | {cells} | {seconds} |")
        interval = {"dice": "{:.3f} .. {:.3f}", "hd95": "{:.1f} .. {:.1f}"}
        cells = " | ".join(interval[m].format(*report["summary"][r][m]["mean_ci95"]) for r in REGIONS for m in REPORTED)
        rows.append(f"| **mean, 95 % CI over cases** | {cells} | |")
        cells = " | ".join(f"{report['mean'][r]['lesion_dice']:.3f} | {report['mean'][r]['lesion_hd95']:.1f}"
                           for r in REGIONS)
        rows.append(f"| **mean, lesion-wise** | {cells} | |")
    rows += [f"skipped {s['case']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (exit 2 on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("cases_root", type=Path, nargs="+", help="folder(s) of case folders, or case folders")
    parser.add_argument("--cases", default=None,
                        help="only these case ids (comma-separated, or a file with one id per line)")
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    parser.add_argument("--weights", type=Path, default=default_unet_path(), help="U-Net .keras (default %(default)s)")
    parser.add_argument("--tta", nargs="?", const="full", default="off", choices=("off", "lr", "full"),
                        help="mirror test-time augmentation: 'full' (8 passes; the default when given without a "
                             "value) or 'lr' (left-right mirror only, 2 passes)")
    args = parser.parse_args(argv)
    for root in args.cases_root:
        if not root.is_dir():
            print(f"error: {root} is not a folder", file=sys.stderr)
            return 2
    try:
        model = load_model(args.weights)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    ids = read_case_ids(args.cases) if args.cases else None
    report = evaluate(args.cases_root, model, ids=ids, tta=args.tta)
    card = load_model_card(args.weights)
    report.update({
        "weights": str(args.weights),
        "weights_step": card.get("step") if card else None,
        "tta": args.tta,
        "cases_root": [str(r) for r in args.cases_root],
        "case_ids": ids,
        "wall_time_s": round(time.perf_counter() - start, 1),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    if not report["cases"]:
        print(f"error: no case with a segmentation under {', '.join(map(str, args.cases_root))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
