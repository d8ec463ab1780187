"""Contact sheet of the conditional VAE: ``docs/cvae_contact_sheet.png``.

Rows: an unseen source case (a held-out phantom, or ``--real`` for the real demo case) with its
mask, three CVAE samples conditioned on that mask (template brain, as in the app), and the
CVAE's reconstruction of the source. Columns: T1, T1ce, T2, FLAIR and the mask over FLAIR, on
the slice through the tumour's largest cross-section (layout of ``bench/synthesis/contact_sheet.py``).

    .venv/bin/python bench/synthesis/cvae_contact_sheet.py [--weights weights/cvae.keras] [--seed 0] [--real]
        [--plane axial|coronal|sagittal] [--out docs/cvae_contact_sheet.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.synthesis.bench_generate import BENCH_SEED_START, REAL_DEMO  # noqa: E402
from bench.synthesis.contact_sheet import contact_sheet  # noqa: E402
from core.io.case import Case, load_case  # noqa: E402
from core.synthesis.generate import default_cvae_path, generate_cases, load_cvae, reconstruct  # noqa: E402


def sheet_rows(source: Case, source_label: str, model, seed: int, samples: int = 3) -> list[tuple[str, Case]]:
    """(label, case) rows: the source, ``samples`` samples of its mask, its reconstruction."""
    generated = generate_cases(source.seg, source.affine, source.header, model, n_samples=samples, seed=seed)
    rows = [(f"original\n{source_label}", source)]
    rows += [(f"CVAE sample {i + 1}\nseed {seed}", case) for i, case in enumerate(generated)]
    rows.append(("CVAE\nreconstruction", reconstruct(source, model)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=default_cvae_path())
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--phantom", type=int, default=BENCH_SEED_START, help="held-out phantom seed of the source")
    parser.add_argument("--real", action="store_true", help=f"use the real case {REAL_DEMO.name} as the source")
    parser.add_argument("--plane", choices=("axial", "coronal", "sagittal"), default="axial")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "cvae_contact_sheet.png")
    args = parser.parse_args()
    model = load_cvae(args.weights)
    if args.real:
        source, label = load_case(REAL_DEMO), "real demo"
    else:
        from core.synthesis.phantom import generate_phantom

        source, label = generate_phantom(args.phantom), f"phantom {args.phantom}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(sheet_rows(source, label, model, args.seed), args.plane).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
