"""Synthetic training cases by tumour insertion: ``python -m train.insertion_cases``.

Each labelled training case (the *host*) gets the tumour of another training case (the *donor*, drawn at random,
never itself; mirrored left-right with probability one half), clipped to the host's brain, rendered into it by the
insertion VAE-GAN (``core.synthesis.insert``: the host's own tumour is replaced, every voxel outside the region
``R`` stays the host's). The samples are written as BraTS 2020 folders (``_seg`` = the inserted label map) that
``python -m train.unet --data OUT`` mixes with the real folders — the BraTS 2023/2024 winners' way of adding
tumour shapes and places the real cases lack. A ``manifest.json`` names host, donor, mirror and seed per case.

    python -m train.insertion_cases ../shared/data/brats-real --exclude train/splits/brats-real-validation.txt \\
        -o runs/insert20 --per-host 1 --seed 0
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.io.case import CaseError, load_case, save_case
from core.preprocessing.preprocess import brain_mask
from core.services.cli import exit_on_sigterm, fail
from train.common import labelled_case_folders, read_case_ids


@dataclass(frozen=True)
class Insertion:
    """One planned synthetic case: ``donor``'s tumour (mirrored or not) into ``host``."""

    name: str
    host: str
    donor: str
    mirror: bool
    seed: int


def plan_insertions(hosts: Sequence[str], per_host: int, seed: int,
                    donors: Sequence[str] | None = None) -> list[Insertion]:
    """``per_host`` insertions per host, each with a random other case as donor (distinct donors per host while
    there are enough) and a random left-right mirror; deterministic in ``seed``.

    Args:
        hosts: the labelled cases to render into (sorted ids).
        per_host: synthetic cases per host.
        seed: donor draw, mirror and latent seed.
        donors: draw donors only from these ids (e.g. the cases without enhancing tumour); default: every host.
            A host never receives its own tumour, so a host that is the only donor gets none.

    Raises:
        ValueError: fewer than two hosts, ``per_host < 1``, or a donor that is not among the hosts.
    """
    if len(hosts) < 2:
        raise ValueError(f"insertion needs at least two labelled cases (a host and a donor), got {len(hosts)}")
    if per_host < 1:
        raise ValueError(f"per_host must be >= 1, got {per_host}")
    pool = list(hosts) if donors is None else list(donors)
    unknown = sorted(set(pool) - set(hosts))
    if unknown or not pool:
        raise ValueError(f"donors must be labelled training cases; not found: {', '.join(unknown) or '(none given)'}")
    rng = np.random.default_rng(seed)
    plan = []
    for h, host in enumerate(hosts):
        others = [d for d in pool if d != host]
        if not others:
            continue
        order = rng.permutation(len(others))
        for j in range(per_host):
            donor = others[int(order[j % len(order)])]
            mirror = bool(rng.random() < 0.5)
            plan.append(Insertion(name=f"ins{seed}-{h:03d}{j:02d}-{host}", host=host, donor=donor, mirror=mirror,
                                  seed=seed * 100_003 + h * 101 + j))
    return plan


def target_map(host_image: np.ndarray, donor_seg: np.ndarray, mirror: bool) -> np.ndarray:
    """The donor's label map (internal labels 0..3), mirrored along the first axis if asked, clipped to the host's
    brain; uint8 on the host's grid."""
    seg = donor_seg[::-1] if mirror else donor_seg
    return np.where(brain_mask(host_image), seg, 0).astype(np.uint8)


def donors_of_kind(folders: dict[str, Path], kind: str) -> list[str] | None:
    """The case ids whose reference shows ``kind`` (:func:`train.data.rare_kinds`: ``no-ET``, ``small``,
    ``non-enhancing-core``), sorted; ``None`` for ``any`` (every case may donate).

    Raises:
        ValueError: no case of that kind among ``folders``.
    """
    if kind == "any":
        return None
    from train.data import rare_kinds, reference_labels

    chosen = sorted(name for name, folder in folders.items() if kind in rare_kinds(*reference_labels(folder)))
    if not chosen:
        raise ValueError(f"no training case of kind {kind!r} to take tumours from")
    return chosen


@dataclass
class Config:
    """Settings of one run (see the command-line help)."""

    data: str
    out: str
    exclude: str | None = None
    per_host: int = 1
    seed: int = 0
    temperature: float = 1.0
    insertion: str | None = None
    donor_kind: str = "any"


def run(config: Config) -> list[Insertion]:
    """Plan, render and write the synthetic cases; returns the plan (cases already written are kept)."""
    from tqdm import tqdm

    from core.synthesis.insert import default_insertion_path, insert_tumour, load_insertion_model

    excluded = read_case_ids(config.exclude) if config.exclude else []
    folders = {f.name: f for f in labelled_case_folders(config.data, exclude=excluded)}
    plan = plan_insertions(sorted(folders), config.per_host, config.seed,
                           donors=donors_of_kind(folders, config.donor_kind))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_insertion_model(config.insertion or default_insertion_path())
    segs: dict[str, np.ndarray] = {}
    for item in tqdm(plan, desc="insertions", unit="case", file=sys.stderr):
        if (out / item.name).is_dir():
            continue
        host = load_case(folders[item.host])
        if item.donor not in segs:
            segs[item.donor] = load_case(folders[item.donor]).seg
        if segs[item.donor].shape != host.shape:
            raise CaseError(f"{folders[item.donor]}: grid {segs[item.donor].shape} differs from host "
                            f"{folders[item.host]} {host.shape}; insertion needs cases on one grid "
                            "(BraTS: 240x240x155)")
        target = target_map(host.image, segs[item.donor], item.mirror)
        case = insert_tumour(host, target, model, seed=item.seed, temperature=config.temperature, name=item.donor)[0]
        partial = out / ".partial"
        save_case(case, partial, naming="2020", name=item.name)
        (partial / item.name).rename(out / item.name)  # a case folder appears only when complete
    shutil.rmtree(out / ".partial", ignore_errors=True)
    manifest = {"config": asdict(config), "cases": [asdict(i) for i in plan]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return plan


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface."""
    p = argparse.ArgumentParser(prog="python -m train.insertion_cases", description=__doc__.split("\n")[0])
    p.add_argument("data", help="folder of labelled BraTS case folders (hosts and donors)")
    p.add_argument("-o", "--out", required=True, help="output folder of synthetic case folders")
    p.add_argument("--exclude", default=None, help="case ids never used (comma-separated or a file): validation")
    p.add_argument("--per-host", type=int, default=1, help="synthetic cases per host (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="donor draw and latent seed (default %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="latent temperature and host-matched texture strength (default %(default)s)")
    p.add_argument("--insertion", default=None, help="insertion model (default: weights/insertion.keras)")
    p.add_argument("--donor-kind", default="any", choices=("any", "no-ET", "small", "non-enhancing-core"),
                   help="take tumours only from training cases of this rare kind (train.data.rare_kinds), e.g. "
                        "no-ET: the non-enhancing, low-grade-like ones (default %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exit_on_sigterm()
    try:
        plan = run(Config(**vars(args)))
    except (CaseError, ValueError, OSError) as exc:
        return fail(exc)
    print(f"{len(plan)} synthetic cases in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
