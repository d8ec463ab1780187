"""Speed of the phantom generator: warm median and cold times for one 240x240x155 case.

    .venv/bin/python bench/synthesis/bench_phantom.py [--seeds 8] [--derive]

* cold (disk cache): first phantom in a fresh process whose anatomy comes from the disk cache.
* cold (derive): ``--derive`` also times deriving the anatomy from nilearn's template (uses a
  temporary cache folder, so the user's cache is left alone).
* warm: median over ``--seeds`` phantoms once everything is cached.
Also prints the whole-tumour volume of each warm case.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

_COLD_SNIPPET = """
import time
t = time.perf_counter()
from core.synthesis.phantom import generate_phantom
generate_phantom(0)
print(time.perf_counter() - t)
"""


def cold_seconds(cache_dir: str | None = None) -> float:
    """Seconds for imports + anatomy + first phantom in a fresh interpreter."""
    env = dict(os.environ)
    if cache_dir is not None:
        env["BRATS_STUDIO_CACHE"] = cache_dir
    out = subprocess.run([sys.executable, "-c", _COLD_SNIPPET], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8, help="warm cases to time (default 8)")
    parser.add_argument("--derive", action="store_true", help="also time a cold start without the disk cache")
    args = parser.parse_args()

    from core.synthesis.phantom import generate_phantom

    generate_phantom(1000)  # make sure the disk cache exists before timing the cold start
    print(f"cold start (disk cache): {cold_seconds():.2f} s")
    if args.derive:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"cold start (derive anatomy from nilearn): {cold_seconds(tmp):.2f} s")

    seconds, cpu, volumes = [], [], []
    for seed in range(args.seeds):
        start, start_cpu = time.perf_counter(), time.process_time()
        case = generate_phantom(seed)
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        volumes.append(float((case.seg > 0).sum()) / 1000.0)
    print(f"warm: median {statistics.median(seconds):.2f} s per case "
          f"(min {min(seconds):.2f}, max {max(seconds):.2f}, n={len(seconds)}; "
          f"CPU median {statistics.median(cpu):.2f} s; load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    q = statistics.quantiles(volumes, n=4) if len(volumes) > 1 else volumes * 3
    print(f"WT volume (mL): min {min(volumes):.1f}, quartiles {q[0]:.1f} / {q[1]:.1f} / {q[2]:.1f}, "
          f"max {max(volumes):.1f}")
    print("  per seed: " + ", ".join(f"{v:.1f}" for v in volumes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
