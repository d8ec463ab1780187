"""core.segmentation.unet: the 3D U-Net builds, its softmax output has the right shape, the loss behaves and trains."""

from __future__ import annotations

import numpy as np
import pytest

from core.segmentation import unet

import keras  # noqa: E402  (after core.segmentation.unet set the backend options)


@pytest.fixture(scope="module")
def tiny_model() -> keras.Model:
    return unet.build_unet(base_filters=4, depth=2)


def test_output_is_softmax_over_four_classes(tiny_model):
    x = np.random.default_rng(0).normal(size=(2, 32, 24, 16, 4)).astype("float32")
    y = np.asarray(tiny_model.predict_on_batch(x))
    assert y.shape == (2, 32, 24, 16, 4)
    assert y.dtype == np.float32
    assert y.min() >= 0
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, atol=1e-5)


def test_depth_and_width_are_configurable():
    model = unet.build_unet(base_filters=2, depth=3, norm="group")
    assert unet.size_multiple(model) == 4
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv3D)
             and not isinstance(layer, keras.layers.Conv3DTranspose)]
    assert max(layer.filters for layer in convs[:-1]) == 2 * 2**2  # deepest level: base * 2**(depth-1)
    assert convs[-1].filters == 4  # head
    out = model.predict_on_batch(np.zeros((1, 8, 12, 16, 4), "float32"))
    assert out.shape == (1, 8, 12, 16, 4)


@pytest.mark.parametrize("kwargs", [{"norm": "batch"}, {"depth": 1}, {"num_classes": 1}])
def test_bad_configurations_are_rejected(kwargs):
    with pytest.raises(ValueError):
        unet.build_unet(base_filters=2, **kwargs)


def _one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(4, dtype="float32")[labels]


def test_loss_is_small_for_the_truth_and_large_for_the_wrong_class():
    labels = np.zeros((1, 8, 8, 8), np.uint8)
    labels[0, 2:6, 2:6, 2:6] = 2
    labels[0, 3:5, 3:5, 3:5] = 3
    perfect = np.clip(_one_hot(labels), 1e-6, 1.0)
    wrong = _one_hot((labels + 1) % 4)
    uniform = np.full(perfect.shape, 0.25, "float32")
    loss = lambda p: float(unet.dice_ce_loss(labels, p))  # noqa: E731
    assert loss(perfect) < 0.35  # Dice term of the absent NCR class stays ~1/3; CE ~ 0
    assert loss(perfect) < loss(uniform) < loss(wrong)
    # sparse labels, (B, X, Y, Z, 1) labels and one-hot targets give the same loss
    assert float(unet.dice_ce_loss(labels[..., None], uniform)) == pytest.approx(loss(uniform), rel=1e-5)
    assert float(unet.dice_ce_loss(_one_hot(labels), uniform)) == pytest.approx(loss(uniform), rel=1e-5)


def test_dice_ignores_background_but_counts_every_tumour_class():
    labels = np.zeros((1, 8, 8, 8), np.uint8)
    labels[0, :4] = 1
    labels[0, 4:6] = 2
    labels[0, 6:] = 3
    good = _one_hot(labels)
    bad_et = good.copy()
    bad_et[0, 6:] = _one_hot(np.full((2, 8, 8), 2, np.uint8))  # ET predicted as ED
    assert float(unet.soft_dice_loss(labels, good)) == pytest.approx(0.0, abs=1e-5)
    assert float(unet.soft_dice_loss(labels, bad_et)) > 0.3


def test_compiled_model_round_trips_in_safe_mode(tmp_path):
    model = unet.build_unet(base_filters=4, depth=2)
    model.compile(optimizer="adam", loss=unet.dice_ce_loss)
    x = np.random.default_rng(1).normal(size=(1, 16, 16, 16, 4)).astype("float32")
    model.train_on_batch(x, np.zeros((1, 16, 16, 16), np.uint8))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)
    assert loaded.loss is unet.dice_ce_loss
    assert int(loaded.optimizer.iterations) == 1  # optimizer state comes back (resuming training)


def test_a_few_training_steps_lower_the_loss():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = np.zeros((2, 16, 16, 16), np.uint8)
    labels[:, 4:12, 4:12, 4:12] = 2
    labels[:, 6:10, 6:10, 6:10] = 1
    labels[:, 6:10, 6:10, 9:10] = 3
    means = np.array([[0, 0, 0, 0], [1.0, -1.0, 2.0, 0.5], [0.5, 0.2, 1.5, 2.0], [0.8, 2.5, 1.0, 1.0]], "float32")
    x = (means[labels] + 0.2 * rng.normal(size=labels.shape + (4,))).astype("float32")
    model = unet.build_unet(base_filters=4, depth=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=unet.dice_ce_loss)
    first = float(model.train_on_batch(x, labels))
    for _ in range(15):
        last = float(model.train_on_batch(x, labels))
    assert last < 0.7 * first
