"""Synthetic glioma MRI cases ("phantoms") on the BraTS grid, with SynthSeg-style domain randomisation.

CLI: ``python -m core.phantom OUT_DIR --count N --seed S [--naming 2020|2023] [--strength X]``; the phantoms
themselves are made by :func:`core.synthesis.phantom.generate_phantom`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from core.io.case import save_case
from core.synthesis.phantom import PhantomConfig, generate_phantom


def brats_case_name(index: int, naming: str) -> str:
    """BraTS-style folder name of the ``index``-th phantom for a naming convention."""
    if naming == "2023":
        return f"BraTS-GLI-{index:05d}-900"
    return f"BraTS20_Phantom_{index:05d}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.phantom OUT_DIR --count N --seed S [--naming 2020|2023] [--strength X]``."""
    from tqdm import tqdm

    parser = argparse.ArgumentParser(prog="python -m core.phantom", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder that receives one BraTS case folder per phantom")
    parser.add_argument("--count", type=int, default=1, help="number of cases (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed+i")
    parser.add_argument("--naming", choices=("2020", "2023"), default="2020", help="BraTS file naming")
    parser.add_argument("--strength", type=float, default=1.0, help="domain randomisation strength (default 1)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be >= 1")
    config = PhantomConfig(strength=args.strength)
    start = time.perf_counter()
    for i in tqdm(range(args.count), desc="phantoms", unit="case"):
        seed = args.seed + i
        case = generate_phantom(seed, config)
        save_case(case, args.out_dir, naming=args.naming, name=brats_case_name(seed, args.naming))
    seconds = (time.perf_counter() - start) / args.count
    print(f"wrote {args.count} case(s) to {args.out_dir} in {seconds:.2f} s per case")
    return 0


if __name__ == "__main__":
    sys.exit(main())
