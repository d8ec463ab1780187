"""Train the 3D U-Net: ``python -m train.unet``.

Examples::

    # real BraTS cases (+ a quarter phantoms), region-based head, validated on the fixed real split
    python -m train.unet --data ../shared/data/brats-real --data phantom --regions \
        --val-cases train/splits/brats-real-validation.txt --init weights/unet.keras --patch 128 --batch 1
    # fresh domain-randomised phantoms, validated on held-out phantom seeds
    python -m train.unet --data phantom --steps 20000 --batch 2 --patch 96 --out weights/unet.keras
    # a folder of BraTS case folders (2020 or 2023 naming, each with a seg file)
    python -m train.unet --data /data/BraTS2021 --steps 50000 --out runs/brats/unet.keras
    # continue an interrupted run from its last checkpoint
    python -m train.unet --data phantom --steps 20000 --out weights/unet.keras --resume

``--data`` may be given several times: folders of labelled case folders and/or ``phantom`` (mixed with
``--phantom-fraction``). ``--val-cases`` is either a number of held-out phantoms or real validation
cases: comma-separated case ids or a file with one id per line; those cases are looked up in the
``--data`` folders and are never trained on.

Every ``--val-every`` steps the trainer segments the validation cases (phantoms: seeds from
``train.data.VALIDATION_SEED_START`` = 1,000,000 on, never used for training) with the same
``core.segmentation.inference.segment_case`` the app uses, logs their Dice (WT/TC/ET), saves a resumable
checkpoint (model + optimizer, ``RUN_DIR/checkpoint.keras`` + ``RUN_DIR/state.json``), and exports the
best model so far (mean validation Dice) to ``--out`` without optimizer state, with a JSON model card
beside it (``unet.keras`` -> ``unet.json``).

``--reproducible`` makes the patches a function of ``--seed`` alone (the case pool waits for a late
producer instead of skipping its case): use it for A/B trials, whose differences are otherwise mixed
with the machine's load.

Multiple devices (data parallelism; the global ``--batch`` is split across devices):

* TensorFlow backend: ``tf.distribute.MirroredStrategy`` over the visible GPUs (or CPUs); the model is
  built and compiled in ``strategy.scope()`` and ``fit`` distributes the ``tf.data`` pipeline.
* JAX backend (``KERAS_BACKEND=jax``): ``keras.distribution.DataParallel`` set globally with
  ``keras.distribution.set_distribution`` before the model is built.
* ``--devices N`` uses N devices (0: all visible; default 1: no distribution). ``--cpu-devices N``
  splits the host CPU into N logical devices first (TF logical devices / XLA's
  ``--xla_force_host_platform_device_count``): that is how the multi-device path is tested without
  accelerators, and it must happen before the backend initialises, so the tests run it in a subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow: errors only on the console

import numpy as np

from core.io.case import load_case
from core.io.labels import REGIONS, region_mask
from core.segmentation import unet
from core.segmentation.inference import segment_case
from core.segmentation.metrics import dice
from core.services.cli import exit_on_sigterm
from train.common import (
    CHECKPOINT,
    RunMonitor,
    command_line,
    config_from_args,
    data_spec,
    epoch_plan,
    fit_on_pool,
    folders_named,
    labelled_case_folders,
    new_state,
    read_case_ids,
    resume_run,
)
from train.data import (
    REAL_DATA_AUGMENTATION,
    REAL_FADED_AUGMENTATION,
    VALIDATION_SEED_START,
    AugmentConfig,
    batches,
    case_id,
    held_out_phantoms,
    patch_stream,
)

import keras  # noqa: E402

END_LR_FRACTION = 0.02  # polynomial decay ends at lr * this
CLIP_NORM = 12.0  # gradient-norm clipping (nnU-Net's value)


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the model card)."""

    data: str | list[str] = "phantom"
    steps: int = 20000
    batch: int = 2
    patch: int = 96
    base: int = 16
    depth: int = 4
    norm: str = "instance"
    lr: float = 1e-3
    seed: int = 0
    out: str = "weights/unet.keras"
    run_dir: str = "runs/unet"
    val_every: int = 500
    val_cases: int | str = 4
    workers: int = 1
    pool: int = 12
    patches_per_case: int = 16
    fg_fraction: float = 0.5
    phantom_strength: float = 1.0
    devices: int = 1
    cpu_devices: int = 0
    init: str | None = None
    regions: bool = False
    precision: str = "float32"
    phantom_fraction: float | None = None
    augment: str = "auto"
    stop_at: int | None = None
    patch_workers: int = 0
    keep_exports: bool = False
    ema: float = 0.0
    loss: str = "dice"
    reproducible: bool = False
    rare_weight: float = 1.0


