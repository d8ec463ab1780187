"""Where the shipped weights live and their JSON model cards (no TensorFlow import).

The app reads paths and cards at start-up without loading Keras; the model loaders in
``core.segmentation.inference``, ``core.synthesis.generate`` and ``core.synthesis.insert`` use the same paths.
``BRATS_UNET_WEIGHTS``, ``BRATS_CVAE_WEIGHTS`` and ``BRATS_INSERTION_WEIGHTS`` override the shipped files (tests use
tiny models this way).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
WEIGHT_FILES: dict[str, str] = {"unet": "unet.keras", "cvae": "cvae.keras", "insertion": "insertion.keras"}
WEIGHTS_ENV: dict[str, str] = {"unet": "BRATS_UNET_WEIGHTS", "cvae": "BRATS_CVAE_WEIGHTS",
                               "insertion": "BRATS_INSERTION_WEIGHTS"}


class ModelLoadError(ValueError):
    """A model file is missing, corrupt or not the expected model; the message names the file."""


def shipped_path(kind: str) -> Path:
    """Path of the shipped weights of ``"unet"``, ``"cvae"`` or ``"insertion"`` in ``weights/``."""
    if kind not in WEIGHT_FILES:
        raise ValueError(f"unknown model kind {kind!r}; use one of {sorted(WEIGHT_FILES)}")
    return WEIGHTS_DIR / WEIGHT_FILES[kind]


def weights_path(kind: str) -> tuple[Path, bool]:
    """Weights file of a model kind (:data:`WEIGHT_FILES`): ``(path, from_env)``, the env override if set."""
    shipped = shipped_path(kind)
    override = os.environ.get(WEIGHTS_ENV[kind], "").strip()
    return (Path(override), True) if override else (shipped, False)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex): what a model card, a benchmark or a reuse check names a weights file by."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_model_card(path: str | Path) -> dict | None:
    """The JSON model card beside a weights file (``unet.keras`` -> ``unet.json``), or ``None``.

    Raises:
        ModelLoadError: the card exists but is not valid JSON.
    """
    card = Path(path).with_suffix(".json")
    if not card.is_file():
        return None
    try:
        return json.loads(card.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"model card {card} is not valid JSON ({exc}); delete it or re-run training.") from exc


def load_keras_file(path: str | Path, what: str, train_command: str):
    """Load a ``.keras`` file with ``safe_mode=True`` (no code execution), uncompiled.

    Args:
        path: the ``.keras`` file.
        what: the model's name in messages (e.g. ``"U-Net"``).
        train_command: the command that writes such a file, named in the messages.

    Raises:
        ModelLoadError: the file is missing, not a ``.keras`` archive, or corrupt/unsafe; the message
            names the file and the fix.
    """
    import zipfile

    import keras

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{what} weights not found: {path}. Train them with `{train_command}` "
                             "or pass the path of a .keras file (--weights).")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path} is not a Keras model file: expected a .keras archive "
                             f"(written by model.save('name.keras'), e.g. by `{train_command}`).")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # corrupt zip members, unknown layers, unsafe lambdas, ...
        raise ModelLoadError(f"cannot load the {what} from {path}: {type(exc).__name__}: {exc}. "
                             f"Re-export it with `{train_command}` (Keras 3 .keras format).") from exc
