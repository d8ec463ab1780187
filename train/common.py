"""Plumbing shared by the training CLIs: atomic saves, data source, resumable run state, command line,
and the fit loop with its monitor (progress, validation, checkpoints, export + model card).

A run folder holds ``checkpoint.keras`` (model + optimizer) and ``state.json`` (history, wall time,
next phantom seed, command); ``--resume`` continues from both.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import core  # noqa: F401  (sets the TensorFlow options before Keras loads)
from train.data import (
    CasePool,
    CaseProducers,
    ParallelPatches,
    Prefetcher,
    ProducerSpec,
    case_id,
    find_labelled_cases,
    rare_case_weights,
)

import keras  # noqa: E402  (after core)

CHECKPOINT = "checkpoint.keras"
STATE = "state.json"


def save_atomic(model: keras.Model, path: Path) -> None:
    """``model.save`` to a temporary file then rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


DEFAULT_MIX_PHANTOM_FRACTION = 0.25  # share of phantoms when --data names both folders and 'phantom'


def labelled_case_folders(data: str | Sequence[str], exclude: Sequence[str] = ()) -> list[Path]:
    """Labelled case folders of the folders in ``data`` (``'phantom'`` entries skipped), minus ``exclude``.

    Args:
        data: one ``--data`` value or several; each a folder of case folders or one case folder.
        exclude: case names (folder names) left out, e.g. the validation cases.

    Raises:
        SystemExit: a folder does not exist or holds no labelled case (the message says what to pass).
    """
    entries = [data] if isinstance(data, str) else list(data)
    excluded = set(exclude)
    folders: list[Path] = []
    for entry in entries:
        if entry == "phantom":
            continue
        folder = Path(entry)
        if not folder.is_dir():
            raise SystemExit(f"error: --data {folder}: not a folder (use 'phantom' or a folder of BraTS case folders)")
        found = find_labelled_cases(folder)
        if not found:
            raise SystemExit(f"error: --data {folder}: no case folder with t1/t1ce/t2/flair and a seg file (nor a "
                             f"packed case, train.packed) found")
        folders += [f for f in found if case_id(f) not in excluded]
    return folders


def read_case_ids(value: str) -> list[str]:
    """Case ids from comma-separated text or from a file with one id per line (``#`` starts a comment).

    Raises:
        SystemExit: no id given.
    """
    path = Path(value)
    try:
        is_file = path.is_file()
    except OSError:  # a long comma-separated list is no valid file name (ENAMETOOLONG)
        is_file = False
    if is_file:
        ids = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    else:
        ids = [part.strip() for part in str(value).split(",")]
    ids = [i for i in ids if i]
    if not ids:
        raise SystemExit(f"error: {value}: no case id given")
    return ids


def folders_named(folders: Sequence[Path], ids: Sequence[str], option: str, where: str) -> list[Path]:
    """The folders named ``ids`` (in that order) among ``folders``.

    Raises:
        SystemExit: an id names none of them (the message names ``option`` and ``where`` was searched).
    """
    by_name = {case_id(folder): folder for folder in folders}
    missing = [i for i in ids if i not in by_name]
    if missing:
        raise SystemExit(f"error: {option}: {', '.join(missing)} not found {where}")
    return [by_name[i] for i in ids]


def data_spec(data: str | Sequence[str], first_seed: int, phantom_strength: float, *, exclude: Sequence[str] = (),
              phantom_fraction: float | None = None, rare_weight: float = 1.0) -> ProducerSpec:
    """Training-data source of ``--data``: ``"phantom"``, folders of labelled BraTS case folders, or both.

    Args:
        data: one ``--data`` value or several.
        first_seed: first phantom seed.
        phantom_strength: domain randomisation of the phantoms.
        exclude: case names never trained on (the validation cases).
        phantom_fraction: share of phantoms when folders and ``'phantom'`` are mixed (default
            :data:`DEFAULT_MIX_PHANTOM_FRACTION`); without ``'phantom'`` in ``data`` it must be unset or 0.
        rare_weight: real cases of a rare tumour kind (``train.data.rare_kinds``: no ET, small, non-enhancing core)
            are drawn this many times as often as the others (1: uniform).

    Raises:
        SystemExit: a bad folder, no training case left, or a phantom fraction that contradicts ``data``.
    """
    entries = [data] if isinstance(data, str) else list(data)
    if not entries:
        raise SystemExit("error: no --data given (use 'phantom' or a folder of BraTS case folders)")
    folders = labelled_case_folders(entries, exclude)
    with_phantoms = "phantom" in entries
    if not with_phantoms and phantom_fraction:
        raise SystemExit("error: --phantom-fraction needs '--data phantom' among the --data sources")
    if any(e != "phantom" for e in entries) and not folders:
        raise SystemExit("error: --data: every labelled case is excluded (--val-cases); nothing left to train on")
    fraction = 0.0
    if with_phantoms:
        fraction = DEFAULT_MIX_PHANTOM_FRACTION if phantom_fraction is None else phantom_fraction
    if rare_weight <= 0:
        raise SystemExit(f"error: --rare-weight {rare_weight} must be > 0")
    names = tuple(str(f) for f in folders)
    return ProducerSpec(names, first_seed, phantom_strength, fraction, rare_case_weights(names, rare_weight))


