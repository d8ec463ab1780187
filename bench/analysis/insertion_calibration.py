"""The insertion generator's per-class intensity bias, measured on *training* hosts: ``CLASS_BIAS``.

Each of ``--hosts`` real training cases gets the next one's tumour (``bench/synthesis/bench_insertion.py``'s
``donor_mask``, seed per host, temperature 1, no texture, **uncalibrated**:
``core.synthesis.insert.render(..., calibrated=False)``).
Per class (eroded by one voxel, at least 500 voxels) and modality: the mean z-score of the generated tumour (the host's
healthy statistics) minus that of the real tumour at the same voxels in the mask's own case (its healthy
statistics). The medians over the hosts are ``core.synthesis.calibration.CLASS_BIAS``; the validation split is never
read.

    .venv/bin/python bench/analysis/insertion_calibration.py [--hosts 12]
        [--json bench/results/synthesis/insertion_calibration.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.synthesis.bench_insertion import next_case_insertions, training_hosts_setup  # noqa: E402
from core.io.case import MODALITIES  # noqa: E402
from core.preprocessing.preprocess import brain_mask  # noqa: E402
from core.synthesis import region as rg  # noqa: E402
from core.synthesis.calibration import CLASS_BIAS  # noqa: E402
from core.synthesis.generate import sample_seed  # noqa: E402
from core.synthesis.insert import plan_insertion, render  # noqa: E402

MIN_VOXELS = 500


def zscores(image: np.ndarray, brain: np.ndarray, tumour: np.ndarray) -> np.ndarray:
    """``(4, X, Y, Z)`` z-scores of the healthy brain (outside the tumour dilated by 4 voxels)."""
    mean, std = rg.healthy_stats(image, brain, rg.dilate(tumour > 0, 4))
    return rg.normalise(image, brain, mean, std)


def main() -> int:
    setup = training_hosts_setup(__doc__, ROOT / "bench" / "results" / "synthesis" / "insertion_calibration.json")
    if setup is None:
        return 1
    args, model, cases = setup
    gaps: dict[int, list[list[float]]] = {label: [] for label in CLASS_BIAS}
    for i, host, donor, brain, target in next_case_insertions(cases):
        plan = plan_insertion(host, target)
        z = model.sample_latent(plan.crop_shape, seed=sample_seed(300 + i, 0), temperature=1.0)
        generated = render(plan, model, z, calibrated=False)  # the raw generator, no texture
        z_gen = zscores(generated, brain, target)
        z_real = zscores(donor.image, brain_mask(donor.image), donor.seg)
        for label in gaps:
            inner = ndimage.binary_erosion(target == label, iterations=1)
            if inner.sum() >= MIN_VOXELS:
                gaps[label].append((z_gen[:, inner].mean(1) - z_real[:, inner].mean(1)).round(3).tolist())
        print(f"host {host.name} <- {donor.name}", flush=True)
    summary = {str(label): {"hosts": len(rows), "median": np.median(rows, 0).round(2).tolist(),
                            "q25": np.percentile(rows, 25, 0).round(2).tolist(),
                            "q75": np.percentile(rows, 75, 0).round(2).tolist(), "shipped": list(CLASS_BIAS[label])}
               for label, rows in gaps.items()}
    for label, row in summary.items():
        print(label, row)
    result = {"what": "generated minus real mean z-score per class (1 NCR, 2 ED, 3 ET) and modality, same voxels, "
                      "training hosts, uncalibrated generator", "modalities": list(MODALITIES),
              "hosts": [c.name for c in cases], "summary": summary,
              "per_host": {str(label): rows for label, rows in gaps.items()}}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
