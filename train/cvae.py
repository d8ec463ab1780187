"""Train the conditional VAE: ``python -m train.cvae``.

Examples::

    # shipped weights: fresh domain-randomised phantoms made by a background worker process
    python -m train.cvae --steps 4000 --out weights/cvae.keras
    # a folder of BraTS case folders (2020 or 2023 naming, each with a seg file)
    python -m train.cvae --data /data/BraTS2021 --steps 20000 --out runs/brats/cvae.keras
    # continue an interrupted run from its last checkpoint
    python -m train.cvae --steps 4000 --out weights/cvae.keras --resume

Data come from ``train.data`` (the U-Net's producers and pool): each case is preprocessed like
at inference (brain mask, per-channel z-score, cropped to the brain), then
``core.synthesis.cvae.model_inputs`` centres the brain in the model box and pools it to 2 mm. A training
sample is one whole brain, mirrored left-right with probability 1/2.

Every ``--ckpt-every`` steps: the reconstruction L1 (posterior mean, inside the brain, at model
resolution) of ``--val-cases`` held-out phantoms (seeds from ``train.data.VALIDATION_SEED_START``),
a resumable checkpoint (``RUN_DIR/checkpoint.keras`` + ``state.json``) and the exported model
(``--out``, no optimizer state) with its JSON model card beside it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from core.services.cli import exit_on_sigterm
from core.synthesis import cvae
from train.common import (
    CHECKPOINT,
    RunMonitor,
    command_line,
    config_from_args,
    data_spec,
    epoch_plan,
    fit_on_pool,
    new_state,
    resume_run,
)
from train.data import (
    VALIDATION_SEED_START,
    CasePool,
    TrainingCase,
    held_out_phantoms,
    training_case,
)

import keras  # noqa: E402

END_LR_FRACTION = 0.05  # cosine decay ends at lr * this


@dataclass
class CvaeTrainConfig:
    """Everything that defines a CVAE training run (stored in the model card)."""

    data: str = "phantom"
    steps: int = 4000
    batch: int = 1
    lr: float = 1e-3
    beta: float = 0.1
    warmup: int = 500
    latent: int = 8
    base: int = 16
    depth: int = 3
    max_filters: int = 64
    box: tuple[int, int, int] = cvae.BRATS_BOX_SIZE
    factor: int = 2
    seed: int = 0
    out: str = "weights/cvae.keras"
    run_dir: str = "runs/cvae"
    ckpt_every: int = 250
    val_cases: int = 2
    workers: int = 1
    pool: int = 16
    samples_per_case: int = 6
    phantom_strength: float = 1.0


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``python -m train.cvae``."""
    d = CvaeTrainConfig()
    p = argparse.ArgumentParser(prog="python -m train.cvae", description="Train the BraTS conditional VAE.")
    p.add_argument("--data", default=d.data, help="'phantom' (fresh synthetic cases) or a folder of BraTS case folders")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps in total (default %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch, help="whole brains per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr,
                   help="initial Adam learning rate, cosine decay (default %(default)s)")
    p.add_argument("--beta", type=float, default=d.beta, help="KL weight after warm-up (default %(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="KL warm-up steps (default %(default)s)")
    p.add_argument("--latent", type=int, default=d.latent, help="latent channels (default %(default)s)")
    p.add_argument("--base", type=int, default=d.base, help="base filters (default %(default)s)")
    p.add_argument("--depth", type=int, default=d.depth, help="down-samplings to the latent (default %(default)s)")
    p.add_argument("--max-filters", type=int, default=d.max_filters, help="filter cap per level (default %(default)s)")
    p.add_argument("--box", type=int, nargs=3, default=list(d.box), metavar=("X", "Y", "Z"),
                   help="1 mm box around the brain seen by the model (default %(default)s)")
    p.add_argument("--factor", type=int, default=d.factor,
                   help="down-sampling of the 1 mm box to the model grid (default %(default)s: 2 mm)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (phantom seeds start here)")
    p.add_argument("--out", default=d.out, help="exported model (.keras); card beside it (default %(default)s)")
    p.add_argument("--run-dir", default=d.run_dir, help="checkpoints and state (default %(default)s)")
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every,
                   help="steps between checkpoints (default %(default)s)")
    p.add_argument("--val-cases", type=int, default=d.val_cases,
                   help="held-out phantoms validated (default %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, help="case-producer processes (0: in-process)")
    p.add_argument("--pool", type=int, default=d.pool, help="cases kept in the pool (default %(default)s)")
    p.add_argument("--samples-per-case", type=int, default=d.samples_per_case,
                   help="samples drawn per new case taken into the pool (default %(default)s)")
    p.add_argument("--phantom-strength", type=float, default=d.phantom_strength,
                   help="domain-randomisation strength of the phantoms (default %(default)s)")
    p.add_argument("--resume", action="store_true", help=f"continue from RUN_DIR/{CHECKPOINT}")
    return p


# ------------------------------------------------------------------------------------ data


def case_arrays(case: TrainingCase, grid: cvae.CvaeGrid, mirror: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(image, condition)`` channel-last model-grid arrays of a preprocessed case (optionally mirrored in X)."""
    image = np.moveaxis(case.image, -1, 0).astype(np.float32)
    labels = case.labels
    if mirror:
        image, labels = image[:, ::-1], labels[::-1]
    brain = np.any(image != 0, axis=0)
    _, cond, x = cvae.model_inputs(grid, labels, brain, image)
    return x, cond


def sample_stream(pool: CasePool, grid: cvae.CvaeGrid, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless ``(image, condition)`` samples: random pool cases, mirrored with probability 1/2."""
    rng = np.random.default_rng([seed, 30_000])
    while True:
        yield case_arrays(pool.draw(rng), grid, mirror=bool(rng.random() < 0.5))


def batch_stream(samples: Iterator, batch: int) -> Iterator[tuple[tuple[np.ndarray, np.ndarray]]]:
    """``((image, condition),)`` batches as ``Model.fit`` expects inputs without targets."""
    while True:
        items = [next(samples) for _ in range(batch)]
        yield ((np.stack([x for x, _ in items]), np.stack([c for _, c in items])),)


def validation_arrays(count: int, grid: cvae.CvaeGrid, strength: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """Model-grid arrays of ``count`` held-out phantoms."""
    return [case_arrays(training_case(case), grid) for case in held_out_phantoms(count, strength)]


def reconstruction_l1(model: cvae.ConditionalVAE, arrays: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean L1 (z-score units, inside the brain) of the posterior-mean reconstructions."""
    errors = []
    for x, cond in arrays:
        z_mean, _ = model.encode(x[None], cond[None])
        recon = keras.ops.convert_to_numpy(model.decode(z_mean, cond[None]))[0]
        brain = cond[..., -1:]
        errors.append(float(np.sum(np.abs(recon - x) * brain) / max(np.sum(brain) * x.shape[-1], 1.0)))
    return float(np.mean(errors)) if errors else float("nan")


# ----------------------------------------------------------------------------------- model


def build_model(config: CvaeTrainConfig) -> cvae.ConditionalVAE:
    """The CVAE of ``config``, compiled with Adam (cosine decay, global gradient clipping)."""
    model = cvae.build_cvae(base_filters=config.base, latent_channels=config.latent, depth=config.depth,
                            max_filters=config.max_filters, beta=config.beta, kl_warmup_steps=config.warmup,
                            grid=cvae.CvaeGrid(tuple(config.box), config.factor), seed=config.seed)
    schedule = keras.optimizers.schedules.CosineDecay(config.lr, max(config.steps, 1), alpha=END_LR_FRACTION)
    model.compile(optimizer=keras.optimizers.Adam(schedule, global_clipnorm=1.0))
    return model


def inference_copy(model: cvae.ConditionalVAE) -> cvae.ConditionalVAE:
    """Uncompiled copy with ``model``'s weights (exported without optimizer state)."""
    copy = cvae.ConditionalVAE.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


class CvaeMonitor(RunMonitor):
    """Validation reconstruction L1 on held-out phantoms; every epoch's model is exported."""

    shown = ("loss", "rec", "kl")

    def __init__(self, config: CvaeTrainConfig, state: dict, val_arrays: Sequence, info: dict):
        super().__init__(state, Path(config.run_dir), Path(config.out), desc="train CVAE")
        self.config, self.val_arrays, self.info = config, val_arrays, info

    def export(self) -> cvae.ConditionalVAE:
        return inference_copy(self.model)

    def validate(self, export: cvae.ConditionalVAE) -> dict:
        values = {"kl_weight": float(keras.ops.convert_to_numpy(export.kl_weight()))}
        if self.val_arrays:
            values["val_rec"] = reconstruction_l1(export, self.val_arrays)
        return values

    def card(self, entry: dict, export: cvae.ConditionalVAE) -> dict:
        return model_card(self.config, self.state, export, self.info)

    def summary(self, entry: dict) -> str:
        val = f", val rec {entry['val_rec']:.4f}" if "val_rec" in entry else ""
        return super().summary(entry) + val


def model_card(config: CvaeTrainConfig, state: dict, model: cvae.ConditionalVAE, info: dict) -> dict:
    """JSON model card of the exported CVAE."""
    last = state["history"][-1] if state["history"] else {}
    return {
        "model": "3D conditional VAE (core.synthesis.cvae.build_cvae)",
        "task": "synthetic t1/t1ce/t2/flair (z-scores inside the brain) conditioned on a tumour mask "
                "(internal labels 0..3) and a brain mask",
        "architecture": {**{k: v for k, v in model.get_config().items() if k not in ("name", "trainable", "dtype")},
                         "model_grid": list(model.grid.model_shape), "latent_shape": list(model.latent_shape)},
        "data": ("fresh domain-randomised phantoms (core.synthesis.phantom), seeds "
                 f"{config.seed}.. < {VALIDATION_SEED_START}, strength {config.phantom_strength}"
                 if config.data == "phantom" else config.data),
        "preprocessing": "core.preprocessing.preprocess.prepare_input (brain mask, per-channel z-score, crop to "
                         "brain), then "
                         f"core.synthesis.cvae.model_inputs (centred {list(model.grid.box_size)} box, "
                         f"{model.grid.factor}x average pooling); "
                         "mirrored in X with p=0.5",
        "step": state["step"],
        "steps_planned": config.steps,
        "config": asdict(config),
        "losses": {k: last.get(k) for k in ("loss", "rec", "kl", "val_rec")},
        "validation": (f"reconstruction L1 (z-score units, in brain, model grid) of {config.val_cases} held-out "
                       f"phantoms, seeds {VALIDATION_SEED_START}..{VALIDATION_SEED_START + config.val_cases - 1}"
                       if config.val_cases else "none"),
        "history": state["history"],
        "wall_time_s": round(state["wall_time_s"], 1),
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        **info,
        "command": state.get("command"),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------ main


def train(config: CvaeTrainConfig, resume: bool = False, command: str | None = None) -> dict:
    """Run training; returns the final state (history, wall time, ...)."""
    data_spec(config.data, config.seed, config.phantom_strength)  # fail early on a bad --data
    if config.ckpt_every < 1 or config.steps < 1 or config.batch < 1:
        raise SystemExit("error: --steps, --batch and --ckpt-every must be >= 1")
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    state = new_state(command)
    if resume:
        model, state = resume_run(run_dir, command)
    else:
        try:
            model = build_model(config)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from exc
    start_step, epochs, initial_epoch = epoch_plan(model, config.steps, config.ckpt_every)
    if initial_epoch >= epochs:
        print(f"already trained {start_step} steps >= --steps {config.steps}; nothing to do")
        return state

    spec = data_spec(config.data, int(state.get("next_case_seed", config.seed)), config.phantom_strength)
    val_arrays = validation_arrays(config.val_cases, model.grid, config.phantom_strength) if config.val_cases else []
    monitor = CvaeMonitor(config, state, val_arrays, {"params": int(model.count_params())})
    fit_on_pool(model, monitor, spec, workers=config.workers, pool_size=config.pool,
                uses_per_case=config.samples_per_case,
                stream=lambda pool: sample_stream(pool, model.grid, config.seed + start_step),
                batches=lambda samples: batch_stream(samples, config.batch), buffer=2 * config.batch,
                steps_per_epoch=config.ckpt_every, epochs=epochs, initial_epoch=initial_epoch)
    return state


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    exit_on_sigterm()  # SIGTERM unwinds: the case-producer processes are stopped, not orphaned
    config = config_from_args(CvaeTrainConfig, args)
    command = command_line("train.cvae", argv)
    state = train(config, resume=args.resume, command=command)
    if state.get("history"):
        last = state["history"][-1]
        print(f"done: step {last['step']}, loss {last.get('loss', float('nan')):.4f}, model {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
