"""Summary of a BraTS case: files, grid, label convention and tumour volumes.

CLI::

    python -m core.info CASE_DIR [--json]

prints a table (or JSON with ``--json``); a case that cannot be loaded prints one line
``error: <file>: <problem>; <fix>`` to stderr and exits with status 2. Anything that did not stop
loading but makes the case unusual (inconsistent header, non-zero background, not skull-stripped,
a crop, non-1 mm voxels, noise: see ``core.preprocessing.input_check``) is printed as ``warning: ...`` lines on
stderr (exit status 0) and listed under ``warnings`` in the JSON.

``spacing`` and ``volumes_ml`` come from the affine actually used (sform, else qform), not pixdim;
``orientation`` is its axis codes (``LPS`` on the BraTS grid).

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

from core.io.case import MODALITIES, SEG, Case, CaseError, load_case
from core.io.labels import REGIONS
from core.io.nifti import NiftiError
from core.io.orientation import axcodes
from core.preprocessing.input_check import check_case
from core.segmentation.metrics import volumes_ml
from core.services.cli import exit_on_sigterm, fail, warn


def case_info(case: Case) -> dict[str, Any]:
    """JSON-ready summary of a case.

    Returns:
        ``name``; ``naming`` ("2020"/"2023"/"plain"/None); ``modalities`` (modality -> file name);
        ``seg`` (file name or None); ``shape`` [X, Y, Z]; ``spacing`` [mm x3]; ``labels``
        (see module docstring); ``volumes_ml`` ({"WT", "TC", "ET"} in mL from the affine's voxel size, or None
        without a segmentation); ``orientation`` (axis codes of the affine, e.g. "LPS"); ``warnings`` (the
        loader's and ``core.preprocessing.input_check``'s findings, one sentence each).
    """
    volumes = None if case.seg is None else volumes_ml(case.seg, case.spacing)
    findings = [f.message for f in check_case(case)]
    return {
        "name": case.name,
        "naming": case.naming,
        "modalities": {m: case.files.get(m) for m in MODALITIES},
        "seg": case.files.get(SEG),
        "shape": list(case.shape),
        "spacing": [round(s, 6) for s in case.spacing],  # float32 affines: 1.2 not 1.2000000476837158
        "orientation": axcodes(case.affine),
        "labels": case.label_convention if case.seg is not None else None,
        "volumes_ml": volumes,
        "warnings": list(case.warnings) + findings,
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
        ("orientation", info["orientation"]),
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
    exit_on_sigterm()
    try:
        info = case_info(load_case(args.case_dir))
    except (CaseError, NiftiError) as exc:
        return fail(exc)
    except MemoryError:
        return fail(f"{args.case_dir}: out of memory while loading the case; its volumes are too large - resample "
                    "them to about 1 mm (BraTS: 240 x 240 x 155).")
    for message in info["warnings"]:
        warn(message)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
