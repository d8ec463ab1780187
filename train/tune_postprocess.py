"""Tune the U-Net's postprocessing on labelled validation cases: ``python -m train.tune_postprocess``.

Usage::

    python -m train.tune_postprocess ../shared/data/brats-real --cases train/splits/brats-real-validation.txt \\
        --weights weights/unet.keras --out bench/results/segmentation/postprocess_validation.json [--tta]

The network runs once per case (its outputs are kept on the brain crop); every combination of the
grid below is then decoded, postprocessed with ``core.segmentation.inference.postprocess_labels`` and scored
(region Dice and HD95), so the search costs one forward pass per case. The grid is small on purpose:
the validation split has only a handful of cases and every knob tuned on it makes its numbers more
optimistic.

* ``min_et_ml``: total ET below this becomes NCR (0 = off);
* ``min_component_ml``: whole-tumour components below this are removed;
* ``min_component_fraction``: ... and those below this fraction of the largest (0 = off);
* ``threshold``: the sigmoid threshold of a region-based model (ignored for a class model).

The JSON report lists every combination's mean Dice/HD95 and the best one (highest mean Dice over
WT/TC/ET; ties keep the current defaults).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from tqdm import tqdm

from core.io.case import load_case
from core.io.labels import BACKGROUND, REGIONS
from core.preprocessing.preprocess import prepare_input
from core.segmentation import inference
from core.segmentation.metrics import region_metrics
from train.common import read_case_ids
from train.evaluate import select_folders

GRID: dict[str, tuple[float, ...]] = {
    "min_et_ml": (0.0, 0.5, 1.0),
    "min_component_ml": (0.1, 1.0, 5.0),
    "min_component_fraction": (0.0, 0.1, 0.25, 0.5),
    "threshold": (0.4, 0.5, 0.6),
}
DEFAULTS = {"min_et_ml": inference.MIN_ET_ML, "min_component_ml": inference.MIN_COMPONENT_ML,
            "min_component_fraction": inference.MIN_COMPONENT_FRACTION, "threshold": inference.REGION_THRESHOLD}


def network_outputs(case, model, *, tta: bool) -> dict:
    """Raw outputs of ``model`` on the brain crop of ``case`` plus what decoding needs."""
    net_input, box, brain = prepare_input(case.image, multiple=inference.downsampling_factor(model),
                                          margin=inference.BRAIN_MARGIN)
    outputs = inference.predict_volume(model, net_input, tta=tta)
    ref = box.apply(case.seg) if case.seg is not None else None
    # Score on the crop (much cheaper) when the reference lies wholly inside it, else on the case grid.
    inside = ref is not None and np.count_nonzero(ref) == np.count_nonzero(case.seg)
    return {"outputs": outputs, "box": box, "brain": box.apply(brain).astype(bool), "case": case,
            "ref": ref if inside else case.seg, "on_crop": inside}


def decode(item: dict, params: dict, regions: bool) -> np.ndarray:
    """Postprocessed label map for one parameter combination (on the crop when ``item["on_crop"]``)."""
    outputs = item["outputs"]
    labels = inference.outputs_to_labels(outputs, regions, params["threshold"])
    labels = inference.postprocess_labels(labels, item["case"].spacing, item["brain"],
                                          min_component_ml=params["min_component_ml"],
                                          min_component_fraction=params["min_component_fraction"],
                                          min_et_ml=params["min_et_ml"])
    return labels if item["on_crop"] else item["box"].invert(labels, fill=BACKGROUND)


def parse_grid(values: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """``--grid KEY=V1,V2,...`` options as a grid (only these keys vary; the others stay at their defaults).

    Raises:
        SystemExit: an unknown key or a value that is not a number.
    """
    grid = {}
    for value in values:
        key, _, numbers = value.partition("=")
        if key not in GRID:
            raise SystemExit(f"error: --grid {value}: unknown key {key!r} (one of {', '.join(GRID)})")
        try:
            grid[key] = tuple(float(v) for v in numbers.split(",") if v.strip())
        except ValueError:
            raise SystemExit(f"error: --grid {value}: give numbers, e.g. {key}=0,0.5,1") from None
        if not grid[key]:
            raise SystemExit(f"error: --grid {value}: no value given")
    return grid


def search(items: Sequence[dict], regions: bool, grid: dict[str, tuple[float, ...]] | None = None) -> list[dict]:
    """Mean Dice/HD95 per region for every combination of ``grid`` (default :data:`GRID`)."""
    grid = GRID if grid is None else grid
    keys = list(grid) if regions else [k for k in grid if k != "threshold"]
    results = []
    for values in tqdm(list(itertools.product(*(grid[k] for k in keys))), desc="grid", file=sys.stderr):
        params = {**DEFAULTS, **dict(zip(keys, values))}
        scores = [region_metrics(decode(item, params, regions), item["ref"], item["case"].spacing)
                  for item in items]
        mean = {r: {m: float(np.mean([s[r][m] for s in scores])) for m in ("dice", "hd95")} for r in REGIONS}
        results.append({"params": params, "mean": mean,
                        "mean_dice": float(np.mean([mean[r]["dice"] for r in REGIONS])),
                        "per_case_dice": {item["case"].name: {r: round(s[r]["dice"], 4) for r in REGIONS}
                                          for item, s in zip(items, scores)}})
    return results


def best(results: Sequence[dict]) -> dict:
    """The combination with the highest mean Dice; the current defaults win ties."""
    top = max(r["mean_dice"] for r in results)
    tied = [r for r in results if r["mean_dice"] >= top - 1e-9]
    return next((r for r in tied if r["params"] == DEFAULTS), tied[0])


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m train.tune_postprocess", description=__doc__.split("\n")[0])
    parser.add_argument("cases_root", type=Path, nargs="+", help="folder(s) of labelled case folders")
    parser.add_argument("--cases", default=None, help="case ids (comma-separated or a file, one per line)")
    parser.add_argument("--weights", type=Path, default=inference.default_unet_path())
    parser.add_argument("--tta", action="store_true", help="mirror test-time augmentation")
    parser.add_argument("--out", type=Path, required=True, help="JSON report")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="search only these values of KEY (repeatable; keys not given stay at their defaults), "
                             "e.g. --grid min_et_ml=0,0.5,1,2,5 for the absent-enhancement threshold alone "
                             f"(default: the whole grid {GRID})")
    args = parser.parse_args(argv)
    grid = parse_grid(args.grid) if args.grid else GRID
    model = inference.load_model(args.weights)
    regions = inference.is_region_output(model)
    folders = select_folders(args.cases_root, read_case_ids(args.cases) if args.cases else None)
    items = [network_outputs(load_case(f), model, tta=args.tta)
             for f in tqdm(folders, desc="predict", unit="case", file=sys.stderr)]
    items = [i for i in items if i["case"].seg is not None]
    results = search(items, regions, grid)
    chosen = best(results)
    default = next((r for r in results if all(r["params"][k] == DEFAULTS[k] for k in r["params"])), None)
    report = {"weights": str(args.weights), "tta": args.tta, "cases": [i["case"].name for i in items],
              "region_model": regions, "grid": grid, "defaults": default, "best": chosen, "all": results,
              "created": datetime.now(UTC).isoformat(timespec="seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, r in (("defaults", default), ("best", chosen)):
        if r is None:
            print(f"{name}: not in the grid")
            continue
        cells = " ".join(f"{reg} {r['mean'][reg]['dice']:.3f}/{r['mean'][reg]['hd95']:.1f}" for reg in REGIONS)
        print(f"{name}: {r['params']} -> {cells} (mean Dice {r['mean_dice']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
