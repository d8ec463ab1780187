"""Where the insertion's T1 "wavy bands" come from: ``docs/insertion_t1_bands.png``.

One validation host (Brats18_2013_11_1) and the first training case's tumour (as ``bench_realism.py``); T1, axial
slice through the target's largest cross-section, the host's 0.5 / 99.5 window. Panels, left to right: the host; the
fill from the sampled latent (temperature 1) without the host-matched noise; the same with it; the fill from the
mean latent (temperature 0) without noise.

    .venv/bin/python bench/synthesis/t1_bands.py [--out docs/insertion_t1_bands.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.synthesis.bench_insertion import donor_mask, split  # noqa: E402
from core.io.case import load_case  # noqa: E402
from core.preprocessing.preprocess import brain_mask  # noqa: E402
from core.synthesis.generate import sample_seed  # noqa: E402
from core.synthesis.insert import default_insertion_path, fill, load_insertion_model, place, plan_insertion  # noqa: E402,E501


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "insertion_t1_bands.png")
    args = parser.parse_args()
    train, val = split()
    host, donor = load_case(val[0]), load_case(train[0])
    brain = brain_mask(host.image)
    target = donor_mask(donor, brain)
    model = load_insertion_model(default_insertion_path())
    plan = plan_insertion(host, target)
    z1 = model.sample_latent(plan.crop_shape, seed=sample_seed(0, 0), temperature=1.0)
    z0 = model.sample_latent(plan.crop_shape, seed=sample_seed(0, 0), temperature=0.0)
    panels = [host.image, place(plan, fill(plan, model, z1, texture=0.0)),
              place(plan, fill(plan, model, z1, texture=1.0, texture_seed=sample_seed(0, 0))),
              place(plan, fill(plan, model, z0, texture=0.0))]
    z = int(np.argmax((target > 0).sum(axis=(0, 1))))
    cx, cy = (int(v) for v in np.argwhere(target[:, :, z] > 0).mean(axis=0))
    xs, ys = slice(max(cx - 64, 0), cx + 64), slice(max(cy - 64, 0), cy + 64)
    lo, hi = np.percentile(host.image[0][brain], (0.5, 99.5))
    tiles = [np.rot90(np.clip((p[0][xs, ys, z] - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8))[:, ::-1]
             for p in panels]
    row = np.concatenate(tiles, axis=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(row)).resize((row.shape[1] * 2, row.shape[0] * 2)).save(args.out)
    print(f"wrote {args.out}: host | temperature 1, no noise | temperature 1 + noise | temperature 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
