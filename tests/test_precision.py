"""core.segmentation.precision: a bfloat16 model runs in float32 where the CPU only emulates bfloat16."""

from __future__ import annotations

import numpy as np
import pytest

from core.segmentation import precision, unet
from core.segmentation.inference import ModelLoadError, load_model

AVX2_ONLY = {"fpu", "sse2", "avx", "avx2", "fma"}
SAPPHIRE_RAPIDS = AVX2_ONLY | {"avx512f", "avx512_bf16", "amx_bf16"}


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\nflags : other\n")
    assert precision.cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert precision.cpu_flags(tmp_path / "missing") is None


def test_target_policy_follows_the_cpu_and_the_override(monkeypatch):
    monkeypatch.setattr(precision, "has_accelerator", lambda: False)
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    assert precision.target_policy("mixed_bfloat16", flags=AVX2_ONLY) == "float32"
    assert precision.target_policy("mixed_bfloat16", flags=SAPPHIRE_RAPIDS) == "mixed_bfloat16"
    assert precision.target_policy("float32", flags=AVX2_ONLY) == "float32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: None)  # not Linux: keep what was saved
    assert precision.target_policy("mixed_bfloat16") == "mixed_bfloat16"
    monkeypatch.setenv(precision.PRECISION_ENV, "mixed_bfloat16")
    assert precision.target_policy("mixed_bfloat16", flags=AVX2_ONLY) == "mixed_bfloat16"
    monkeypatch.setenv(precision.PRECISION_ENV, "fp8")
    with pytest.raises(ValueError, match="BRATS_INFERENCE_PRECISION='fp8'"):
        precision.target_policy("float32")


def test_a_bfloat16_unet_loads_in_float32_on_an_avx2_cpu_with_the_same_weights(tmp_path, monkeypatch):
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = unet.build_unet(base_filters=4, depth=2, regions=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path = tmp_path / "bf16.keras"
    model.save(path)
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2_ONLY)
    monkeypatch.setattr(precision, "has_accelerator", lambda: False)
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    loaded = load_model(path)
    assert precision.saved_policy(model) == "mixed_bfloat16" and precision.saved_policy(loaded) == "float32"
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 16, 4)).astype(np.float32)
    fp32, bf16 = np.asarray(loaded(x)), np.asarray(model(x), dtype=np.float32)
    assert fp32.dtype == np.float32 and np.abs(fp32 - bf16).max() < 0.05  # bfloat16 keeps ~3 significant digits
    monkeypatch.setenv(precision.PRECISION_ENV, "mixed_bfloat16")
    assert precision.saved_policy(load_model(path)) == "mixed_bfloat16"
    monkeypatch.setenv(precision.PRECISION_ENV, "half")
    with pytest.raises(ModelLoadError, match="BRATS_INFERENCE_PRECISION"):
        load_model(path)
