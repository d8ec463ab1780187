"""``python -m train.packed``: pack labelled cases into the compact training format of :mod:`train.packed_format`.

Usage::

    python -m train.packed --data ../shared/data/brats-real --exclude train/splits/brats-real-validation.txt \\
        -o packed/brats-real
    python -m train.unet --data packed/brats-real ...   # a folder of packed cases is a --data folder

The format itself (quantisation, the file layout, loading) lives in :mod:`train.packed_format`, which the
trainer's data pipeline imports without this CLI (no import circle).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from train.common import labelled_case_folders, read_case_ids
from train.data import training_case
from train.packed_format import (  # noqa: F401  (re-exported: the format's public names)
    DEFAULT_LEVELS,
    FORMAT_VERSION,
    SUFFIX,
    dequantise,
    find_packed,
    is_packed,
    load_packed,
    pack_case,
    quantise,
)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: pack the labelled cases of ``--data`` folders (minus ``--exclude``) into ``-o``."""
    from tqdm import tqdm

    from core.io.case import load_case

    p = argparse.ArgumentParser(prog="python -m train.packed", description="Pack labelled BraTS cases for training.")
    p.add_argument("--data", action="append", required=True, help="folder of labelled BraTS case folders (repeatable)")
    p.add_argument("--exclude", default=None, help="case ids to leave out (comma-separated or a file, one per line)")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--levels", type=int, default=DEFAULT_LEVELS, help="quantisation levels (default %(default)s)")
    args = p.parse_args(argv)
    exclude = read_case_ids(args.exclude) if args.exclude else []
    folders = labelled_case_folders(args.data, exclude)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for folder in tqdm(folders, desc="pack", unit="case", file=sys.stderr):
        case = training_case(load_case(folder))
        path = pack_case(case.image, case.labels, case.name, out / f"{folder.name}{SUFFIX}", args.levels)
        total += path.stat().st_size
    print(f"packed {len(folders)} cases into {out} ({total / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
