"""How visible each reference tumour class is per modality, and which validation tumours are fainter than training's.

For every labelled case, the contrast of a class in a modality is the class's mean intensity minus the healthy brain's
mean (brain voxels outside the reference tumour), in units of the healthy brain's standard deviation: a scanner- and
scale-free number (oedema in FLAIR is typically +1.5 to +5, enhancing tumour in T1ce +0.3 to +4). A validation case
whose contrast is **nearer the healthy brain than in every training case** shows a kind of tumour the U-Net never
saw: no postprocessing or tuning on the validation split will teach it that, more labelled training cases of that
kind would.

Usage (from the project root)::

    python -m bench.analysis.reference_contrast ../shared/data/brats-real \
        --val-cases train/splits/brats-real-validation.txt \
        --dice bench/results/segmentation/unet_validation.json --out bench/results/segmentation/reference_contrast.json

``--dice`` joins a ``train.evaluate`` JSON so that the report puts each validation case's Dice beside its contrasts.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from core.io.case import MODALITIES, load_case
from core.io.labels import BACKGROUND, CLASS_NAMES, ED, ET, NCR
from core.preprocessing.preprocess import brain_mask
from train.common import read_case_ids
from train.evaluate import select_folders

#: The (class, modality, sign) triples that carry a tumour class's usual signal: oedema is bright (+1) in FLAIR and
#: T2, the enhancing rim bright in T1ce, the necrotic / non-enhancing core dark (-1) in T1ce.
SIGNATURES: tuple[tuple[int, str, int], ...] = ((ED, "flair", 1), (ED, "t2", 1), (ET, "t1ce", 1), (NCR, "t1ce", -1))
MIN_CLASS_VOXELS = 50  # fewer reference voxels than this: no contrast reported for that class


def signature_key(label: int, modality: str) -> str:
    """Name of one (class, modality) pair in the report, e.g. ``"ED/flair"``."""
    return f"{CLASS_NAMES[label]}/{modality}"


def class_contrasts(image: np.ndarray, seg: np.ndarray, brain: np.ndarray | None = None,
                    signatures: Sequence[tuple[int, str, int]] = SIGNATURES) -> dict[str, float | None]:
    """Contrast of each (class, modality) pair, in healthy-brain standard deviations.

    Args:
        image: ``(4, X, Y, Z)`` in ``MODALITIES`` order.
        seg: internal labels ``(X, Y, Z)`` (0 background, 1 NCR, 2 ED, 3 ET).
        brain: brain mask; :func:`core.preprocessing.preprocess.brain_mask` of ``image`` when omitted.
        signatures: the (class, modality, sign) triples to report (the sign is not used here).

    Returns:
        ``{"ED/flair": 2.1, ...}``; ``None`` where the class has fewer than ``MIN_CLASS_VOXELS`` voxels.

    Raises:
        ValueError: shapes disagree, or no healthy brain voxel is left.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 4 or image.shape[0] != len(MODALITIES) or image.shape[1:] != seg.shape:
        raise ValueError(f"image {image.shape} and label map {seg.shape} do not match "
                         "(need (4, X, Y, Z) and (X, Y, Z))")
    brain = brain_mask(image) if brain is None else np.asarray(brain, dtype=bool)
    healthy = brain & (seg == BACKGROUND)
    if not healthy.any():
        raise ValueError("no healthy brain voxel: the brain mask lies inside the reference tumour")
    out: dict[str, float | None] = {}
    for label, modality, _ in signatures:
        channel = image[MODALITIES.index(modality)]
        inside = seg == label
        if inside.sum() < MIN_CLASS_VOXELS:
            out[signature_key(label, modality)] = None
            continue
        reference = channel[healthy]
        spread = float(reference.std())
        contrast = (float(channel[inside].mean()) - float(reference.mean())) / max(spread, 1e-8)
        out[signature_key(label, modality)] = round(contrast, 3)
    return out


def training_ranges(rows: Mapping[str, Mapping[str, float | None]]) -> dict[str, dict[str, float] | None]:
    """Min, median and max of each pair's contrast over the given (training) cases; ``None`` where no case has it."""
    keys = sorted({key for row in rows.values() for key in row})
    ranges: dict[str, dict[str, float] | None] = {}
    for key in keys:
        values = [row[key] for row in rows.values() if row.get(key) is not None]
        ranges[key] = ({"min": min(values), "median": round(float(np.median(values)), 3), "max": max(values)}
                       if values else None)
    return ranges


def fainter_than_training(row: Mapping[str, float | None], ranges: Mapping[str, Mapping[str, float] | None],
                          signatures: Sequence[tuple[int, str, int]] = SIGNATURES) -> list[str]:
    """Pairs whose contrast in ``row`` is nearer the healthy brain than in every training case.

    For a bright signature (sign +1) that is a contrast below the training minimum; for a dark one (-1), above the
    training maximum.
    """
    fainter = []
    for label, modality, sign in signatures:
        key = signature_key(label, modality)
        value, span = row.get(key), ranges.get(key)
        if value is None or span is None:
            continue
        if (sign > 0 and value < span["min"]) or (sign < 0 and value > span["max"]):
            fainter.append(key)
    return fainter


def _dice_by_case(path: Path | None) -> dict[str, dict[str, float]]:
    if path is None:
        return {}
    data = json.loads(path.read_text())
    return {c["case"]: {r: c[r]["dice"] for r in ("WT", "TC", "ET") if r in c} for c in data.get("cases", [])}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="folders of labelled cases (or case folders)")
    parser.add_argument("--val-cases", required=True, help="validation case ids: a file (one per line) or a,b,c")
    parser.add_argument("--dice", type=Path, help="a train.evaluate JSON whose per-case Dice to show beside")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)

    val_ids = set(read_case_ids(args.val_cases))
    rows: dict[str, dict[str, float | None]] = {}
    for folder in select_folders(args.roots):
        case = load_case(folder)
        if case.seg is None:
            continue
        rows[case.name] = class_contrasts(case.image, case.seg)
        print(f"{case.name:28s} " + "  ".join(f"{k} {v:+.2f}" if v is not None else f"{k}   n/a"
                                            for k, v in rows[case.name].items()), flush=True)
    missing = sorted(val_ids - set(rows))
    if missing:
        raise SystemExit(f"validation case(s) without a labelled folder under the roots: {', '.join(missing)}")
    training = {name: row for name, row in rows.items() if name not in val_ids}
    ranges = training_ranges(training)
    dice = _dice_by_case(args.dice)
    validation = [{"case": name, "contrast": rows[name],
                   "fainter_than_every_training_case": fainter_than_training(rows[name], ranges),
                   **({"dice": dice[name]} if name in dice else {})} for name in sorted(val_ids)]
    report = {"what": "tumour-class contrast per modality: (class mean - healthy brain mean) / healthy brain SD",
              "training_cases": len(training), "training_range": ranges, "validation": validation,
              "training": training}
    print(f"\ntraining range over {len(training)} cases: "
          + "  ".join(f"{k} {r['min']:+.2f}..{r['max']:+.2f}" for k, r in ranges.items() if r))
    for entry in validation:
        flags = ", ".join(entry["fainter_than_every_training_case"]) or "-"
        shown = "  ".join(f"{r} {d:.3f}" for r, d in entry.get("dice", {}).items())
        print(f"{entry['case']:28s} fainter than every training case: {flags:24s} {shown}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
