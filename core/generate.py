"""Generate synthetic BraTS cases from a tumour mask (command line).

CLI::

    python -m core.generate MASK.nii.gz -o OUT_DIR [--samples N] [--seed S] [--temperature T]
        [--naming 2020|2023] [--weights P] [--brain BRAIN.nii.gz]
    python -m core.generate MASK.nii.gz --host CASE_DIR -o OUT_DIR [--samples N] [--seed S] [--margin M] ...

Without ``--host`` the CVAE draws a new whole brain ("new brain", :mod:`core.synthesis.generate`); with ``--host``
the mask (on the host's grid) is rendered into that real case by the insertion VAE-GAN
(``core.synthesis.insert``): only the region around the mask and the host's own tumour changes, every other voxel
is the host's.

writes ``N`` BraTS case folders (``core.io.case.save_case``) that ``core.io.case.load_case`` reads and
``python -m train.unet --data OUT_DIR`` trains on. The mask may use either label convention.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from core.io.case import Case, CaseError, save_case
from core.io.orientation import onto_grid
from core.io.weights import ModelLoadError
from core.services.cli import exit_on_sigterm, fail, warn
from core.synthesis.generate import NAME_PATTERNS, default_cvae_path, iter_cases, load_cvae, read_mask
from core.synthesis.region import MARGIN

INSERT_NAME_PATTERNS: dict[str, str] = {"2020": "BraTS20_INS_s{seed}_{index:03d}",
                                        "2023": "BraTS-INS-s{seed}-{index:03d}"}


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``python -m core.generate``."""
    p = argparse.ArgumentParser(prog="python -m core.generate",
                                description="Generate synthetic BraTS cases from a tumour mask with the CVAE.")
    p.add_argument("mask", help="tumour label map (.nii/.nii.gz; labels 0/1/2/4 (2020) or 0/1/2/3 (2023))")
    p.add_argument("-o", "--out", required=True, help="output folder; one BraTS case folder per sample")
    p.add_argument("--samples", type=int, default=1, help="number of cases (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="prior temperature (default %(default)s); with --host it also scales the host-matched "
                        "scanner noise in the fill (0: the smooth mean fill)")
    p.add_argument("--naming", choices=("2020", "2023"), default="2020",
                   help="file naming and label values of the written cases (default %(default)s)")
    p.add_argument("--weights", default=None,
                   help=f"model .keras file (default {default_cvae_path()}, with --host weights/insertion.keras)")
    p.add_argument("--brain", default=None,
                   help="brain mask (non-zero = brain) on the mask's grid (default: the MNI152 template brain, "
                        "BraTS grid only)")
    p.add_argument("--host", default=None,
                   help="real case folder to render the mask into (insertion mode; the mask must be on its grid). "
                        "Its own tumour (its seg, else the shipped U-Net) is replaced")
    p.add_argument("--margin", type=float, default=MARGIN,
                   help="with --host: voxels by which the regenerated region extends beyond the tumours "
                        "(default %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad input)."""
    args = build_parser().parse_args(argv)
    exit_on_sigterm()  # a SIGTERM still removes a half-written case file (save_nifti's temporary file)
    try:
        if args.samples < 1:
            raise ValueError(f"--samples must be >= 1, got {args.samples}")
        notes: list[str] = []
        mask, affine, header = read_mask(args.mask, notes)
        if args.host:
            return _write_cases(args, *_insertions(args, mask, affine, notes))
        brain = None
        if args.brain:
            brain_data, brain_affine, _ = _read_brain(args.brain)
            brain = onto_grid(brain_data, brain_affine, affine, mask.shape)  # same grid, maybe another voxel order
            if brain is None:
                raise CaseError(f"{Path(args.brain).name}: not on the grid of {Path(args.mask).name} (shape "
                                f"{brain_data.shape} vs {mask.shape}, or another affine); resample it onto the "
                                "mask's grid.")
        model = load_cvae(args.weights or default_cvae_path())
        start = time.perf_counter()
        cases = iter_cases(mask, affine, header, model, n_samples=args.samples, seed=args.seed,
                           temperature=args.temperature, brain=brain, name=Path(args.mask).name)
        if not mask.any():
            notes.append(f"{Path(args.mask).name}: no tumour label (every voxel is 0); the generated cases are "
                         "tumour-free brains - pass a tumour segmentation to get tumours.")
        return _write_cases(args, cases, notes, NAME_PATTERNS, start)
    except (CaseError, ModelLoadError, ValueError) as exc:
        return fail(exc)
    except OSError as exc:
        return fail(f"cannot write to {args.out} ({exc.strerror or exc}); choose a writable output folder with "
                    "free space.")
    except MemoryError:
        return fail(f"{args.mask}: out of memory while generating; use a 1 mm BraTS-sized mask (240 x 240 x 155) "
                    "or free memory.")
    return 0


def _write_cases(args: argparse.Namespace, cases: Iterator[Case], notes: list[str], patterns: dict[str, str],
                 start: float) -> int:
    """Print the warnings, then write each case as it is made (progress bar); exit status 0."""
    from tqdm import tqdm

    for note in notes:
        warn(note)
    out = Path(args.out)
    with tqdm(total=args.samples, desc="generate", unit="case", file=sys.stderr) as bar:
        for i, case in enumerate(cases):
            save_case(case, out, naming=args.naming, name=patterns[args.naming].format(seed=args.seed, index=i))
            bar.update(1)
    print(f"wrote {args.samples} case(s) to {out} in {time.perf_counter() - start:.1f} s")
    return 0


def _insertions(args: argparse.Namespace, mask: np.ndarray, affine: np.ndarray, notes: list[str]
                ) -> tuple[Iterator[Case], list[str], dict[str, str], float]:
    """``--host``: the insertion cases of the mask rendered into the host case (checked before the first)."""
    from core.io.case import load_case
    from core.synthesis.insert import default_insertion_path, iter_insertions, load_insertion_model

    if args.brain:
        raise ValueError("--brain goes with the whole-brain mode; with --host the host case's own brain is used")
    host = load_case(args.host)
    notes += host.warnings
    target = onto_grid(mask, affine, host.affine, host.shape)
    if target is None:
        raise CaseError(f"{Path(args.mask).name}: not on the grid of the host case {host.name} (shape {mask.shape} "
                        f"vs {host.shape}, or another affine); draw or resample the mask on the host's grid.")
    unet = None
    if host.seg is None:
        from core.segmentation.inference import default_unet_path, load_model

        notes.append(f"host {host.name}: no segmentation file; its tumour is found with the U-Net "
                     f"({default_unet_path()}) so that it can be replaced")
        unet = load_model(default_unet_path())
    model = load_insertion_model(args.weights or default_insertion_path())
    start = time.perf_counter()
    cases = iter_insertions(host, target, model, n_samples=args.samples, seed=args.seed,
                            temperature=args.temperature, unet=unet, margin=args.margin, name=Path(args.mask).name)
    return cases, notes, INSERT_NAME_PATTERNS, start


def _read_brain(path: str | Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    from core.io.nifti import NiftiError, read_nifti

    try:
        image = read_nifti(path, volume_3d=True)
    except NiftiError as exc:
        raise CaseError(str(exc)) from exc
    return np.asarray(image.dataobj) != 0, np.asarray(image.affine), image.header


if __name__ == "__main__":
    sys.exit(main())
