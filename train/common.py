"""Plumbing shared by the training CLIs: atomic saves, data source, resumable run state, command line.

A run folder holds ``checkpoint.keras`` (model + optimizer) and ``state.json`` (history, wall time,
next phantom seed, command); ``--resume`` continues from both.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from train.data import ProducerSpec, find_labelled_cases

CHECKPOINT = "checkpoint.keras"
STATE = "state.json"

if TYPE_CHECKING:  # keras is imported by the callers, after core set the TensorFlow options
    import keras


def save_atomic(model: "keras.Model", path: Path) -> None:
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


def data_spec(data: str, first_seed: int, phantom_strength: float) -> ProducerSpec:
    """Training-data source of ``--data``: ``"phantom"`` or a folder of labelled BraTS case folders.

    Raises:
        SystemExit: the folder does not exist or holds no labelled case (the message says what to pass).
    """
    if data == "phantom":
        return ProducerSpec(None, first_seed, phantom_strength)
    folder = Path(data)
    if not folder.is_dir():
        raise SystemExit(f"error: --data {folder}: not a folder (use 'phantom' or a folder of BraTS case folders)")
    if not find_labelled_cases(folder):
        raise SystemExit(f"error: --data {folder}: no case folder with t1/t1ce/t2/flair and a seg file found")
    return ProducerSpec(str(folder), first_seed)


def new_state(command: str | None) -> dict[str, Any]:
    """Run state of a fresh run."""
    return {"history": [], "step": 0, "wall_time_s": 0.0, "command": command}


def resume_run(run_dir: Path, command: str | None) -> tuple["keras.Model", dict[str, Any]]:
    """Model (with optimizer) and run state saved in ``run_dir``.

    Raises:
        SystemExit: no checkpoint in ``run_dir``.
    """
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise SystemExit(f"error: --resume: no checkpoint {checkpoint}; start without --resume")
    import keras

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
