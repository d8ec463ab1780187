"""Segment one BraTS case folder from the command line.

Usage::

    python -m core.segment CASE_DIR -o OUT.nii.gz [--weights weights/unet.keras] [--tta] [--labels 2020|2023]
        [--probabilities PROB.nii.gz] [--force]

The label map is written as uint8 with the input's affine and header (2020 labels 0/1/2/4 by
default, 2023 labels 0/1/2/3 with ``--labels 2023``), on the input's voxel grid: a case whose voxel
axes are not in the model's (BraTS, LPS) orientation is flipped/permuted into it for the network
and the labels are turned back (:func:`core.segmentation.segment.segment_oriented`), so the output aligns
with the input in world space. The steps are those of every entry point (:func:`core.segmentation.pipeline.segment`);
this module only parses arguments, loads the case and the model, and writes the files.

``--probabilities`` also writes the network's region probabilities (WT, TC, ET; before postprocessing, TTA-averaged
with ``--tta``) as a 4D NIfTI on the same grid with the same affine (uint8 scaled by about 1/255; see
:func:`core.io.case.save_region_probabilities`): nnU-Net's ``--save_probabilities``, for ensembling, calibration or
an uncertainty overlay.

Bad input exits with status 2 and one line on stderr, ``error: <file>: <problem>; <fix>``. Input the
model would segment unreliably (``core.preprocessing.input_check``) prints ``warning: ...`` lines and exits 0;
random-noise, constant or duplicated modalities and crops (not a whole brain) are errors unless ``--force``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow: errors only on the console

from tqdm import tqdm

from core.io.case import CaseError, load_case
from core.io.labels import CONVENTIONS, REGIONS
from core.io.nifti import NiftiError
from core.segmentation.pipeline import SegmentOptions, segment
from core.services.cli import exit_on_sigterm
from core.services.cli import fail as _fail
from core.services.cli import warn as _warn

DEFAULT_WEIGHTS = "weights/unet.keras (core.segmentation.inference.default_unet_path)"


class _LazyBar:
    """tqdm progress bar on stderr, opened at the first progress report."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar: tqdm | None = None

    def update(self, fraction: float, message: str) -> None:
        """Progress callback of :func:`core.segmentation.pipeline.segment`."""
        if self.bar is None:
            self.bar = tqdm(total=100, desc=self.description, unit="%", file=sys.stderr,
                            bar_format="{l_bar}{bar}| {elapsed} {postfix}")
        self.bar.update(round(100 * fraction) - self.bar.n)
        self.bar.set_postfix_str(message)

    def __enter__(self) -> _LazyBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``python -m core.segment``."""
    parser = argparse.ArgumentParser(
        prog="python -m core.segment",
        description="Segment a BraTS case folder (t1, t1ce, t2, flair) with the 3D U-Net.",
    )
    parser.add_argument("case_dir", type=Path, help="case folder (BraTS 2020/2023 or plain file names)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="output label map (.nii.gz or .nii)")
    parser.add_argument("--weights", type=Path, default=None,
                        help=f"U-Net .keras file (default: {DEFAULT_WEIGHTS}); its ONNX export beside it runs on "
                             "ONNX Runtime when it matches (BRATS_INFERENCE_BACKEND=auto|onnx|tensorflow)")
    parser.add_argument("--tta", action="store_true", help="mirror test-time augmentation (8x slower)")
    parser.add_argument("--labels", choices=CONVENTIONS, default="2020",
                        help="label values written: 2020 = 0/1/2/4, 2023 = 0/1/2/3 (default: %(default)s)")
    parser.add_argument("--no-postprocess", action="store_true",
                        help="write the raw argmax (no small-component / small-ET cleanup)")
    parser.add_argument("--probabilities", type=Path, default=None, metavar="PROB.nii.gz",
                        help="also write the WT/TC/ET probabilities (4D NIfTI, before postprocessing)")
    parser.add_argument("--force", action="store_true",
                        help="segment even a case that fails the plausibility checks (noise, constant or duplicated "
                             "modality, a crop instead of a whole brain)")
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
    # The model (ONNX Runtime or Keras/TensorFlow) loads only now, so argument errors answer at once.
    from core.segmentation.inference import ModelLoadError, default_unet_path, load_model

    options = SegmentOptions(tta=args.tta, probabilities=args.probabilities is not None, labels=args.labels,
                             postprocess=not args.no_postprocess, metrics=False, force=args.force)
    try:
        case = load_case(args.case_dir)
    except (CaseError, NiftiError) as exc:
        return _fail(str(exc))
    except MemoryError:
        return _fail(f"{args.case_dir}: out of memory while loading the case; its volumes are too large - resample "
                     "them to about 1 mm (BraTS: 240 x 240 x 155).")

    with _LazyBar(f"segment {case.name}") as bar:  # the bar starts once the gate passed (after any warnings)
        try:
            result = segment(case, options=options, load_model=lambda: load_model(args.weights or default_unet_path()),
                             progress=bar.update, on_warning=_warn)
        except (CaseError, ModelLoadError) as exc:
            return _fail(str(exc))
    writes = [(out, result.save_label_map)]
    if args.probabilities is not None:
        writes.append((args.probabilities, result.save_probabilities))
    for path, write in writes:
        try:
            write(path)
        except OSError as exc:
            return _fail(f"cannot write {path} ({exc.strerror or exc}); choose a writable output folder with free "
                         "space.")
    summary = ", ".join(f"{r} {result.volumes_ml[r]:.1f} mL" for r in REGIONS)
    print(f"{out}: {summary} ({args.labels} labels, {result.seconds:.1f} s)")
    if args.probabilities is not None:
        print(f"{args.probabilities}: WT, TC, ET probabilities (4D, before postprocessing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
