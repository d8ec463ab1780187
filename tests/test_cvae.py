"""Conditional VAE model (core.synthesis.cvae): shapes, loss, training, sampling, serialisation, grid mapping."""

from __future__ import annotations

import numpy as np
import pytest

from core.io.labels import NUM_CLASSES
from core.synthesis import cvae

import keras
from keras import ops

GRID = cvae.CvaeGrid((32, 32, 16), 2)  # model grid 16x16x8


def tiny(**kwargs) -> cvae.ConditionalVAE:
    return cvae.build_cvae(base_filters=4, latent_channels=2, depth=2, grid=GRID, **kwargs)


def tiny_batch(batch: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Structured images (a bright blob where the 'tumour' is) and their conditions."""
    rng = np.random.default_rng(seed)
    shape = GRID.model_shape
    images, conds = [], []
    for _ in range(batch):
        labels = np.zeros(shape, np.uint8)
        c = rng.integers(4, 12, size=3)
        labels[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, max(c[2] - 2, 0):c[2] + 2] = 2
        brain = np.zeros(shape, bool)
        brain[1:-1, 1:-1, 1:-1] = True
        cond = cvae.make_condition(labels, brain)
        image = np.stack([np.where(labels > 0, 2.0, -0.5) + 0.1 * rng.normal(size=shape) for _ in range(4)])
        image = (image * brain).astype(np.float32)
        images.append(np.moveaxis(image, 0, -1))
        conds.append(np.moveaxis(cond, 0, -1))
    return np.stack(images), np.stack(conds)


def test_encoder_decoder_shapes():
    model = tiny()
    x, c = tiny_batch()
    z_mean, z_log_var = model.encode(x, c)
    assert tuple(z_mean.shape) == (2, 4, 4, 2, 2) == (2, *model.latent_shape)
    assert tuple(z_log_var.shape) == tuple(z_mean.shape)
    recon = model.decode(z_mean, c)
    assert tuple(recon.shape) == x.shape
    out, mean, _ = model((x, c))
    assert tuple(out.shape) == x.shape and tuple(mean.shape) == tuple(z_mean.shape)


def test_kl_is_non_negative_and_zero_at_the_prior():
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(2, 3, 3, 3, 2)).astype(np.float32)
    log_var = rng.normal(size=mean.shape).astype(np.float32)
    assert float(cvae.kl_divergence(mean, log_var)) > 0
    zeros = np.zeros_like(mean)
    assert float(cvae.kl_divergence(zeros, zeros)) == pytest.approx(0.0, abs=1e-6)


def test_kl_weight_warms_up():
    model = tiny(beta=0.5, kl_warmup_steps=10)
    assert float(model.kl_weight()) == 0.0
    model.train_steps.assign(5.0)
    assert float(model.kl_weight()) == pytest.approx(0.25)
    model.train_steps.assign(50.0)
    assert float(model.kl_weight()) == pytest.approx(0.5)


def test_training_lowers_the_loss_and_counts_steps():
    keras.utils.set_random_seed(0)
    model = tiny(kl_warmup_steps=5)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x, c = tiny_batch()
    before = model.evaluate((x, c), batch_size=2, verbose=0, return_dict=True)
    steps = 25
    history = model.fit((np.tile(x, (steps, 1, 1, 1, 1)), np.tile(c, (steps, 1, 1, 1, 1))), batch_size=2,
                        epochs=1, shuffle=False, verbose=0).history
    after = model.evaluate((x, c), batch_size=2, verbose=0, return_dict=True)
    assert after["rec"] < 0.7 * before["rec"]
    assert history["kl"][0] >= 0
    assert float(model.train_steps) == steps  # evaluate does not advance the KL warm-up


def test_sampling_is_deterministic_per_seed_and_temperature_scaled():
    model = tiny()
    a = ops.convert_to_numpy(model.sample_latent(2, seed=7))
    b = ops.convert_to_numpy(model.sample_latent(2, seed=7))
    c = ops.convert_to_numpy(model.sample_latent(2, seed=8))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    half = ops.convert_to_numpy(model.sample_latent(2, seed=7, temperature=0.5))
    np.testing.assert_allclose(half, 0.5 * a, rtol=1e-5, atol=1e-6)
    assert not np.any(ops.convert_to_numpy(model.sample_latent(1, seed=7, temperature=0.0)))


def test_save_and_load_with_safe_mode(tmp_path):
    model = tiny(beta=0.3, kl_warmup_steps=7)
    path = tmp_path / "cvae.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    assert isinstance(loaded, cvae.ConditionalVAE)
    assert loaded.grid == GRID and loaded.beta == 0.3 and loaded.kl_warmup_steps == 7
    x, c = tiny_batch(1)
    z = model.sample_latent(1, seed=3)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded.decode(z, c)), ops.convert_to_numpy(model.decode(z, c)),
                               rtol=1e-5, atol=1e-5)


def test_slice_conv_equals_conv3d():
    x = np.random.default_rng(2).normal(size=(2, 6, 5, 4, 3)).astype(np.float32)
    fast = cvae.SliceConv3D(5)
    ref = keras.layers.Conv3D(5, 3, padding="same")
    fast.build(x.shape)
    ref.build(x.shape)
    ref.kernel.assign(fast.kernel)
    bias = np.arange(5, dtype=np.float32)
    fast.bias.assign(bias)
    ref.bias.assign(bias)
    np.testing.assert_allclose(ops.convert_to_numpy(fast(x)), ops.convert_to_numpy(ref(x)), atol=1e-5)


def test_space_to_depth_packs_each_block_into_one_voxel():
    x = np.random.default_rng(3).normal(size=(2, 4, 6, 2, 3)).astype(np.float32)
    packed = ops.convert_to_numpy(cvae.SpaceToDepth3D()(x))
    assert packed.shape == (2, 2, 3, 1, 24)
    for i, j in ((0, 0), (1, 2)):
        block = x[1, 2 * i:2 * i + 2, 2 * j:2 * j + 2, 0:2]  # (2, 2, 2, C), channels last
        np.testing.assert_array_equal(packed[1, i, j, 0], block.reshape(8, 3).ravel())


def test_grid_box_is_centred_on_the_brain_and_inverts():
    grid = cvae.CvaeGrid((16, 16, 8), 2)
    brain = np.zeros((40, 30, 12), bool)
    brain[10:20, 3:11, 0:6] = True  # centre (15, 7, 3): box sticks out at y and z
    box = grid.box_for(brain)
    assert box.out_shape == (16, 16, 8)
    assert box.start == (7, 0, 0) and box.pad_before == (0, 1, 1)
    volume = np.zeros((1, 40, 30, 12), np.float32)
    volume[0][brain] = 3.0
    small = grid.to_model(volume, box)
    assert small.shape == (1, 8, 8, 4)
    assert small.sum() * 8 == pytest.approx(volume.sum())  # average pooling keeps the mass
    back = grid.from_model(small, box)
    assert back.shape == volume.shape
    assert np.all(back[:, :7] == 0) and np.all(back[:, 23:] == 0)  # outside the box: exactly 0
    constant = grid.from_model(np.full((1, 8, 8, 4), 2.0, np.float32), box)
    assert np.allclose(constant[0][box.slices], 2.0)


def test_upsample2_linear_matches_interpolation():
    a = np.arange(5, dtype=np.float32)[None]
    up = cvae.upsample2_linear(a, 1)
    np.testing.assert_allclose(up[0], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.25, 3.75, 4])


def test_make_condition_and_intensity():
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[1, 1, 1], labels[2, 2, 2] = 3, 1
    brain = np.zeros((4, 4, 4), bool)
    brain[:2] = True
    cond = cvae.make_condition(labels, brain)
    assert cond.shape == (NUM_CLASSES + 1, 4, 4, 4)
    np.testing.assert_array_equal(cond[:NUM_CLASSES].sum(0), 1)
    assert cond[3, 1, 1, 1] == 1 and cond[-1, 2, 2, 2] == 1  # tumour is always brain
    image = cvae.to_intensity(np.full((4, 4, 4, 4), -20.0, np.float32), cond[-1] > 0)
    assert np.all(image[:, cond[-1] > 0] >= cvae.INTENSITY_FLOOR) and np.all(image[:, cond[-1] == 0] == 0)


def test_bad_configurations_are_rejected():
    with pytest.raises(ValueError, match="divisible"):
        cvae.build_cvae(4, 2, depth=4, grid=GRID)
    with pytest.raises(ValueError, match="power of two"):
        cvae.CvaeGrid((30, 30, 30), 3)
    with pytest.raises(ValueError, match="multiples"):
        cvae.CvaeGrid((31, 32, 16), 2)


# ----------------------------------------------------------------------------- training CLI


def one_mm_toy_case(seed: int, name: str, shape=(36, 34, 24)):
    """``tests.test_inference.toy_case`` on a 1 mm grid (the CVAE works on 1 mm cases only)."""
    from tests.test_inference import toy_case

    case = toy_case(shape, seed=seed, name=name)
    case.affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    case.header.set_zooms((1.0, 1.0, 1.0))
    case.header.set_qform(case.affine, code=1)
    case.header.set_sform(case.affine, code=1)
    return case


@pytest.fixture(scope="module")
def toy_cases_dir(tmp_path_factory):
    from core.io.case import save_case

    root = tmp_path_factory.mktemp("cvae_cases")
    for i in range(3):
        save_case(one_mm_toy_case(30 + i, f"toy-{i}"), root, naming="2023" if i else "2020")
    return root


def test_training_cli_writes_model_card_and_resumes(tmp_path, toy_cases_dir):
    import json

    from core.synthesis.generate import load_cvae
    from train import cvae as train_cvae

    out, run_dir = tmp_path / "w" / "cvae.keras", tmp_path / "run"
    args = ["--data", str(toy_cases_dir), "--workers", "0", "--pool", "2", "--samples-per-case", "1",
            "--val-cases", "0", "--box", "32", "32", "16", "--base", "4", "--latent", "2", "--depth", "1",
            "--ckpt-every", "1", "--warmup", "4", "--out", str(out), "--run-dir", str(run_dir)]
    assert train_cvae.main([*args, "--steps", "2"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["step"] == 2 and [h["step"] for h in card["history"]] == [1, 2]
    assert card["backend"] == keras.backend.backend() and "train.cvae" in card["command"]
    assert card["architecture"]["model_grid"] == [16, 16, 8] and card["config"]["box"] == [32, 32, 16]
    assert np.isfinite(card["losses"]["rec"]) and card["history"][-1]["kl_weight"] == pytest.approx(0.1 * 2 / 4)
    model = load_cvae(out)
    assert model.count_params() == card["params"] and model.grid == GRID
    assert train_cvae.main([*args, "--steps", "3", "--resume"]) == 0
    state = json.loads((run_dir / "state.json").read_text())
    assert state["step"] == 3 and [h["step"] for h in state["history"]] == [1, 2, 3]
    assert float(load_cvae(out).train_steps) == 3  # the KL warm-up continues where it stopped


def test_linear_upsample_layer_matches_numpy():
    x = np.random.default_rng(4).normal(size=(2, 4, 5, 3, 2)).astype(np.float32)
    out = ops.convert_to_numpy(cvae.LinearUpsample3D()(x))
    ref = np.moveaxis(x, -1, 1).reshape(4, 4, 5, 3)
    for axis in (1, 2, 3):
        ref = cvae.upsample2_linear(ref, axis)
    np.testing.assert_allclose(out, np.moveaxis(ref.reshape(2, 2, 8, 10, 6), 1, -1), atol=1e-6)
