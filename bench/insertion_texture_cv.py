"""Realism of insertion samples checked on *training* hosts only: host-wise cross-validated patch classifiers.

The validation bench (``bench/bench_insertion.py``) trains its real-vs-generated classifiers on training hosts and
tests them on the validation hosts; choosing a texture setting by that AUC would select on validation. This bench
never touches the validation split: each of ``--hosts`` training cases gets the next one's tumour (seed per host),
the bench's two classifiers (the issue's: real = the host's own tumour; label-matched: real = the donor's tumour at
the same place) are fitted on one half of the hosts and scored on the other, both ways (2-fold, host-wise), for each
texture setting side by side on the same insertions' latents:

* ``none``: the generator's smooth fill (texture 0);
* ``uniform``: host-matched noise at the host's healthy level everywhere in R (session 16);
* ``per-class``: the same noise with each tumour class at its own level (``TUMOUR_LEVEL_RATIO``; session 17);
* ``patchy``: per-class, after each tumour class is given its real mid-band level with patchy, heavy-tailed noise
  (``TUMOUR_MID_LEVEL``, ``HETEROGENEITY``; shipped).

    .venv/bin/python bench/insertion_texture_cv.py [--hosts 12] [--json bench/results/insertion_texture_cv.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_insertion import classifier_rows, fit_auc, matched_rows, next_case_insertions, training_hosts_setup  # noqa: E402
from core.synthesis import insert as ins  # noqa: E402
from core.synthesis.insert import insert_tumour  # noqa: E402

SETTINGS = ("none", "uniform", "per-class", "patchy")


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
    setup = training_hosts_setup(__doc__, ROOT / "bench" / "results" / "insertion_texture_cv.json")
    if setup is None:
        return 1
    args, model, cases = setup
    original = ins.add_texture
    rows: dict[str, dict[str, list]] = {s: {"issue": [], "matched": []} for s in SETTINGS}
    for i, host, donor, brain, target in next_case_insertions(cases):
        for setting in SETTINGS:
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
        print(f"host {host.name} <- {donor.name}", flush=True)
    ins.add_texture = original
    result = {"hosts": [c.name for c in cases], "weights": str(args.weights), "auc": {}}
    for setting in SETTINGS:
        result["auc"][setting] = {kind: round(cross_validated_auc(r), 4) for kind, r in rows[setting].items()}
        print(setting, result["auc"][setting], flush=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
