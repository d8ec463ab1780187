"""Benchmark: the same U-Net weights in float32 and in mixed bfloat16 (not a test).

For each dtype policy the weights are loaded into a fresh ``core.segmentation.unet.build_unet`` of the card's
architecture, every validation case is segmented with ``core.segmentation.inference.segment_case`` and scored
(region Dice and HD95), and the forward pass on each brain crop is timed (median of ``--runs``
after a warm-up). The answer to "keep bfloat16 where Dice holds" is the per-region Dice difference.

Usage::

    python bench/segmentation/bench_precision.py ../shared/data/brats-real \\
        --cases train/splits/brats-real-validation.txt \\
        [--weights weights/unet.keras] [--runs 2] [--out bench/results/segmentation/precision.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from core.io.case import load_case  # noqa: E402
from core.io.labels import REGIONS  # noqa: E402
from core.preprocessing.preprocess import prepare_input  # noqa: E402
from core.segmentation import unet  # noqa: E402
from core.segmentation.inference import BRAIN_MARGIN, downsampling_factor, load_model, load_model_card, segment_case  # noqa: E402
from core.segmentation.metrics import region_metrics  # noqa: E402
from train.common import read_case_ids  # noqa: E402
from train.evaluate import select_folders  # noqa: E402

import keras  # noqa: E402

POLICIES = ("float32", "mixed_bfloat16")


def model_with_policy(weights: Path, policy: str) -> keras.Model:
    """The U-Net at ``weights`` rebuilt under the dtype ``policy`` (same weights)."""
    source = load_model(weights, backend="tensorflow")
    arch = (load_model_card(weights) or {}).get("architecture", {})
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = unet.build_unet(base_filters=arch.get("base_filters", 16), depth=arch.get("depth", 4),
                                norm=arch.get("norm", "instance"), regions=unet.is_region_model(source))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.set_weights(source.get_weights())
    return model


def run_policy(weights: Path, policy: str, cases: list, runs: int) -> dict:
    """Dice/HD95 per case and the median forward time under ``policy``."""
    model = model_with_policy(weights, policy)
    per_case, forward = [], []
    for case in cases:
        volume, _, _ = prepare_input(case.image, multiple=downsampling_factor(model), margin=BRAIN_MARGIN)
        model.predict_on_batch(volume[None])  # warm-up (graph for this shape)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model.predict_on_batch(volume[None])
            times.append(time.perf_counter() - start)
        forward.append(statistics.median(times))
        metrics = region_metrics(segment_case(case, model).labels, case.seg, case.spacing)
        per_case.append({"case": case.name, **{r: {m: round(metrics[r][m], 4) for m in ("dice", "hd95")}
                                               for r in REGIONS}})
    mean = {r: {m: float(np.mean([c[r][m] for c in per_case])) for m in ("dice", "hd95")} for r in REGIONS}
    return {"policy": policy, "cases": per_case, "mean": mean, "forward_median_s": float(np.median(forward))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("roots", type=Path, nargs="+", help="folder(s) of labelled case folders")
    parser.add_argument("--cases", default=None, help="case ids (comma-separated or a file)")
    parser.add_argument("--weights", type=Path, default=ROOT / "weights" / "unet.keras")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "segmentation" / "precision.json")
    args = parser.parse_args()
    folders = select_folders(args.roots, read_case_ids(args.cases) if args.cases else None)
    cases = [c for c in (load_case(f) for f in folders) if c.seg is not None]
    results = {p: run_policy(args.weights, p, cases, args.runs) for p in POLICIES}
    f32, bf16 = results["float32"], results["mixed_bfloat16"]
    report = {"weights": str(args.weights), "cases": [c.name for c in cases], "results": results,
              "dice_bf16_minus_f32": {r: round(bf16["mean"][r]["dice"] - f32["mean"][r]["dice"], 4) for r in REGIONS},
              "forward_speedup_bf16": round(f32["forward_median_s"] / bf16["forward_median_s"], 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print("| policy | " + " | ".join(f"{r} Dice" for r in REGIONS) + " | forward (median) |")
    print("|---" * (len(REGIONS) + 2) + "|")
    for p in POLICIES:
        r = results[p]
        print(f"| {p} | " + " | ".join(f"{r['mean'][g]['dice']:.4f}" for g in REGIONS)
              + f" | {r['forward_median_s']:.2f} s |")
    print(f"bf16 - f32 Dice: {report['dice_bf16_minus_f32']}; forward speed-up {report['forward_speedup_bf16']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
