"""Segment one BraTS case folder from the command line.

Usage::

    python -m core.segment CASE_DIR -o OUT.nii.gz [--weights weights/unet.keras] [--tta] [--labels 2020|2023]
        [--probabilities PROB.nii.gz] [--force]

The label map is written as uint8 with the input's affine and header (2020 labels 0/1/2/4 by
default, 2023 labels 0/1/2/3 with ``--labels 2023``), on the input's voxel grid: a case whose voxel
axes are not in the model's (BraTS, LPS) orientation is flipped/permuted into it for the network
and the labels are turned back (:func:`core.segmentation.segment.segment_oriented`), so the output aligns
with the input in world space.

``--probabilities`` also writes the network's region probabilities (WT, TC, ET; before postprocessing, TTA-averaged
with ``--tta``) as a 4D NIfTI on the same grid with the same affine (uint8 scaled by about 1/255; see
:func:`core.io.case.save_region_probabilities`): nnU-Net's ``--save_probabilities``, for ensembling, calibration or
an uncertainty overlay.

Bad input exits with status 2 and one line on stderr, ``error: <file>: <problem>; <fix>``. Input the
model would segment unreliably (``core.preprocessing.input_check``) prints ``warning: ...`` lines and exits 0;
random-noise or constant modalities are errors unless ``--force``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow: errors only on the console

from tqdm import tqdm

from core.io.case import CaseError, load_case, save_label_map, save_region_probabilities
from core.io.labels import CONVENTIONS, REGIONS
from core.io.nifti import NiftiError
from core.preprocessing.input_check import require_plausible
from core.segmentation.metrics import volumes_ml
from core.segmentation.segment import segment_oriented
from core.services.cli import exit_on_sigterm
from core.services.cli import fail as _fail
from core.services.cli import warn as _warn

DEFAULT_WEIGHTS = "weights/unet.keras (core.segmentation.inference.default_unet_path)"


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``python -m core.segment``."""
    parser = argparse.ArgumentParser(
        prog="python -m core.segment",
        description="Segment a BraTS case folder (t1, t1ce, t2, flair) with the 3D U-Net.",
    )
    parser.add_argument("case_dir", type=Path, help="case folder (BraTS 2020/2023 or plain file names)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output label map (.nii.gz or .nii)")
    parser.add_argument("--weights", type=Path, default=None, help=f"U-Net .keras file (default: {DEFAULT_WEIGHTS})")
    parser.add_argument("--tta", action="store_true", help="mirror test-time augmentation (8x slower)")
    parser.add_argument("--labels", choices=CONVENTIONS, default="2020",
                        help="label values written: 2020 = 0/1/2/4, 2023 = 0/1/2/3 (default: %(default)s)")
    parser.add_argument("--no-postprocess", action="store_true",
                        help="write the raw argmax (no small-component / small-ET cleanup)")
    parser.add_argument("--probabilities", type=Path, default=None, metavar="PROB.nii.gz",
                        help="also write the WT/TC/ET probabilities (4D NIfTI, before postprocessing)")
    parser.add_argument("--force", action="store_true",
                        help="segment even a case that fails the plausibility checks (noise, constant modality)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    exit_on_sigterm()  # a SIGTERM still removes a half-written output (save_nifti's temporary file)
    out = Path(args.out)
    for path in (out, args.probabilities):
        if path is None:
            continue
        if not path.name.endswith((".nii.gz", ".nii")):
            return _fail(f"output {path} must end with .nii.gz or .nii")
        if not path.parent.is_dir():
            return _fail(f"output folder {path.parent} does not exist; create it first")
    if args.probabilities is not None and args.probabilities.resolve() == out.resolve():
        return _fail(f"--probabilities {args.probabilities} is the label map's own path; give it another name")
    if not args.case_dir.is_dir():
        return _fail(f"case folder {args.case_dir} not found (pass a folder holding t1/t1ce/t2/flair NIfTI files)")
    # Keras/TensorFlow load only now, so argument errors answer at once.
    from core.segmentation.inference import ModelLoadError, default_unet_path, load_model, region_probabilities

    try:
        case = load_case(args.case_dir)
        warnings = require_plausible(case, force=args.force)
        model = load_model(args.weights or default_unet_path())
    except (CaseError, NiftiError, ModelLoadError) as exc:
        return _fail(str(exc))
    except MemoryError:
        return _fail(f"{args.case_dir}: out of memory while loading the case; its volumes are too large - resample "
                     "them to about 1 mm (BraTS: 240 x 240 x 155).")
    for message in warnings:
        _warn(message)

    with tqdm(total=100, desc=f"segment {case.name}", unit="%", file=sys.stderr,
              bar_format="{l_bar}{bar}| {elapsed} {postfix}") as bar:
        def progress(fraction: float, message: str) -> None:
            bar.update(round(100 * fraction) - bar.n)
            bar.set_postfix_str(message)

        result = segment_oriented(case, model, tta=args.tta, postprocess=not args.no_postprocess,
                                  progress=progress)
    writes = [(out, lambda: save_label_map(out, result.labels, case.affine, case.header, args.labels))]
    if args.probabilities is not None:
        writes.append((args.probabilities, lambda: save_region_probabilities(
            args.probabilities, region_probabilities(result.probabilities), case.affine, case.header)))
    for path, write in writes:
        try:
            write()
        except OSError as exc:
            return _fail(f"cannot write {path} ({exc.strerror or exc}); choose a writable output folder with free "
                         "space.")
    volumes = volumes_ml(result.labels, case.spacing)
    summary = ", ".join(f"{r} {volumes[r]:.1f} mL" for r in REGIONS)
    print(f"{out}: {summary} ({args.labels} labels, {result.seconds:.1f} s)")
    if args.probabilities is not None:
        print(f"{args.probabilities}: WT, TC, ET probabilities (4D, before postprocessing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