PRECISIONS = ("float32", "mixed_bfloat16")
REGION_LOSSES = {"dice": unet.region_dice_bce_loss, "tversky": unet.region_tversky_bce_loss}
AUGMENTATIONS = {"phantom": AugmentConfig(), "real": REAL_DATA_AUGMENTATION, "real-faded": REAL_FADED_AUGMENTATION}


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``python -m train.unet``."""
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m train.unet", description="Train the BraTS 3D U-Net.")
    p.add_argument("--data", action="append", default=None,
                   help="'phantom' (fresh synthetic cases) or a folder of BraTS case folders; repeat to mix "
                        "(default: phantom)")
    p.add_argument("--steps", type=int, default=d.steps,
                   help="optimizer steps in total, rounded up to a multiple of --val-every (default %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch, help="global batch size (default %(default)s)")
    p.add_argument("--patch", type=int, default=d.patch, help="patch edge in voxels (default %(default)s)")
    p.add_argument("--base", type=int, default=d.base, help="U-Net base filters (default %(default)s)")
    p.add_argument("--depth", type=int, default=d.depth, help="U-Net resolution levels (default %(default)s)")
    p.add_argument("--norm", choices=unet.NORMS, default=d.norm, help="normalisation (default %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr,
                   help="initial Adam learning rate, polynomial decay (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (phantom seeds start here)")
    p.add_argument("--out", default=d.out, help="exported best model (.keras); card beside it (default %(default)s)")
    p.add_argument("--run-dir", default=d.run_dir, help="checkpoints and state (default %(default)s)")
    p.add_argument("--val-every", type=int, default=d.val_every, help="steps between validations (default %(default)s)")
    p.add_argument("--val-cases", default=d.val_cases,
                   help="a number of held-out phantoms, or real validation case ids (comma-separated, or a file "
                        "with one id per line) found in the --data folders and never trained on "
                        "(default %(default)s phantoms)")
    p.add_argument("--phantom-fraction", type=float, default=None,
                   help="share of phantoms among the training cases when --data mixes folders and 'phantom' "
                        "(default 0.25)")
    p.add_argument("--regions", action="store_true",
                   help="region-based head: sigmoids for WT, TC, ET with Dice + BCE (nnU-Net's BraTS setting)")
    p.add_argument("--loss", choices=tuple(REGION_LOSSES), default=d.loss,
                   help="region head's overlap term: 'dice' (Dice + BCE) or 'tversky' (Tversky alpha 0.3 / beta 0.7 + "
                        "BCE: missed tumour costs more than over-called tumour) (default %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="Keras dtype policy for training and the exported model (default %(default)s)")
    p.add_argument("--augment", choices=("auto", *AUGMENTATIONS), default=d.augment,
                   help="augmentation setting: 'real' adds elastic deformation and a bias field; 'real-faded' also "
                        "lowers the tumour's contrast in 30 %% of patches; auto: 'real' when any --data is a folder "
                        "(default %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, help="case-producer processes (0: in-process)")
    p.add_argument("--patch-workers", type=int, default=d.patch_workers,
                   help="> 0: that many processes sample augmented patches in parallel, each with its own pool of "
                        "--pool cases (for an accelerator that one sampling thread cannot feed; --workers is then "
                        "unused). Default %(default)s: one sampling thread")
    p.add_argument("--reproducible", action="store_true",
                   help="the case pool waits for each due case instead of skipping it when the producer is late, "
                        "so two runs with the same seed train on the same patches whatever the machine's load "
                        "(needs --workers 0 or 1 and --patch-workers 0)")
    p.add_argument("--keep-exports", action="store_true",
                   help="keep every validation step's export as RUN_DIR/export_stepNNNNNN.keras (to select later)")
    p.add_argument("--pool", type=int, default=d.pool, help="cases kept for patch sampling (default %(default)s)")
    p.add_argument("--patches-per-case", type=int, default=d.patches_per_case,
                   help="patches drawn per new case taken into the pool (default %(default)s)")
    p.add_argument("--rare-weight", type=float, default=d.rare_weight,
                   help="draw real cases of a rare tumour kind (no enhancing tumour, whole tumour < 30 mL, or a core "
                        "at least half non-enhancing; train.data.rare_kinds) this many times as often as the others "
                        "(default %(default)s: uniform)")
    p.add_argument("--fg-fraction", type=float, default=d.fg_fraction,
                   help="fraction of patches centred on tumour (default %(default)s)")
    p.add_argument("--phantom-strength", type=float, default=d.phantom_strength,
                   help="domain-randomisation strength of the phantoms (default %(default)s)")
    p.add_argument("--devices", type=int, default=d.devices, help="data-parallel devices (0: all; default 1)")
    p.add_argument("--cpu-devices", type=int, default=d.cpu_devices,
                   help="split the host CPU into N logical devices first (testing multi-device on CPU)")
    p.add_argument("--init", default=None,
                   help="start from the weights of this .keras U-Net (new optimizer and schedule; e.g. a "
                        "second phase with larger patches)")
    p.add_argument("--stop-at", type=int, default=None,
                   help="stop after this step (a multiple of --val-every), keeping the --steps learning-rate "
                        "schedule: a phase of a longer run that --resume continues")
    p.add_argument("--ema", type=float, default=d.ema,
                   help="keep an exponential moving average of the weights with this momentum (e.g. 0.998: "
                        "an average over ~500 steps); validation, exports and the card use the average "
                        "(default 0: off)")
    p.add_argument("--resume", action="store_true", help=f"continue from RUN_DIR/{CHECKPOINT}")
    return p


# ------------------------------------------------------------------------------- distribution


def configure_cpu_devices(n: int) -> None:
    """Split the host CPU into ``n`` logical devices; must run before the backend initialises."""
    if n <= 1:
        return
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    elif backend == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            raise RuntimeError("with JAX set XLA_FLAGS=--xla_force_host_platform_device_count=N before starting "
                               "Python (JAX reads it at import)")
    else:
        raise RuntimeError(f"--cpu-devices is not supported on the {backend} backend")


def distribution_scope(devices: int) -> tuple[contextlib.AbstractContextManager, int, str]:
    """Set up data parallelism over ``devices`` devices (0: all).

    Returns:
        ``(scope, n_devices, description)``: build and compile the model inside ``scope``.
    """
    backend = keras.backend.backend()
    if devices == 1:
        return contextlib.nullcontext(), 1, "single device"
    if backend == "tensorflow":
        import tensorflow as tf

        kind = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
        names = [d.name for d in tf.config.list_logical_devices(kind)]
        names = names if devices == 0 else names[:devices]
        if devices > len(names):
            raise RuntimeError(f"--devices {devices}: only {len(names)} {kind} devices visible "
                               "(use --cpu-devices N to split the CPU)")
        strategy = tf.distribute.MirroredStrategy(names)
        return strategy.scope(), strategy.num_replicas_in_sync, f"tf.distribute.MirroredStrategy({names})"
    if backend == "jax":
        all_devices = keras.distribution.list_devices()
        chosen = all_devices if devices == 0 else all_devices[:devices]
        if devices > len(all_devices):
            raise RuntimeError(f"--devices {devices}: only {len(all_devices)} JAX devices visible")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=chosen))
        return contextlib.nullcontext(), len(chosen), f"keras.distribution.DataParallel({chosen})"
    raise RuntimeError(f"multi-device training is not supported on the {backend} backend")


# ------------------------------------------------------------------------------------ model


def compile_model(model: keras.Model, lr: float, steps: int, loss=unet.dice_ce_loss, ema: float = 0.0
                  ) -> keras.Model:
    """Adam with polynomial (power 0.9) decay to ``lr * END_LR_FRACTION`` over ``steps``; ``loss`` (Dice + CE).

    ``ema`` > 0 makes the optimizer keep an exponential moving average of the weights with that momentum
    (Keras ``use_ema``; the training weights themselves are never overwritten, see :func:`averaged_weights`).
    """
    if not 0.0 <= ema < 1.0:
        raise SystemExit(f"error: --ema {ema} must be in [0, 1)")
    schedule = keras.optimizers.schedules.PolynomialDecay(lr, max(steps, 1), lr * END_LR_FRACTION, power=0.9)
    optimizer = keras.optimizers.Adam(schedule, clipnorm=CLIP_NORM, use_ema=ema > 0, ema_momentum=ema or 0.99)
    model.compile(optimizer=optimizer, loss=loss)
    return model


def averaged_weights(model: keras.Model) -> list[np.ndarray]:
    """``model.get_weights()`` with every trainable variable replaced by the optimizer's moving average.

    Without an EMA optimizer (or before its first step) these are the weights themselves.
    """
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # a loss-scale wrapper holds the real one
    average = {}
    if optimizer is not None and optimizer.use_ema and optimizer.built and int(optimizer.iterations) > 0:
        for v in model.trainable_variables:
            average[id(v)] = optimizer._model_variables_moving_average[optimizer._get_variable_index(v)]
    return [keras.ops.convert_to_numpy(average.get(id(v), v)) for v in model.weights]


def build_model(config: TrainConfig) -> keras.Model:
    """An untrained U-Net of ``config``'s architecture (class or region head)."""
    return unet.build_unet(base_filters=config.base, depth=config.depth, norm=config.norm, regions=config.regions)


