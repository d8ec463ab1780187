"""Does synthetic data help a U-Net trained on few cases? ``python -m train.augment_experiment``.

For each seed, one U-Net per arm is trained with the same budget (``train.unet.train``: same steps,
batch, patch and architecture):

* **(a) K only**: ``--k`` labelled cases;
* **(b) K + M CVAE**: the same cases plus ``--m`` whole-volume CVAE samples ("new brains") conditioned on
  their masks (each case's own brain mask; every second round of masks is mirrored left-right);
* **(c) K + M insertion**: the same cases plus ``--m`` insertion samples (``core.synthesis``): the mask of
  another of the K cases (mirrored left-right every second round), clipped to the host's brain, rendered
  into each K case in turn (its own tumour replaced).

``--arms`` picks the arms (default all three). The K cases are phantoms from a seed range the generators
never saw (``AUGMENT_SEED_START``; optionally another randomisation strength, ``--k-strength``), or folders
of ``--real DIR``: K drawn per seed from the folders not named by ``--val-cases``, scored on the
``--val-cases`` folders (without ``--val-cases``: on the folders not drawn). Every U-Net is scored with
``train.evaluate.evaluate`` (Dice WT/TC/ET); the table gives mean ± std over the seeds and is printed and
saved as JSON + Markdown in ``--work-dir``. Each finished arm leaves ``score.json`` next to its U-Net: rerunning
the same command resumes an interrupted experiment (arms with other settings are retrained).

    python -m train.augment_experiment --k 4 --m 16 --seeds 0 1 2 --steps 2000
    python -m train.augment_experiment --real ../shared/data/brats-real \\
        --val-cases train/splits/brats-real-validation.txt --k 5 --m 10 --seeds 0 1 2 --steps 1000
    # tiny (tests): --k 1 --m 1 --seeds 0 1 --steps 1 --patch 16 --base 4 --depth 2 --eval-cases 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.io.case import Case, load_case, save_case
from core.io.labels import REGIONS
from core.io.weights import file_sha256, shipped_path
from core.preprocessing.preprocess import brain_mask
from core.segmentation.inference import load_model
from core.services.cli import exit_on_sigterm
from core.synthesis import cvae  # noqa: F401  (TF options before Keras loads)
from core.synthesis.generate import default_cvae_path, generate_cases, load_cvae
from train.common import read_case_ids
from train.data import find_labelled_cases
from train.evaluate import evaluate
from train.unet import PRECISIONS, TrainConfig
from train.unet import train as train_unet

AUGMENT_SEED_START = 2_000_000  # phantom seeds of the K cases (the CVAE and the U-Net train below 1,000,000)
EVAL_SEED_START = 2_500_000  # phantom seeds of the test cases
ARM_NAMES: dict[str, str] = {"a": "K only", "b": "K + M CVAE", "c": "K + M insertion"}
ARMS = tuple(ARM_NAMES.values())


@dataclass
class ExperimentConfig:
    """Settings of the experiment (saved with the results)."""

    k: int = 4
    m: int = 16
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 2000
    batch: int = 2
    patch: int = 64
    base: int = 16
    depth: int = 4
    lr: float = 1e-3
    regions: bool = False
    precision: str = "float32"
    fg_fraction: float = 0.5
    eval_cases: int = 8
    k_strength: float = 1.0
    real: str | None = None
    val_cases: str | None = None
    arms: list[str] = field(default_factory=lambda: list(ARM_NAMES))
    cvae: str = str(default_cvae_path())
    insertion: str = str(shipped_path("insertion"))
    temperature: float = 1.0
    workers: int = 1
    work_dir: str = "runs/augment"


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface."""
    d = ExperimentConfig()
    p = argparse.ArgumentParser(prog="python -m train.augment_experiment", description=__doc__.split("\n")[0])
    p.add_argument("--k", type=int, default=d.k, help="labelled training cases (default %(default)s)")
    p.add_argument("--m", type=int, default=d.m, help="CVAE samples added (default %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=d.seeds, help="experiment seeds (default %(default)s)")
    p.add_argument("--steps", type=int, default=d.steps, help="U-Net steps per run (default %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--patch", type=int, default=d.patch)
    p.add_argument("--base", type=int, default=d.base)
    p.add_argument("--depth", type=int, default=d.depth)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--regions", action="store_true", help="region outputs (WT, TC, ET sigmoids), as the shipped U-Net")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="U-Net training precision (default %(default)s)")
    p.add_argument("--fg-fraction", type=float, default=d.fg_fraction,
                   help="share of patches centred on tumour (default %(default)s)")
    p.add_argument("--eval-cases", type=int, default=d.eval_cases, help="held-out test phantoms (default %(default)s)")
    p.add_argument("--k-strength", type=float, default=d.k_strength,
                   help="randomisation strength of the K and test phantoms (default %(default)s)")
    p.add_argument("--real", default=None, help="folder of labelled BraTS case folders: K training cases per seed, "
                                                "the rest is the test set (instead of phantoms)")
    p.add_argument("--val-cases", default=None,
                   help="with --real: case ids (comma-separated or a file) that form the test set and are never "
                        "drawn as K cases")
    p.add_argument("--arms", nargs="+", choices=list(ARM_NAMES), default=d.arms,
                   help="arms: a = K only, b = K + M CVAE, c = K + M insertion (default: all)")
    p.add_argument("--cvae", default=d.cvae, help="CVAE weights (default %(default)s)")
    p.add_argument("--insertion", default=d.insertion, help="insertion VAE-GAN weights (default %(default)s)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="CVAE sampling temperature")
    p.add_argument("--workers", type=int, default=d.workers, help="case-loader processes of the U-Net trainer")
    p.add_argument("--work-dir", default=d.work_dir, help="cases, models and results (default %(default)s)")
    return p


# ------------------------------------------------------------------------------------ data


def phantom_cases(start: int, count: int, strength: float) -> list[Case]:
    """Phantoms with seeds ``start .. start + count - 1``."""
    from core.synthesis.phantom import PhantomConfig, generate_phantom

    return [generate_phantom(start + i, PhantomConfig(strength=strength)) for i in range(count)]


def split_real(root: str, k: int, seed: int, val_cases: str | None = None) -> tuple[list[Path], list[Path]]:
    """K random labelled case folders of ``root`` for training, the ``val_cases`` (default: the others) for testing."""
    folders = find_labelled_cases(root)
    if val_cases:
        ids = set(read_case_ids(val_cases))
        test = [f for f in folders if f.name in ids]
        if len(test) != len(ids):
            raise SystemExit(f"error: --val-cases: {sorted(ids - {f.name for f in test})} not found in {root}")
        pool = [f for f in folders if f.name not in ids]
        if len(pool) < k:
            raise SystemExit(f"error: --real {root}: {len(pool)} labelled training folders; need --k {k}")
        order = np.random.default_rng(seed).permutation(len(pool))
        return [pool[i] for i in order[:k]], test
    if len(folders) <= k:
        raise SystemExit(f"error: --real {root}: {len(folders)} labelled case folders; need more than --k {k} "
                         "(the rest is the test set)")
    order = np.random.default_rng(seed).permutation(len(folders))
    return [folders[i] for i in order[:k]], [folders[i] for i in order[k:]]


def cvae_samples(cases: Sequence[Case], m: int, model: cvae.ConditionalVAE, seed: int, temperature: float
                 ) -> list[Case]:
    """``m`` CVAE cases conditioned on the masks of ``cases`` in turn (mirrored in X every second round)."""
    samples = []
    for j in range(m):
        source = cases[j % len(cases)]
        mirror = (j // len(cases)) % 2 == 1
        seg, brain = source.seg, brain_mask(source.image)
        if mirror:
            seg, brain = seg[::-1].copy(), brain[::-1].copy()
        case = generate_cases(seg, source.affine, source.header, model, n_samples=1, seed=seed * 100_003 + j,
                              temperature=temperature, brain=brain)[0]
        case.name = f"cvae-{j:03d}-{source.name}"
        samples.append(case)
    return samples


def insertion_samples(cases: Sequence[Case], m: int, model, seed: int, temperature: float) -> list[Case]:
    """``m`` insertion samples: K case ``j % K`` gets the mask of the next K case (mirrored in X every second round,
    or always when K = 1), clipped to the host's brain; its own tumour is replaced."""
    from core.synthesis.insert import insert_tumour
    from train.insertion_cases import target_map

    samples = []
    for j in range(m):
        host = cases[j % len(cases)]
        mirror = (j // len(cases)) % 2 == 1 or len(cases) == 1
        target = target_map(host.image, cases[(j + 1) % len(cases)].seg, mirror)
        case = insert_tumour(host, target, model, seed=seed * 100_003 + j, temperature=temperature)[0]
        case.name = f"insert-{j:03d}-{host.name}"
        samples.append(case)
    return samples


def write_cases(cases: Sequence[Case], folder: Path) -> Path:
    """Save cases as BraTS 2020 folders under ``folder``."""
    for case in cases:
        save_case(case, folder, naming="2020", name=case.name)
    return folder


# ------------------------------------------------------------------------------ experiment


def unet_config(config: ExperimentConfig, data: Path, out: Path, seed: int) -> TrainConfig:
    """The U-Net training run of one arm (same budget for both arms)."""
    return TrainConfig(data=str(data), steps=config.steps, batch=config.batch, patch=config.patch, base=config.base,
                       depth=config.depth, lr=config.lr, seed=seed, out=str(out / "unet.keras"),
                       run_dir=str(out / "run"), val_every=config.steps, val_cases=0, workers=config.workers,
                       pool=8, patches_per_case=4, regions=config.regions, precision=config.precision,
                       fg_fraction=config.fg_fraction)


GENERATOR_OF_ARM = {"b": "cvae", "c": "insertion"}
# The code that turns a generator's weights into an arm's samples: a change to it (texture, precision, blending)
# changes the samples as surely as new weights do, so its source is part of the arm's reuse key.
_SYNTHESIS = Path(__file__).resolve().parents[1] / "core" / "synthesis"
SAMPLING_SOURCES: dict[str, tuple[Path, ...]] = {
    "b": tuple(_SYNTHESIS / name for name in ("cvae.py", "generate.py")),
    "c": tuple(_SYNTHESIS / name for name in ("insert.py", "region.py", "texture.py", "calibration.py", "vaegan.py")),
}


def sources_sha256(paths: Sequence[Path]) -> str:
    """One SHA-256 over the files' names and bytes, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def arm_settings(config: ExperimentConfig, arm: str) -> dict:
    """The settings an arm's finished U-Net and score depend on (a rerun reuses them only if these match).

    The generator an arm draws its samples from is named by the SHA-256 of its file, not its path, and by that of
    the sampling code (:data:`SAMPLING_SOURCES`): retraining the insertion model in place, or changing how it
    samples, retrains arm (c) and leaves (a) and (b) as they were.
    """
    settings = {key: value for key, value in asdict(config).items()
                if key not in ("seeds", "arms", "workers", "work_dir", *GENERATOR_OF_ARM.values())}
    if arm in GENERATOR_OF_ARM:
        settings[f"{GENERATOR_OF_ARM[arm]}_sha256"] = file_sha256(getattr(config, GENERATOR_OF_ARM[arm]))
        settings[f"{GENERATOR_OF_ARM[arm]}_code_sha256"] = sources_sha256(SAMPLING_SOURCES[arm])
    return settings


def train_and_score(config: ExperimentConfig, seed: int, arm: str, data: Path, eval_root: Path) -> dict:
    """Train one arm's U-Net and score it: ``{region: dice}``, reused from ``score.json`` when a previous run with
    the same settings finished it (so an interrupted experiment resumes where it stopped)."""
    out = data.parent / f"unet_{data.name}"
    score_file = out / "score.json"
    if score_file.exists():
        saved = json.loads(score_file.read_text())
        if saved.get("settings") == arm_settings(config, arm) and (out / "unet.keras").exists():
            print(f"seed {seed} arm {arm}: reusing {score_file}", flush=True)
            return saved["dice"]
    start = time.time()
    train_unet(unet_config(config, data, out, seed), command=f"train.augment_experiment seed {seed} arm {arm}")
    report = evaluate(eval_root, load_model(out / "unet.keras"), quiet=True)
    dice = {r: report["mean"][r]["dice"] for r in REGIONS}
    score_file.write_text(json.dumps({"settings": arm_settings(config, arm), "dice": dice,
                                      "per_case": report.get("cases"), "wall_time_s": round(time.time() - start, 1)},
                                     indent=2, default=float) + "\n")
    return dice


def run_seed(config: ExperimentConfig, seed: int, models: dict, eval_root: Path | None) -> dict:
    """Train and score the arms for one seed; returns ``{arm: {region: dice}}`` (+ case names).

    ``models`` holds the generators the arms need: ``"b"`` the CVAE, ``"c"`` the insertion model.
    """
    work = Path(config.work_dir) / f"seed{seed}"
    if config.real:
        train_folders, test_folders = split_real(config.real, config.k, seed, config.val_cases)
        k_cases = [load_case(f) for f in train_folders]
        eval_root = write_links(test_folders, work / "test")
    else:
        k_cases = phantom_cases(AUGMENT_SEED_START + seed * 1000, config.k, config.k_strength)
    assert eval_root is not None
    arms: dict[str, Path] = {}  # arm letter -> its training folder
    if "a" in config.arms:
        arms["a"] = write_cases(k_cases, work / "k")
    if "b" in config.arms:
        samples = cvae_samples(k_cases, config.m, models["b"], seed, config.temperature)
        arms["b"] = write_cases([*k_cases, *samples], work / "k_m")
    if "c" in config.arms:
        samples = insertion_samples(k_cases, config.m, models["c"], seed, config.temperature)
        arms["c"] = write_cases([*k_cases, *samples], work / "k_m_insert")
    result: dict = {"k_cases": [c.name for c in k_cases]}
    for arm, data in arms.items():
        name = ARM_NAMES[arm]
        result[name] = train_and_score(config, seed, arm, data, eval_root)
        print(f"seed {seed} {name}: " + " ".join(f"{r} {v:.3f}" for r, v in result[name].items()), flush=True)
    return result


def write_links(folders: Sequence[Path], root: Path) -> Path:
    """A folder of symbolic links to ``folders`` (the test set of ``--real``)."""
    root.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        link = root / folder.name
        if not link.exists():
            link.symlink_to(folder.resolve(), target_is_directory=True)
    return root


def summarise(per_seed: Sequence[dict]) -> dict:
    """Mean and std over seeds of each arm's Dice per region (the arms that were run)."""
    arms = [arm for arm in ARMS if arm in per_seed[0]]
    return {arm: {r: {"mean": float(np.mean([s[arm][r] for s in per_seed])),
                      "std": float(np.std([s[arm][r] for s in per_seed]))} for r in REGIONS} for arm in arms}


def format_table(summary: dict, config: ExperimentConfig) -> str:
    """Markdown table of the summary."""
    lines = [f"| training data (K={config.k}, M={config.m}, {len(config.seeds)} seeds, {config.steps} steps) | "
             + " | ".join(f"{r} Dice" for r in REGIONS) + " |", "|---" * (1 + len(REGIONS)) + "|"]
    for arm in summary:
        cells = " | ".join(f"{summary[arm][r]['mean']:.3f} ± {summary[arm][r]['std']:.3f}" for r in REGIONS)
        lines.append(f"| {arm} | {cells} |")
    return "\n".join(lines)


def run(config: ExperimentConfig) -> dict:
    """The whole experiment; returns (and saves) the results."""
    if config.k < 1 or config.m < 0 or not config.seeds or config.steps < 1:
        raise SystemExit("error: need --k >= 1, --m >= 0, --steps >= 1 and at least one seed")
    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if not config.arms or set(config.arms) - set(ARM_NAMES):
        raise SystemExit(f"error: --arms: use some of {', '.join(ARM_NAMES)} (got {config.arms})")
    models: dict = {}
    if "b" in config.arms:
        models["b"] = load_cvae(config.cvae)
    if "c" in config.arms:
        from core.synthesis.insert import load_insertion_model

        models["c"] = load_insertion_model(config.insertion)
    eval_root = None
    if not config.real:
        eval_root = write_cases(phantom_cases(EVAL_SEED_START, config.eval_cases, config.k_strength), work / "test")
    per_seed = [run_seed(config, seed, models, eval_root) for seed in config.seeds]
    summary = summarise(per_seed)
    table = format_table(summary, config)
    results = {"config": asdict(config), "per_seed": per_seed, "summary": summary, "table": table,
               "test_set": (f"{config.eval_cases} phantoms, seeds {EVAL_SEED_START}.., strength {config.k_strength}"
                            if not config.real else f"the --val-cases folders ({config.val_cases})" if config.val_cases
                            else "the --real folders not drawn as K cases, per seed"),
               "wall_time_s": round(time.time() - start, 1)}
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (work / "results.md").write_text(table + "\n")
    print(table)
    print(f"wrote {work / 'results.json'} and {work / 'results.md'}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    exit_on_sigterm()  # SIGTERM unwinds: the case-producer processes are stopped, not orphaned
    fields = ExperimentConfig.__dataclass_fields__
    run(ExperimentConfig(**{k: v for k, v in vars(args).items() if k in fields}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
