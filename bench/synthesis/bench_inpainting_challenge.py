"""Healthy-tissue fills scored two ways: this project's R-metric and the BraTS inpainting challenge's own code.

    .venv/bin/pip install -r bench/requirements-bench.txt   # torch (CPU), torchmetrics, inpainting
    .venv/bin/python bench/synthesis/bench_inpainting_challenge.py [--weights weights/insertion.keras] [--fills 3]
        [--json bench/results/synthesis/inpainting_challenge.json]

The README compared the insertion model's healthy fills (SSIM / PSNR inside R, ``region_ssim_psnr``: images scaled
by the host's 0.5 / 99.5 *brain* percentiles, SSIM map of the unmasked images) with the BraTS 2024 inpainting
winner's SSIM 0.84 / PSNR 23.3. The challenge scores differently (``inpainting.challenge_metrics_2023``, the
official package): both images are multiplied by the mask (zero outside it), scaled by the 0.5 / 99.5 percentiles
of the *voided* image (its background zeros included, the lower bound clipped at 0), SSIM is torchmetrics' on the
``[1, X, Y, Z]`` tensor (2-D Gaussian windows over Y-Z slices, X taken as channels), averaged over the mask, and
PSNR uses the masked target's own maximum as the peak. This bench scores the same fills both ways, so the number
put beside the winner's is the challenge's, and scores two trivial fills alongside to show the scale of each metric:

* ``model``: the shipped insertion model's healthy fill (empty target, R = a training tumour's shape moved into the
  host's healthy tissue and dilated as the app does, temperature 0);
* ``constant``: R filled with the median of the host's brain in a 5-voxel shell around R, per modality;
* ``mirror``: R filled with the host's voxels mirrored left-right about the brain's centre (contralateral tissue).

Real validation hosts only (``train/splits/brats-real-validation.txt``, never trained on). The challenge's task
and score are T1 (``t1n``) only; this project's metric is reported for all four modalities.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.synthesis.bench_insertion import REAL, healthy_region, split  # noqa: E402
from core.io.case import MODALITIES, Case, load_case  # noqa: E402
from core.preprocessing.preprocess import brain_mask  # noqa: E402
from core.synthesis import region as rg  # noqa: E402
from core.synthesis.insert import default_insertion_path, insert_tumour, load_insertion_model, plan_insertion  # noqa: E402,E501

METHODS = ("model", "constant", "mirror")


def constant_fill(image: np.ndarray, region: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """``R`` replaced by the per-modality median of the brain in a 5-voxel shell around it."""
    shell = rg.dilate(region, 5) & ~region & brain
    out = image.copy()
    for c in range(image.shape[0]):
        out[c][region] = np.median(image[c][shell])
    return out


def mirror_fill(image: np.ndarray, region: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """``R`` replaced by the host's voxels mirrored left-right about the brain's centre along axis 0."""
    centre = np.argwhere(brain)[:, 0].mean()
    x = np.arange(image.shape[1])
    mirrored_x = np.clip(np.rint(2 * centre - x).astype(int), 0, image.shape[1] - 1)
    out = image.copy()
    out[:, region] = image[:, mirrored_x][:, region]
    return out


def challenge_scores(truth: np.ndarray, result: np.ndarray, region: np.ndarray) -> dict[str, float]:
    """The official ``inpainting.challenge_metrics_2023.generate_metrics`` on T1 (SSIM, PSNR, PSNR 0-1).

    T1 (``t1n``) is the challenge's one modality; each call costs ~5 s here (torchmetrics' SSIM over the whole
    240-channel grid), so the other modalities get this project's metric only.
    """
    import torch
    from inpainting.challenge_metrics_2023 import generate_metrics

    mask = torch.from_numpy(np.asarray(region, bool)).unsqueeze(0)
    t1 = MODALITIES.index("t1")
    target = torch.from_numpy(np.ascontiguousarray(truth[t1], np.float32)).unsqueeze(0)
    prediction = torch.from_numpy(np.ascontiguousarray(result[t1], np.float32)).unsqueeze(0)
    metrics = generate_metrics(prediction=prediction, target=target, normalization_tensor=target * ~mask, mask=mask)
    return {key: round(float(metrics[key]), 4) for key in ("ssim", "psnr", "psnr_01")}


def fills(host: Case, region: np.ndarray, brain: np.ndarray, model, empty: np.ndarray, fill_shape: np.ndarray,
          methods: Sequence[str] = METHODS) -> dict[str, np.ndarray]:
    """The fills of ``R`` named in ``methods`` on the host's grid."""
    makers = {"model": lambda: insert_tumour(host, empty, model, temperature=0.0, host_tumour=fill_shape)[0].image,
              "constant": lambda: constant_fill(host.image, region, brain),
              "mirror": lambda: mirror_fill(host.image, region, brain)}
    return {name: makers[name]() for name in methods}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=default_insertion_path())
    parser.add_argument("--fills", type=int, default=3, help="fill regions per validation host")
    parser.add_argument("--json", type=Path,
                        default=ROOT / "bench" / "results" / "synthesis" / "inpainting_challenge.json")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="fills to score (default: all; 'model' alone to compare insertion models quickly)")
    args = parser.parse_args()
    if not REAL.is_dir():
        print(f"real data not found at {REAL}")
        return 1
    try:
        import inpainting.challenge_metrics_2023  # noqa: F401
    except ImportError as exc:
        print(f"{exc}: pip install -r bench/requirements-bench.txt")
        return 1
    model = load_insertion_model(args.weights)
    train_folders, val_folders = split()
    donors = [load_case(f) for f in train_folders[:6]]
    rng = np.random.default_rng(7)
    rows = []
    for folder in val_folders:
        host = load_case(folder)
        brain = brain_mask(host.image)
        empty = np.zeros(host.shape, np.uint8)
        for k in range(args.fills):
            shape = np.zeros(host.shape, bool)
            for d in range(len(donors)):  # the next donor whose tumour shape fits into this host's healthy tissue
                shape = healthy_region(host, donors[(k + d + len(rows)) % len(donors)], rng)
                if shape.any():
                    break
            if not shape.any():
                continue
            region = plan_insertion(host, empty, host_tumour=shape).region_on_host()
            row = {"host": host.name, "fill": k, "R_ml": round(float(region.sum()) * float(np.prod(host.spacing))
                                                                / 1000, 1)}
            for name, image in fills(host, region, brain, model, empty, shape, args.methods).items():
                changed = int((image[:, ~region] != host.image[:, ~region]).sum())
                if changed:
                    raise AssertionError(f"{name} fill changed {changed} voxels outside R")
                row[name] = {"ours": rg.region_ssim_psnr(host.image, image, region, brain),
                             "challenge": challenge_scores(host.image, image, region)}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k in ("host", "fill", "R_ml")}),
                  {m: (row[m]["ours"]["ssim"][0], row[m]["challenge"]["ssim"]) for m in args.methods}, flush=True)

    def ours(method: str, metric: str) -> list[float]:
        return [round(float(np.mean([r[method]["ours"][metric][c] for r in rows])), 4) for c in range(len(MODALITIES))]

    def challenge(method: str, metric: str) -> float:
        return round(float(np.mean([r[method]["challenge"][metric] for r in rows])), 4)

    summary = {m: {"ours_ssim": ours(m, "ssim"), "ours_psnr": ours(m, "psnr"), "challenge_t1_ssim":
                   challenge(m, "ssim"), "challenge_t1_psnr": challenge(m, "psnr"),
                   "challenge_t1_psnr_01": challenge(m, "psnr_01")} for m in args.methods}
    result = {"weights": str(args.weights), "modalities": list(MODALITIES), "fills": len(rows),
              "hosts": [f.name for f in val_folders], "summary": summary, "rows": rows}
    print(json.dumps(summary, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
