"""Realism of insertion samples checked on *training* hosts only: host-wise cross-validated patch classifiers.

The validation bench (``bench/synthesis/bench_insertion.py``) trains its real-vs-generated classifiers on training hosts
and tests them on the validation hosts; choosing a texture setting by that AUC would select on validation. This bench
never touches the validation split: each of ``--hosts`` training cases gets the next one's tumour (seed per host),
the bench's two classifiers (the issue's: real = the host's own tumour; label-matched: real = the donor's tumour at
the same place) are fitted on one half of the hosts and scored on the other, both ways (2-fold, host-wise), for each
texture setting side by side on the same insertions' latents:

* ``none``: the generator's smooth fill (texture 0);
* ``uniform``: host-matched noise at the host's healthy level everywhere in R (session 16);
* ``per-class``: the same noise with each tumour class at its own level (``TUMOUR_LEVEL_RATIO``; session 17);
* ``patchy``: per-class, after each tumour class is given its real mid-band level with patchy, heavy-tailed noise
  (``TUMOUR_MID_LEVEL``, ``HETEROGENEITY``; shipped).

Beside the AUCs, each setting's texture is compared with the real tumour at the same voxels (the donor's): generated
over real 1-voxel high-pass std, robust level and share of voxels beyond 3 robust levels (the tails: sparse strong
structures), per modality, median over the hosts. ``--weights`` compares generators, ``--settings`` limits the run.

    .venv/bin/python bench/synthesis/insertion_texture_cv.py [--hosts 12] [--weights W] [--settings patchy ...] \\
        [--json bench/results/synthesis/insertion_texture_cv.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.analysis.insertion_calibration import zscores  # noqa: E402
from bench.synthesis.bench_insertion import (  # noqa: E402
    classifier_rows,
    fit_auc,
    matched_rows,
    next_case_insertions,
    training_hosts_setup,
)
from core.preprocessing.preprocess import brain_mask  # noqa: E402
from core.synthesis import insert as ins  # noqa: E402
from core.synthesis.insert import insert_tumour  # noqa: E402
from core.synthesis.texture import high_pass, robust_level  # noqa: E402

SETTINGS = ("none", "uniform", "per-class", "patchy")
TAIL_LEVELS = 3.0  # a voxel is in the tail beyond this many robust levels of its high-pass


def texture_stats(z: np.ndarray, tumour: np.ndarray) -> np.ndarray:
    """Inside ``tumour``, per modality: 1-voxel high-pass std, robust level and tail share (``(4, 3)``; ``z``:
    ``(4, X, Y, Z)`` z-scores, the high-pass of ``core.synthesis.texture``)."""
    hp = high_pass(np.moveaxis(z, 0, -1))[tumour]
    level = robust_level(hp)
    return np.stack([hp.std(0), level, (np.abs(hp) > TAIL_LEVELS * level).mean(0)], axis=1)


def cross_validated_auc(rows: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean AUC of the 2-fold host-wise split (first half / second half of the hosts, both ways)."""
    half = len(rows) // 2
    folds = (rows[:half], rows[half:])
    aucs = []
    for train, test in (folds, folds[::-1]):
        auc, _ = fit_auc([x for x, _ in train], [y for _, y in train], [x for x, _ in test], [y for _, y in test])
        aucs.append(auc)
    return float(np.mean(aucs))


def main() -> int:
    setup = training_hosts_setup(__doc__, ROOT / "bench" / "results" / "synthesis" / "insertion_texture_cv.json",
                                 lambda p: p.add_argument("--settings", nargs="+", choices=SETTINGS, default=SETTINGS,
                                                          help="texture settings to compare (default: all)"))
    if setup is None:
        return 1
    args, model, cases = setup
    settings = tuple(args.settings)
    original = ins.add_texture
    rows: dict[str, dict[str, list]] = {s: {"issue": [], "matched": []} for s in settings}
    ratios: dict[str, list[np.ndarray]] = {s: [] for s in settings}
    for i, host, donor, brain, target in next_case_insertions(cases):
        real = texture_stats(zscores(donor.image, brain_mask(donor.image), donor.seg), target > 0)
        for setting in settings:
            ins.add_texture = {
                "patchy": original,
                "per-class": lambda *a, **k: original(*a, mid=False, **k),
            }.get(setting, lambda *a, labels=None, **k: original(*a, **k))  # uniform: the labels are not passed on
            generated = insert_tumour(host, target, model, seed=300 + i,
                                      texture=0.0 if setting == "none" else None)[0]
            # the same patch centres for every setting: a fresh stream per host
            rows[setting]["issue"].append(classifier_rows(host, generated, target, np.random.default_rng(i)))
            rows[setting]["matched"].append(matched_rows(generated, brain, donor, target,
                                                         np.random.default_rng(1000 + i)))
            generated_stats = texture_stats(zscores(generated.image, brain, target), target > 0)
            ratios[setting].append(generated_stats / np.maximum(real, 1e-6))
        print(f"host {host.name} <- {donor.name}", flush=True)
    ins.add_texture = original
    result = {"hosts": [c.name for c in cases], "weights": str(args.weights), "auc": {},
              "texture_vs_real": {"what": "generated / real (the donor at the same voxels), inside the tumour, median "
                                          "over hosts, per modality T1 / T1ce / T2 / FLAIR: 1-voxel high-pass std, "
                                          f"robust level, share of voxels beyond {TAIL_LEVELS:g} robust levels"}}
    for setting in settings:
        result["auc"][setting] = {kind: round(cross_validated_auc(r), 4) for kind, r in rows[setting].items()}
        median = np.median(ratios[setting], axis=0).round(2)
        result["texture_vs_real"][setting] = {name: median[:, k].tolist()
                                              for k, name in enumerate(("std", "robust level", "tail share"))}
        print(setting, result["auc"][setting], result["texture_vs_real"][setting], flush=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
