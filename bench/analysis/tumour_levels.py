"""Where real tumour classes sit in their own case's display window: ``core.synthesis.levels.CLASS_LEVEL``.

For each real *training* case (the validation split is never read), per tumour class (1 NCR, 2 ED, 3 ET; at least
200 voxels) and modality: the class's median intensity as a position in the case's own intensity scale,
``(median_class - median_healthy) / (p99.5_brain - median_healthy)`` when above the healthy median, and
``(median_class - median_healthy) / (median_healthy - p0.5_brain)`` when below it (healthy = brain outside the
reference tumour; p0.5 / p99.5 over the whole brain: the viewer's auto window). A class at 1 sits at the top of the
window, at -1 at its bottom. Also reported: the share of each class's voxels at or above its case's p99.5.
The medians over the cases are :data:`core.synthesis.levels.CLASS_LEVEL`.

    .venv/bin/python bench/analysis/tumour_levels.py [--json bench/results/synthesis/tumour_levels.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.synthesis.bench_insertion import split  # noqa: E402
from core.io.case import MODALITIES, load_case  # noqa: E402
from core.preprocessing.preprocess import brain_mask  # noqa: E402
from core.synthesis.levels import host_window, window_position  # noqa: E402

MIN_VOXELS = 200


def case_levels(image: np.ndarray, seg: np.ndarray) -> dict[str, dict[str, list[float | None]]]:
    """Per class: window position of the class median and share at or above p99.5, per modality."""
    brain = brain_mask(image)
    healthy = brain & (seg == 0)
    window = host_window(image, brain, healthy)  # the window insertion places tumours in (core.synthesis.levels)
    out: dict[str, dict[str, list[float | None]]] = {}
    for label in (1, 2, 3):
        inside = brain & (seg == label)
        position: list[float | None] = []
        saturated: list[float | None] = []
        for m in range(image.shape[0]):
            if inside.sum() < MIN_VOXELS:
                position.append(None), saturated.append(None)
                continue
            low, centre, high = window.low[m], window.centre[m], window.high[m]
            position.append(round(float(window_position(np.median(image[m][inside]), centre, low, high)), 4))
            saturated.append(round(float(np.mean(image[m][inside] >= high)), 4))
        out[str(label)] = {"position": position, "at_or_above_p995": saturated}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "synthesis" / "tumour_levels.json")
    args = parser.parse_args()
    train, _ = split()
    cases = {}
    for folder in train:
        case = load_case(folder)
        cases[case.name] = case_levels(case.image, case.seg)
        print(case.name, json.dumps({k: v["position"] for k, v in cases[case.name].items()}), flush=True)
    summary = {}
    for label in ("1", "2", "3"):
        rows = {key: [[c[label][key][m] for c in cases.values() if c[label][key][m] is not None]
                      for m in range(len(MODALITIES))] for key in ("position", "at_or_above_p995")}
        summary[label] = {key: [round(float(np.median(v)), 3) for v in values] for key, values in rows.items()}
        summary[label]["cases"] = len(rows["position"][0])
    print(json.dumps(summary, indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"modalities": list(MODALITIES), "summary": summary, "cases": cases},
                                    indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
