"""Benchmark of batch segmentation (not a test): ``serve.batch`` on a local Ray vs a plain loop.

Both modes do the same per-case work (``serve.batch.segment_one``: load, segment, volumes/metrics, write
the label map) on the same case folders, each in a fresh child process so imports, model loading and (for
Ray) cluster and actor start-up are counted. Reports wall time, cases per minute and the peak RSS of the
child's whole process tree (Ray's raylet and actors included), sampled every 0.2 s.

Usage::

    python -m core.phantom /tmp/bench_cases --count 4 --seed 5 --naming 2023
    python bench/serve/bench_batch.py /tmp/bench_cases [--ray 1x2 2x1] [--weights weights/unet.keras]
                                [--out bench/results/serve/batch.json]

``--ray WxC`` runs the Ray mode with W actors of C CPUs each (one entry per configuration).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.serve.bench_serve import PeakRss, weights_info  # noqa: E402


def plain_loop(root: Path, out: Path, weights: Path) -> dict:
    """One process, model loaded once, cases one after another (what a for-loop over core.segment does)."""
    from core.segmentation.inference import load_model
    from serve.batch import _store, find_cases, segment_one

    model = load_model(weights)
    failed = 0
    for folder in find_cases(root):
        row = segment_one(folder, model)
        failed += row["status"] != "ok"
        _store(out, row)
    return {"failed": failed}


def ray_batch(root: Path, out: Path, weights: Path, workers: int, cpus: int) -> dict:
    """``serve.batch.run_batch`` on a local Ray started for this run."""
    from serve.batch import run_batch

    summary = run_batch(root, out, workers=workers, cpus_per_worker=cpus, weights=weights, progress=False)
    return {"failed": len(summary.failed)}


def child(mode: str, root: Path, weights: Path) -> None:
    """Run one mode into a temporary output folder; print its JSON line."""
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        start = time.perf_counter()
        if mode == "loop":
            result = plain_loop(root, Path(tmp), weights)
        else:
            workers, cpus = (int(x) for x in mode.split("x"))
            result = ray_batch(root, Path(tmp), weights, workers, cpus)
        result["wall_s"] = time.perf_counter() - start
        result["done"] = len(list(Path(tmp).glob("*_seg.nii.gz")))
    print("RESULT " + json.dumps(result), flush=True)


def measure(mode: str, root: Path, weights: Path, n_cases: int) -> dict:
    """Run ``mode`` in a child process; its result plus the tree's peak RSS and cases per minute."""
    command = [sys.executable, str(Path(__file__).resolve()), str(root), "--child", mode, "--weights", str(weights)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = PeakRss(proc.pid)
    stdout, stderr = proc.communicate()
    peak = memory.stop()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} failed ({proc.returncode}):\n{stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    result.update(mode=mode, cases=n_cases, peak_rss_mb=round(peak, 1), wall_s=round(result["wall_s"], 2),
                  cases_per_minute=round(60.0 * n_cases / result["wall_s"], 2))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="folder of case folders")
    p.add_argument("--ray", nargs="*", default=["1x2"], help="Ray configurations WORKERSxCPUS (default 1x2)")
    p.add_argument("--weights", type=Path, default=ROOT / "weights" / "unet.keras")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve" / "batch.json")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.root, args.weights)
        return
    from serve.batch import find_cases

    n_cases = len(find_cases(args.root))
    load_start = os.getloadavg()[0]
    runs = [measure(mode, args.root, args.weights, n_cases) for mode in ["loop", *args.ray]]
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cases": n_cases, "root": args.root.name,
              "weights": os.path.relpath(args.weights, ROOT), **weights_info(args.weights), "cpu_count": os.cpu_count(),
              "machine": platform.machine(), "note": args.note, "runs": runs,
              "loadavg_1min": {"start": load_start, "end": os.getloadavg()[0]}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("| mode | cases | wall s | cases/min | failed | peak RSS (tree) |\n|---|---|---|---|---|---|")
    for r in runs:
        name = "plain loop" if r["mode"] == "loop" else f"Ray Data, {r['mode']} (actors x CPUs)"
        print(f"| {name} | {r['cases']} | {r['wall_s']} | {r['cases_per_minute']} | {r['failed']} | "
              f"{r['peak_rss_mb'] / 1024:.2f} GB |")


if __name__ == "__main__":
    main()