def compile_for(model: keras.Model, config: TrainConfig) -> keras.Model:
    """Compile ``model`` for ``config`` (region loss for a region head)."""
    if config.loss != "dice" and not config.regions:
        raise ValueError(f"--loss {config.loss} needs the region head (--regions)")
    loss = REGION_LOSSES[config.loss] if config.regions else unet.dice_ce_loss
    return compile_model(model, config.lr, config.steps, loss, config.ema)


def inference_copy(model: keras.Model, config: TrainConfig) -> keras.Model:
    """Fresh uncompiled U-Net with ``model``'s weights, or their moving average with ``--ema`` (no optimizer)."""
    copy = build_model(config)
    copy.set_weights(averaged_weights(model))
    return copy


def validate(model: keras.Model, cases: Sequence) -> dict[str, float]:
    """Mean full-case Dice (WT/TC/ET) of ``model`` over labelled cases, via ``segment_case``."""
    scores = {r: [] for r in REGIONS}
    for case in cases:
        labels = segment_case(case, model).labels
        for r in REGIONS:
            scores[r].append(dice(region_mask(labels, r), region_mask(case.seg, r)))
    return {r: float(np.mean(v)) for r, v in scores.items()}


# ------------------------------------------------------------------------------ monitoring


class TrainingMonitor(RunMonitor):
    """Validation Dice on held-out phantoms; the best mean Dice (or lowest loss without validation) is exported."""

    def __init__(self, config: TrainConfig, state: dict, val_cases: Sequence, info: dict):
        super().__init__(state, Path(config.run_dir), Path(config.out), desc="train U-Net")
        self.config, self.val_cases, self.info = config, val_cases, info

    def export(self) -> keras.Model:
        return inference_copy(self.model, self.config)

    def validate(self, export: keras.Model) -> dict:
        if not self.val_cases:
            return {}
        val_dice = validate(export, self.val_cases)
        return {"val_dice": val_dice, "val_mean_dice": float(np.mean(list(val_dice.values())))}

    def is_best(self, entry: dict) -> bool:
        score = entry.get("val_mean_dice", -entry["loss"])
        if score < self.state.get("best_score", -math.inf):
            return False
        self.state["best_score"] = score
        return True

    def card(self, entry: dict, export: keras.Model) -> dict:
        return model_card(self.config, self.state, entry, self.info)

    def summary(self, entry: dict) -> str:
        dice_text = " ".join(f"{r} {v:.3f}" for r, v in entry.get("val_dice", {}).items())
        return f"step {entry['step']}: loss {entry['loss']:.4f} {dice_text} ({entry['median_step_s']} s/step)"