def new_state(command: str | None) -> dict[str, Any]:
    """Run state of a fresh run."""
    return {"history": [], "step": 0, "wall_time_s": 0.0, "command": command}


def resume_run(run_dir: Path, command: str | None) -> tuple[keras.Model, dict[str, Any]]:
    """Model (with optimizer) and run state saved in ``run_dir``.

    Raises:
        SystemExit: no checkpoint in ``run_dir``.
    """
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise SystemExit(f"error: --resume: no checkpoint {checkpoint}; start without --resume")
    model = keras.saving.load_model(checkpoint, safe_mode=True)
    state = json.loads((run_dir / STATE).read_text()) if (run_dir / STATE).is_file() else new_state(command)
    state["command"] = command
    return model, state


def config_from_args(config_class: type, args: Any) -> Any:
    """Dataclass ``config_class`` filled from the parsed arguments that name its fields."""
    fields = config_class.__dataclass_fields__
    return config_class(**{k: v for k, v in vars(args).items() if k in fields})


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that started this run, for the model card."""
    return shlex.join([Path(sys.executable).name, "-m", module, *(sys.argv[1:] if argv is None else argv)])


# --------------------------------------------------------------------------- the fit loop both trainers share


def optimizer_step(model: keras.Model) -> int:
    """Training steps taken so far: the (possibly resumed) optimizer's iteration count."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def epoch_plan(model: keras.Model, steps: int, every: int) -> tuple[int, int, int]:
    """``(start step, epochs, epochs done)`` of a run of ``steps`` steps validated every ``every`` steps.

    The start step is the (possibly resumed) optimizer's iteration count; ``steps`` is rounded up to a
    multiple of ``every``.
    """
    start_step = optimizer_step(model)
    return start_step, math.ceil(steps / every), start_step // every


class RunMonitor(keras.callbacks.Callback):
    """Bookkeeping of a training run, shared by the U-Net and CVAE trainers.

    Every epoch (``steps_per_epoch`` steps) it exports an inference copy, validates it, appends a history
    entry, saves the resumable checkpoint and the run state, and exports the model + its JSON card when
    :meth:`is_best` says so. A tqdm bar shows progress and the logged ``shown`` values.

    Subclasses implement :meth:`export`, :meth:`validate`, :meth:`card` and may override :meth:`is_best`.
    """

    shown: tuple[str, ...] = ("loss",)

    def __init__(self, state: dict, run_dir: Path, out: Path, *, desc: str):
        super().__init__()
        self.state, self.run_dir, self.out = state, Path(run_dir), Path(out)
        self.desc = desc
        self.case_counter: Callable[[], int] | None = None  # () -> first phantom seed not yet used
        self.keep_exports = False  # also keep every epoch's export as RUN_DIR/export_stepNNNNNN.keras
        self.bar: Any = None
        self._start = time.time()
        self._wall_before = float(state.get("wall_time_s", 0.0))
        self._step_start = time.time()
        self._step_times: list[float] = []

    # ---- subclass hooks
    def export(self) -> keras.Model:
        """Inference copy of ``self.model`` (no optimizer state)."""
        raise NotImplementedError

    def validate(self, export: keras.Model) -> dict[str, Any]:
        """Validation values merged into the history entry."""
        return {}

    def card(self, entry: dict, export: keras.Model) -> dict:
        """JSON model card written beside the exported model."""
        raise NotImplementedError

    def is_best(self, entry: dict) -> bool:
        """Whether this epoch's export replaces the exported model (default: always)."""
        return True

    def summary(self, entry: dict) -> str:
        """One line printed under the bar after each epoch."""
        values = " ".join(f"{k} {entry[k]:.4f}" for k in self.shown if k in entry)
        return f"step {entry['step']}: {values} ({entry.get('median_step_s')} s/step)"

    # ---- Keras callback
    def step(self) -> int:
        return optimizer_step(self.model)

    def wall_time(self) -> float:
        return self._wall_before + time.time() - self._start

    def on_train_begin(self, logs=None):
        from tqdm import tqdm

        steps = self.params.get("steps")  # per epoch, as given to fit
        total = self.params["epochs"] * steps if steps else None
        self.bar = tqdm(total=total, initial=self.step(), desc=self.desc, unit="step", dynamic_ncols=True,
                        file=sys.stderr)

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()

    def on_train_batch_begin(self, batch, logs=None):
        self._step_start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        self._step_times.append(time.time() - self._step_start)
        logs = logs or {}
        self.bar.update(1)
        self.bar.set_postfix({k: f"{float(logs[k]):.4f}" for k in self.shown if k in logs})

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        t0 = time.time()
        step = self.step()
        entry: dict[str, Any] = {"step": step, **{k: float(logs[k]) for k in self.shown if k in logs},
                                 "median_step_s": round(float(np.median(self._step_times)), 3)
                                 if self._step_times else None,
                                 "wall_time_s": round(self.wall_time(), 1)}
        self._step_times = []
        export = self.export()
        entry.update(self.validate(export))
        entry["val_seconds"] = round(time.time() - t0, 1)
        self.state["history"].append(entry)
        self.state["step"] = step
        self.state["wall_time_s"] = self.wall_time()
        if self.case_counter is not None:
            self.state["next_case_seed"] = int(self.case_counter())
        save_atomic(self.model, self.run_dir / CHECKPOINT)
        if self.keep_exports:
            save_atomic(export, self.run_dir / f"export_step{step:06d}.keras")
        if self.is_best(entry):
            self.state["best_step"] = step
            save_atomic(export, self.out)
            write_json(self.out.with_suffix(".json"), self.card(entry, export))
        write_json(self.run_dir / STATE, self.state)
        self.bar.write(self.summary(entry) + f" (best step {self.state.get('best_step')})")


