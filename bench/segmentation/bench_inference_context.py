"""Whole-volume vs patch-sized inference: does the U-Net see a brain crop like its training patches?

A U-Net trained on small patches (phases 1–2: 64³, half centred on tumour) with instance
normalisation is applied by ``core.segmentation.inference`` to the whole brain crop (~144×192×144) in one pass.
This benchmark measures what that costs, per case, on labelled case folders (the committed
``bench/results/segmentation/inference_context.json`` is the phase-2 run; the shipped phase-3 file trains on 128³):

* ``whole``: ``core.segmentation.inference.predict_volume`` (what the app and the CLI do);
* ``sliding``: Gaussian-blended ``--window``³ windows at ``--overlap`` (nnU-Net style);
* ``refine``: the whole pass, then sliding windows only where the whole pass found tumour
  (windows whose central block holds a voxel with P(tumour) > 0.5), blended over the whole
  pass with weight ``--prior``.

Usage::

    python -m bench.segmentation.bench_inference_context ROOT[,ROOT...] \
        --out bench/results/segmentation/inference_context.json
    python -m bench.segmentation.bench_inference_context ../shared/data/brats-real \
        --cases train/splits/brats-real-validation.txt --window 128 \
        --out bench/results/segmentation/inference_context_real.json

Region-based U-Nets (three sigmoids) are decoded as ``core.segmentation.inference`` does.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from core.io.case import load_case
from core.io.labels import BACKGROUND, REGIONS
from core.preprocessing.preprocess import prepare_input
from core.segmentation.inference import (
    BRAIN_MARGIN,
    downsampling_factor,
    load_model,
    outputs_to_labels,
    postprocess_labels,
    predict_volume,
)
from core.segmentation.metrics import region_metrics
from train.common import read_case_ids
from train.data import case_folders
from train.evaluate import select_folders

Window = tuple[slice, slice, slice]


def gaussian_weight(size: int, sigma_scale: float = 0.125) -> np.ndarray:
    """nnU-Net's Gaussian importance map for a cubic window (peak 1)."""
    g = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / (size * sigma_scale)) ** 2)
    return (g[:, None, None] * g[None, :, None] * g[None, None, :]).astype(np.float32)


def window_grid(shape: tuple[int, ...], size: int, stride: int) -> list[Window]:
    """Windows of edge ``size`` every ``stride`` voxels, the last one flush with the far border."""
    starts = []
    for n in shape:
        s = list(range(0, max(n - size, 0) + 1, stride))
        if s[-1] != max(n - size, 0):
            s.append(max(n - size, 0))
        starts.append(s)
    return [tuple(slice(a, a + size) for a in st) for st in itertools.product(*starts)]


def blend_windows(model, volume: np.ndarray, windows: list[Window], size: int, base: np.ndarray | None = None,
                  prior: float = 0.0, batch: int = 4) -> np.ndarray:
    """Gaussian-weighted average of window predictions, over ``prior`` × ``base`` if given."""
    shape = volume.shape[:3]
    weight = gaussian_weight(size)
    total = base * prior if base is not None else None
    norm = np.full(shape, prior if base is not None else 1e-6, np.float32)
    for i in range(0, len(windows), batch):
        chunk = windows[i:i + batch]
        probs = np.asarray(model.predict_on_batch(np.stack([volume[w] for w in chunk])), dtype=np.float32)
        if total is None:
            total = np.zeros(shape + probs.shape[-1:], np.float32)
        for w, p in zip(chunk, probs):
            total[w] += p * weight[..., None]
            norm[w] += weight
    return total / norm[..., None]


def tumour_windows(p_whole: np.ndarray, size: int, stride: int, regions: bool = False) -> list[Window]:
    """Grid windows whose central ``stride``³ block holds a voxel the whole pass calls tumour."""
    tumour = p_whole[..., 0] > 0.5 if regions else p_whole[..., BACKGROUND] < 0.5
    half, centre = stride // 2, size // 2
    chosen = []
    for w in window_grid(tumour.shape, size, stride):
        block = tuple(slice(max(s.start + centre - half, 0), s.start + centre + half) for s in w)
        if tumour[block].any():
            chosen.append(w)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("roots", help="comma-separated folders of labelled case folders")
    parser.add_argument("--cases", default=None, help="only these case ids (comma-separated, or a file of ids)")
    parser.add_argument("--weights", default="weights/unet.keras")
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--prior", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=Path("bench/results/segmentation/inference_context.json"))
    args = parser.parse_args()
    model = load_model(args.weights, backend="tensorflow")
    regions = model.outputs[0].shape[-1] == len(REGIONS)
    ids = read_case_ids(args.cases) if args.cases else None
    roots = [Path(r) for r in args.roots.split(",")]
    folders = select_folders(roots, ids) if ids else [f for r in roots for f in case_folders(r)]
    stride = int(args.window * (1 - args.overlap))
    rows = {}
    for folder in folders:
        case = load_case(folder)
        x, box, brain = prepare_input(np.asarray(case.image), multiple=downsampling_factor(model),
                                      margin=BRAIN_MARGIN)
        brain_crop = box.apply(brain).astype(bool)
        t = time.perf_counter()
        p_whole = predict_volume(model, x)
        modes = {"whole": (p_whole, time.perf_counter() - t, 0)}
        t = time.perf_counter()
        grid = window_grid(x.shape[:3], args.window, stride)
        modes["sliding"] = (blend_windows(model, x, grid, args.window), time.perf_counter() - t, len(grid))
        t = time.perf_counter()
        chosen = tumour_windows(p_whole, args.window, stride, regions)
        p_ref = blend_windows(model, x, chosen, args.window, p_whole, args.prior) if chosen else p_whole
        modes["refine"] = (p_ref, modes["whole"][1] + time.perf_counter() - t, len(chosen))
        row = {}
        for name, (probs, seconds, windows) in modes.items():
            labels = postprocess_labels(outputs_to_labels(probs, regions), case.spacing, brain_crop)
            m = region_metrics(box.invert(labels, fill=BACKGROUND), case.seg, case.spacing)
            row[name] = {**{r: round(float(m[r]["dice"]), 4) for r in REGIONS},
                         "seconds": round(seconds, 2), "windows": windows}
        rows[case.name] = row
        print(case.name, " | ".join(f"{k} " + " ".join(f"{r} {v[r]:.3f}" for r in REGIONS) + f" {v['seconds']:.1f}s"
                                    for k, v in row.items()), flush=True)
    mean = {mode: {k: round(float(np.mean([r[mode][k] for r in rows.values()])), 4)
                   for k in (*REGIONS, "seconds", "windows")} for mode in ("whole", "sliding", "refine")}
    print(json.dumps(mean, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"weights": args.weights, "cases_filter": args.cases, "window": args.window, "overlap": args.overlap,
              "prior": args.prior, "mean": mean, "cases": rows}
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
