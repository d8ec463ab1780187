"""Summary of a BraTS case: files, grid, label convention and tumour volumes.

CLI::

    python -m core.info CASE_DIR [--json]

prints a table (or JSON with ``--json``); a case that cannot be loaded prints the reason to
stderr and exits with status 2.

``labels`` is the label convention of the segmentation file: ``"2020"`` when it holds label 4,
``"2023"`` when it holds label 3. A segmentation with only 0/1/2 reads the same in both
conventions; it is then reported with the convention of its BraTS file name (``_seg``: 2020,
``-seg``: 2023) and ``null`` for a plain ``seg.nii.gz``. ``null`` as well when there is no segmentation.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from core.case import MODALITIES, SEG, Case, CaseError, load_case
from core.labels import REGIONS
from core.metrics import volumes_ml
from core.nifti import NiftiError


def case_info(case: Case) -> dict[str, Any]:
    """JSON-ready summary of a case.

    Returns:
        ``name``; ``naming`` ("2020"/"2023"/"plain"/None); ``modalities`` (modality -> file name);
        ``seg`` (file name or None); ``shape`` [X, Y, Z]; ``spacing`` [mm x3]; ``labels``
        (see module docstring); ``volumes_ml`` ({"WT", "TC", "ET"} in mL, or None without a segmentation).
    """
    volumes = None if case.seg is None else volumes_ml(case.seg, case.spacing)
    return {
        "name": case.name,
        "naming": case.naming,
        "modalities": {m: case.files.get(m) for m in MODALITIES},
        "seg": case.files.get(SEG),
        "shape": list(case.shape),
        "spacing": [round(s, 6) for s in case.spacing],  # float32 zooms: 1.2 not 1.2000000476837158
        "labels": case.label_convention if case.seg is not None else None,
        "volumes_ml": volumes,
    }


def format_info(info: dict[str, Any]) -> str:
    """Readable table of a ``case_info`` dict."""
    rows = [
        ("case", info["name"]),
        ("naming", info["naming"] or "-"),
        *((m, info["modalities"][m] or "-") for m in MODALITIES),
        ("seg", info["seg"] or "-"),
        ("shape", " x ".join(str(s) for s in info["shape"])),
        ("spacing (mm)", " x ".join(f"{s:g}" for s in info["spacing"])),
        ("labels", info["labels"] or "-"),
    ]
    if info["volumes_ml"] is not None:
        rows += [(f"{r} volume (mL)", f"{info['volumes_ml'][r]:.2f}") for r in REGIONS]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m core.info", description="Summarise a BraTS case folder.")
    parser.add_argument("case_dir", help="folder with the four modality files (and optionally the segmentation)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        info = case_info(load_case(args.case_dir))
    except (CaseError, NiftiError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