def fit_on_pool(model: keras.Model, monitor: RunMonitor, spec: ProducerSpec, *, workers: int, pool_size: int,
                uses_per_case: int, stream: Callable[[CasePool], Iterator], batches: Callable[[Prefetcher], Any],
                buffer: int, steps_per_epoch: int, epochs: int, initial_epoch: int, patch_workers: int = 0,
                sample_shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None, reproducible: bool = False
                ) -> None:
    """``model.fit`` on cases made by background producers, drawn from a rotating pool.

    Args:
        model: compiled model.
        monitor: the run's callback (progress, validation, checkpoints).
        spec: where the cases come from (phantom seeds or a folder).
        workers: case-producer processes (0: in-process).
        pool_size: cases kept in the pool.
        uses_per_case: samples drawn from a case before it is replaced.
        stream: the pool -> an endless iterator of training samples.
        batches: the prefetched samples -> what ``fit`` takes (a tf.data pipeline or a batch generator).
        buffer: samples prefetched by a background thread.
        steps_per_epoch: steps between validations.
        epochs: total epochs (the run stops after ``epochs * steps_per_epoch`` steps).
        initial_epoch: epochs already done (resume).
        patch_workers: > 0: that many processes, each with its own pool, sample in parallel
            (:class:`train.data.ParallelPatches`; ``stream`` must then be picklable and take ``worker=``).
            Their phantom seeds are not recorded for a resume.
        sample_shapes: ``(image, labels)`` shapes of every sample: parallel samplers then hand patches over
            through shared memory instead of pickling them.
        reproducible: the pool waits for each due case (:class:`train.data.CasePool` ``wait_for_cases``), so
            with one producer the patches depend on the seed alone, not on the machine's load.
    """
    fit_args = dict(steps_per_epoch=steps_per_epoch, epochs=epochs, initial_epoch=initial_epoch, callbacks=[monitor],
                    verbose=0, shuffle=False)
    if patch_workers > 0:
        with ParallelPatches(spec, patch_workers, pool_size, uses_per_case, stream, shapes=sample_shapes) as samples:
            start = time.monotonic()
            try:
                model.fit(batches(samples), **fit_args)
            finally:
                print(f"parallel patches: {samples.received} received, trainer waited {samples.wait_s:.0f} s of "
                      f"{time.monotonic() - start:.0f} s", file=sys.stderr)
        return
    first_seed = spec.seed
    with CaseProducers(spec, workers=workers) as producers:
        pool = CasePool(producers, pool_size=pool_size, patches_per_case=uses_per_case, wait_for_cases=reproducible)
        samples = Prefetcher(stream(pool), buffer=buffer)
        monitor.case_counter = lambda: first_seed + pool.received + 2 * max(workers, 1)
        try:
            model.fit(batches(samples), **fit_args)
        finally:
            samples.close()
