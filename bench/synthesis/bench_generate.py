"""Quality and speed of the conditional VAE (numbers for the README).

    .venv/bin/python bench/synthesis/bench_generate.py [--weights weights/cvae.keras] [--cases 4] [--samples 3]
        [--json PATH]

* **Reconstruction** (``core.synthesis.generate.reconstruct``, posterior mean): SSIM and PSNR per modality
  (``skimage.metrics``) on held-out phantoms (seeds from ``BENCH_SEED_START``, never trained on)
  and on the real case ``../shared/data/brats-real/BraTS-GLI-demo-0001`` when present. Both
  volumes are compared as z-scores inside the source's brain (the generator's output scale is
  mapped back with ``core.synthesis.cvae.INTENSITY_OFFSET/SCALE``), over the brain's bounding box, with
  ``data_range`` = the source's range there.
* **Conditioning fidelity**: the shipped U-Net (``weights/unet.keras``) segments a generated
  case; Dice (WT/TC/ET) against the conditioning mask. Masks come from the same unseen cases,
  generated with the template brain as in the app.
* **Diversity**: mean pairwise SSIM between ``--samples`` samples of one mask (lower = more diverse).
* **Speed**: seconds per generated 240x240x155 case (``generate_cases``, model loaded, warm).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from core.io.case import MODALITIES, Case, load_case  # noqa: E402
from core.io.labels import REGIONS, region_mask  # noqa: E402
from core.preprocessing.preprocess import bounding_box, brain_mask, zscore  # noqa: E402
from core.segmentation.metrics import dice  # noqa: E402
from core.synthesis import cvae  # noqa: E402
from core.synthesis.generate import default_cvae_path, generate_cases, load_cvae, reconstruct  # noqa: E402

REAL_DEMO = ROOT.parent / "shared" / "data" / "brats-real" / "BraTS-GLI-demo-0001"
BENCH_SEED_START = 1_100_000  # held-out phantom seeds (>= train.data.VALIDATION_SEED_START, apart from its val set)


def zscores_of(case: Case, brain: np.ndarray, generated: bool) -> np.ndarray:
    """``(4, X, Y, Z)`` z-scores inside ``brain``: a source case is z-scored, a generated one unmapped."""
    if generated:
        z = (case.image - cvae.INTENSITY_OFFSET) / cvae.INTENSITY_SCALE
        return np.where(brain, z, 0.0).astype(np.float32)
    return zscore(case.image, brain)


def image_scores(reference: np.ndarray, test: np.ndarray, brain: np.ndarray) -> dict[str, dict[str, float]]:
    """SSIM and PSNR per modality over the brain's bounding box."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    box = bounding_box(brain)
    scores = {}
    for m, name in enumerate(MODALITIES):
        ref, out = reference[m][box], test[m][box]
        data_range = float(ref.max() - ref.min()) or 1.0
        scores[name] = {"ssim": float(structural_similarity(ref, out, data_range=data_range)),
                        "psnr": float(peak_signal_noise_ratio(ref, out, data_range=data_range))}
    return scores


def reconstruction_scores(case: Case, model: cvae.ConditionalVAE) -> dict[str, dict[str, float]]:
    """SSIM/PSNR per modality of the model's reconstruction of ``case``."""
    brain = brain_mask(case.image) | (case.seg > 0)
    recon = reconstruct(case, model)
    return image_scores(zscores_of(case, brain, False), zscores_of(recon, brain, True), brain)


def fidelity_and_diversity(case: Case, model: cvae.ConditionalVAE, unet, samples: int, seed: int
                           ) -> tuple[dict[str, float] | None, float, float]:
    """(Dice per region of the U-Net on sample 0 or None, mean pairwise SSIM, seconds per sample)."""
    start = time.perf_counter()
    generated = generate_cases(case.seg, case.affine, case.header, model, n_samples=samples, seed=seed)
    seconds = (time.perf_counter() - start) / samples
    brain = generated[0].image[0] > 0
    z = [zscores_of(g, brain, True) for g in generated]
    pairs = [np.mean([s["ssim"] for s in image_scores(a, b, brain).values()]) for a, b in itertools.combinations(z, 2)]
    fidelity = None
    if unet is not None:
        from core.segmentation.inference import segment_case

        labels = segment_case(generated[0], unet).labels
        fidelity = {r: dice(region_mask(labels, r), region_mask(case.seg, r)) for r in REGIONS}
    return fidelity, float(np.mean(pairs)) if pairs else float("nan"), seconds


def _mean(dicts: list[dict]) -> dict:
    """Element-wise mean of (nested) dicts of floats."""
    first = dicts[0]
    if isinstance(first, dict):
        return {k: _mean([d[k] for d in dicts]) for k in first}
    return float(np.mean(dicts))


def main() -> int:
    parser = argparse.ArgumentParser(description="CVAE quality and speed benchmark.")
    parser.add_argument("--weights", type=Path, default=default_cvae_path())
    parser.add_argument("--unet", type=Path, default=None, help="U-Net for fidelity (default weights/unet.keras)")
    parser.add_argument("--cases", type=int, default=4, help="held-out phantoms (default %(default)s)")
    parser.add_argument("--samples", type=int, default=3, help="samples per mask for diversity (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    from core.segmentation.inference import ModelLoadError, default_unet_path, load_model
    from core.synthesis.phantom import generate_phantom

    model = load_cvae(args.weights)
    try:
        unet = load_model(args.unet or default_unet_path())
    except ModelLoadError as exc:
        print(f"no U-Net, fidelity skipped: {exc}")
        unet = None
    sources = [(f"phantom {BENCH_SEED_START + i}", generate_phantom(BENCH_SEED_START + i)) for i in range(args.cases)]
    if REAL_DEMO.is_dir():
        sources.append(("real BraTS-GLI-demo-0001", load_case(REAL_DEMO)))
    results: dict = {"weights": str(args.weights), "cases": {}}
    first = sources[0][1]
    generate_cases(first.seg, first.affine, first.header, model)  # warm-up: template brain, first-call set-up
    for name, case in sources:
        recon = reconstruction_scores(case, model)
        fidelity, diversity, seconds = fidelity_and_diversity(case, model, unet, args.samples, args.seed)
        results["cases"][name] = {"reconstruction": recon, "fidelity_dice": fidelity,
                                  "diversity_ssim": diversity, "seconds_per_sample": seconds}
        text = " ".join(f"{m} {s['ssim']:.3f}/{s['psnr']:.1f}dB" for m, s in recon.items())
        fid = " ".join(f"{r} {v:.3f}" for r, v in fidelity.items()) if fidelity else "-"
        print(f"{name}: recon SSIM/PSNR {text} | fidelity {fid} | diversity SSIM {diversity:.3f} | "
              f"{seconds:.2f} s/sample", flush=True)
    phantoms = [v for k, v in results["cases"].items() if k.startswith("phantom")]
    if phantoms:
        summary = {"reconstruction": _mean([p["reconstruction"] for p in phantoms]),
                   "diversity_ssim": _mean([p["diversity_ssim"] for p in phantoms]),
                   "seconds_per_sample": _mean([p["seconds_per_sample"] for p in phantoms])}
        if phantoms[0]["fidelity_dice"] is not None:
            summary["fidelity_dice"] = _mean([p["fidelity_dice"] for p in phantoms])
        results["phantom_mean"] = summary
        print("phantom mean:", json.dumps(summary, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
