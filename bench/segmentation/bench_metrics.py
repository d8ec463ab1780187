"""Timing of preprocessing and metrics on a full BraTS-size case.

Usage (from the project root)::

    .venv/bin/python -m bench.segmentation.bench_metrics [--repeats 5] [--case DIR]

``--case`` is a BraTS 2023-named case folder (``*-t1n/-t1c/-t2w/-t2f.nii.gz``); without it
a synthetic 4x240x240x155 skull-stripped-like image is used. Label maps are synthetic
(~50 mL whole tumour), so the metrics timing is always comparable.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

from core.preprocessing.preprocess import brain_mask, prepare_input
from core.segmentation.metrics import region_metrics, volumes_ml

SHAPE = (240, 240, 155)


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(best, median) seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def _synthetic_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    head = ((x - 120) / 70.0) ** 2 + ((y - 120) / 90.0) ** 2 + ((z - 75) / 65.0) ** 2 < 1
    return (rng.uniform(50, 1000, size=(4, *SHAPE)).astype(np.float32) * head).astype(np.float32)


def _read_case(case_dir: Path) -> np.ndarray:
    files = [next(case_dir.glob(f"*-{m}.nii*")) for m in ("t1n", "t1c", "t2w", "t2f")]
    return np.stack([np.asarray(nib.load(f).dataobj, dtype=np.float32) for f in files])


def _tumour(centre: tuple[int, int, int], radius: float) -> np.ndarray:
    x, y, z = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    d = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    labels = np.zeros(SHAPE, np.uint8)
    labels[d < radius] = 2
    labels[d < 0.6 * radius] = 1
    labels[(d < 0.6 * radius) & (d > 0.4 * radius)] = 3
    return labels


def main(argv: list[str] | None = None) -> None:
    """Print best/median timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--case", type=Path, default=None, help="BraTS 2023-named case folder")
    args = parser.parse_args(argv)

    image = _read_case(args.case) if args.case else _synthetic_image()
    ref, pred = _tumour((120, 110, 70), 23), _tumour((123, 112, 72), 22)
    print(f"image {image.shape} from {args.case or 'synthetic'}; reference WT {volumes_ml(ref)['WT']:.1f} mL")
    rows = [
        ("brain_mask", lambda: brain_mask(image)),
        ("prepare_input", lambda: prepare_input(image)),
        ("region_metrics", lambda: region_metrics(pred, ref, (1.0, 1.0, 1.0))),
        ("volumes_ml", lambda: volumes_ml(pred)),
    ]
    for name, fn in rows:
        best, median = _time(fn, args.repeats)
        print(f"{name:15s} best {best * 1000:7.1f} ms   median {median * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
