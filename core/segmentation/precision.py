"""The compute precision a model runs in on this machine.

The shipped U-Net is saved with the ``mixed_bfloat16`` Keras policy: bfloat16 convolutions, float32 weights and
outputs. That halves the forward time on a CPU with native bfloat16 (AVX512_BF16 or AMX) or on a GPU, but where
the CPU lacks it TensorFlow emulates bfloat16 in Eigen, which is several times slower than float32 (measured on a
2-core AVX2 AMD EPYC without AVX-512: a 128^3 training step 173 s in bfloat16 vs 14 s in float32; see the README).
:func:`for_this_machine` therefore rebuilds such a model in float32 there: the weights are float32 either way, so
nothing is lost but the speed-up that machine could not have (labels agree to rounding: float32 is the more precise).

``BRATS_INFERENCE_PRECISION`` overrides the choice: ``auto`` (default), ``float32`` or ``mixed_bfloat16``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PRECISION_ENV = "BRATS_INFERENCE_PRECISION"
PRECISIONS = ("auto", "float32", "mixed_bfloat16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute bfloat16 natively


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU feature flags of the first processor in ``cpuinfo`` (``None`` if unreadable: not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def has_accelerator() -> bool:
    """Whether the Keras backend sees a GPU/TPU (there bfloat16 is native)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if keras.backend.backend() == "jax":
        import jax

        return any(d.platform != "cpu" for d in jax.devices())
    return False


def native_bfloat16(flags: set[str] | None = None) -> bool:
    """Whether bfloat16 runs natively here: an accelerator, or a CPU with AVX512_BF16 / AMX.

    Args:
        flags: CPU flags (default: read from ``/proc/cpuinfo``); unknown flags (not Linux) count as native, so the
            saved policy is kept where we cannot tell.
    """
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return True
    return any(f in flags for f in NATIVE_BF16_FLAGS) or has_accelerator()


def target_policy(saved: str, requested: str | None = None, flags: set[str] | None = None) -> str:
    """The policy to run a model saved with ``saved`` in.

    Args:
        saved: the model's saved global policy name (e.g. ``"mixed_bfloat16"``).
        requested: ``auto`` / ``float32`` / ``mixed_bfloat16`` (default: ``$BRATS_INFERENCE_PRECISION`` or ``auto``).
        flags: CPU flags for the ``auto`` decision (default: this machine's).

    Raises:
        ValueError: an unknown ``requested`` value (the message names the variable and the choices).
    """
    requested = requested or os.environ.get(PRECISION_ENV, "auto")
    if requested not in PRECISIONS:
        raise ValueError(f"{PRECISION_ENV}={requested!r}: use one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    if "bfloat16" in saved and not native_bfloat16(flags):
        return "float32"
    return saved


def _replace_policies(config: Any, policy: str) -> Any:
    """``config`` with every Keras ``DTypePolicy`` entry set to ``policy`` (input layers keep their dtype)."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and isinstance(config.get("config"), dict):
            return {**config, "config": {**config["config"], "name": policy}}
        return {k: _replace_policies(v, policy) for k, v in config.items()}
    if isinstance(config, list):
        return [_replace_policies(v, policy) for v in config]
    return config


def saved_policy(model: Any) -> str:
    """The name of the compute policy most of ``model``'s layers use (``"float32"`` when they have none)."""
    names = [layer.dtype_policy.name for layer in model.layers if layer.weights]
    return max(set(names), key=names.count) if names else "float32"


def with_policy(model: Any, policy: str) -> Any:
    """A copy of ``model`` whose layers compute in ``policy``, with the same weights (``model`` itself if it does)."""
    if saved_policy(model) == policy:
        return model
    copy = type(model).from_config(_replace_policies(model.get_config(), policy))
    copy.set_weights(model.get_weights())
    return copy


def for_this_machine(model: Any, requested: str | None = None, flags: set[str] | None = None) -> Any:
    """``model`` in the precision that is fastest here (:func:`target_policy`); same weights."""
    return with_policy(model, target_policy(saved_policy(model), requested, flags))