def model_card(config: TrainConfig, state: dict, entry: dict, info: dict) -> dict:
    """JSON model card of the exported model."""
    return {
        "model": "3D U-Net (core.segmentation.unet.build_unet)",
        "task": "BraTS glioma sub-region segmentation: classes 0 background, 1 NCR, 2 ED, 3 ET (internal labels)",
        "architecture": {"in_channels": 4, "channels": ["t1", "t1ce", "t2", "flair"],
                         "outputs": (f"sigmoid regions {list(unet.REGION_CHANNELS)}" if config.regions
                                     else "softmax classes [background, NCR, ED, ET]"),
                         "base_filters": config.base, "depth": config.depth, "norm": config.norm,
                         "dtype_policy": config.precision},
        "data": info.get("data_description"),
        "preprocessing": "core.preprocessing.preprocess.prepare_input (brain mask, per-channel z-score, crop to brain)",
        "step": entry["step"],
        "steps_planned": config.steps,
        "config": asdict(config),
        "validation": {
            "cases": info.get("validation_description"),
            "dice": entry.get("val_dice"),
            "loss": entry["loss"],
        },
        "history": state["history"],
        "wall_time_s": round(state["wall_time_s"], 1),
        "backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        **info,
        "command": state.get("command"),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------- main


def _load_initial_weights(model: keras.Model, path: Path) -> list[str]:
    """Copy the weights of the U-Net at ``path`` into ``model``, layer by layer (matched by name).

    The architecture (base, depth, norm) must match; a class head and a region head differ, so
    starting a region-based model from a class model keeps every layer but the head.

    Returns:
        Names of the layers that kept their fresh initialisation.
    """
    from core.segmentation.inference import load_model

    source = {layer.name: layer for layer in load_model(path, backend="tensorflow").layers}
    fresh = []
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        donor = source.get(layer.name)
        if donor is None or [w.shape for w in donor.get_weights()] != [w.shape for w in weights]:
            fresh.append(layer.name)
            continue
        layer.set_weights(donor.get_weights())
    heads = {"head", "region_head"}
    if set(fresh) - heads:
        raise SystemExit(f"error: --init {path}: its architecture differs from --base/--depth/--norm "
                         f"(layers {', '.join(sorted(set(fresh) - heads))})")
    return fresh


def parse_val_cases(value: int | str) -> int | list[str]:
    """``--val-cases``: a phantom count, or real case ids (comma-separated, or a file of ids, one per line)."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    return int(text) if text.isdigit() else read_case_ids(text)


def real_validation_cases(data: str | Sequence[str], ids: Sequence[str]) -> list:
    """Load the labelled validation cases named ``ids`` from the ``--data`` folders.

    Raises:
        SystemExit: an id is not a labelled case folder in any ``--data`` folder.
    """
    folders = folders_named(labelled_case_folders(data), ids, "--val-cases", "among the labelled cases of --data")
    return [load_case(folder) for folder in folders]


def _tf_dataset(samples, config: TrainConfig):
    import tensorflow as tf

    spec = (tf.TensorSpec((config.patch,) * 3 + (4,), tf.float32), tf.TensorSpec((config.patch,) * 3, tf.uint8))
    ds = tf.data.Dataset.from_generator(lambda: samples, output_signature=spec)
    return ds.batch(config.batch, drop_remainder=True).prefetch(1)


def _augmentation(config: TrainConfig, spec) -> AugmentConfig:
    if config.augment == "auto":
        return REAL_DATA_AUGMENTATION if spec.folders else AugmentConfig()
    return AUGMENTATIONS[config.augment]


def _describe_data(spec, strength: float) -> str:
    parts = []
    if spec.folders:
        parts.append(f"{len(spec.folders)} real labelled cases (ids in training_cases)")
    if not spec.folders or spec.phantom_fraction > 0:
        share = 1.0 if not spec.folders else spec.phantom_fraction
        parts.append(f"fresh domain-randomised phantoms (core.synthesis.phantom, strength {strength}, seeds < "
                     f"{VALIDATION_SEED_START}), {share:.0%} of the cases")
    return "; ".join(parts)


def train(config: TrainConfig, resume: bool = False, command: str | None = None) -> dict:
    """Run training; returns the final state (history, best step, ...)."""
    configure_cpu_devices(config.cpu_devices)
    val_spec = parse_val_cases(config.val_cases)
    val_ids = [] if isinstance(val_spec, int) else val_spec
    data_spec(config.data, config.seed, config.phantom_strength, exclude=val_ids,
              phantom_fraction=config.phantom_fraction)  # fail early on a bad --data
    if config.val_every < 1 or config.steps < 1 or config.batch < 1:
        raise SystemExit("error: --steps, --batch and --val-every must be >= 1")
    if config.loss != "dice" and not config.regions:
        raise SystemExit(f"error: --loss {config.loss} needs the region head: add --regions")
    if config.reproducible and (config.workers > 1 or config.patch_workers > 0):
        raise SystemExit("error: --reproducible needs one case producer: --workers 0 or 1 and --patch-workers 0")
    if config.steps % config.val_every:
        rounded = math.ceil(config.steps / config.val_every) * config.val_every
        print(f"warning: --steps {config.steps} is not a multiple of --val-every {config.val_every}: "
              f"training {rounded} steps", file=sys.stderr)
    if config.patch % 2 ** (config.depth - 1):
        raise SystemExit(f"error: --patch {config.patch} must be a multiple of 2**(depth-1) = "
                         f"{2 ** (config.depth - 1)}")
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_global_policy(config.precision)
    scope, n_devices, dist_text = distribution_scope(config.devices)
    if config.batch % n_devices:
        raise SystemExit(f"error: --batch {config.batch} must be a multiple of the {n_devices} devices")

    state = new_state(command)
    fresh: list[str] = []
    with scope:
        if resume:
            model, state = resume_run(run_dir, command)
        else:
            model = build_model(config)
            if config.init:
                fresh = _load_initial_weights(model, Path(config.init))
            model = compile_for(model, config)
    start_step, epochs, initial_epoch = epoch_plan(model, config.steps, config.val_every)
    if config.stop_at is not None:
        epochs = min(epochs, math.ceil(config.stop_at / config.val_every))
    if initial_epoch >= epochs:
        print(f"already trained {start_step} steps (--steps {config.steps}, --stop-at {config.stop_at}); nothing to do")
        return state

    # Phantom seeds continue where the previous run stopped (upper bound of what it had made).
    spec = data_spec(config.data, int(state.get("next_case_seed", config.seed)), config.phantom_strength,
                     exclude=val_ids, phantom_fraction=config.phantom_fraction, rare_weight=config.rare_weight)
    if val_ids:
        val_cases = real_validation_cases(config.data, val_ids)
        val_text = f"{len(val_ids)} real cases (model selection only, never trained on): {', '.join(val_ids)}"
    else:
        val_cases = held_out_phantoms(val_spec, config.phantom_strength) if val_spec else []
        val_text = (f"{val_spec} held-out phantoms, seeds {VALIDATION_SEED_START}.."
                    f"{VALIDATION_SEED_START + val_spec - 1}" if val_spec else "none")
    info = {"devices": n_devices, "distribution": dist_text, "params": int(model.count_params()),
            "data_description": _describe_data(spec, config.phantom_strength),
            "training_cases": sorted(case_id(f) for f in spec.folders),
            "phantom_fraction": spec.phantom_fraction if spec.folders else 1.0,
            "validation_description": val_text}
    if spec.weights:
        info["case_weights"] = {case_id(f): w for f, w in zip(spec.folders, spec.weights, strict=True)}
    if config.init:
        info["init"] = {"weights": config.init, "fresh_layers": fresh}
    monitor = TrainingMonitor(config, state, val_cases, info)
    monitor.keep_exports = config.keep_exports
    augment = _augmentation(config, spec)
    fit_on_pool(model, monitor, spec, workers=config.workers, pool_size=config.pool,
                uses_per_case=config.patches_per_case,
                stream=functools.partial(patch_stream, size=config.patch, seed=config.seed + start_step,
                                         fg_fraction=config.fg_fraction, aug=augment),
                patch_workers=config.patch_workers,
                sample_shapes=((config.patch,) * 3 + (4,), (config.patch,) * 3),
                batches=lambda samples: (_tf_dataset(samples, config) if keras.backend.backend() == "tensorflow"
                                         else batches(samples, config.batch)),
                buffer=2 * config.batch, steps_per_epoch=config.val_every, epochs=epochs,
                initial_epoch=initial_epoch, reproducible=config.reproducible)
    return state


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    exit_on_sigterm()  # SIGTERM unwinds: the case-producer processes are stopped, not orphaned
    args.data = args.data or ["phantom"]
    config = config_from_args(TrainConfig, args)
    command = command_line("train.unet", argv)
    state = train(config, resume=args.resume, command=command)
    if state.get("history"):
        last = state["history"][-1]
        print(f"done: step {last['step']}, best step {state.get('best_step')}, model {config.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
