"""Region-based U-Net (WT/TC/ET sigmoids): model, loss, decoding to labels, inference and weight transfer."""

from __future__ import annotations

import numpy as np
import pytest

from core.io.labels import BACKGROUND, ED, ET, NCR, region_mask
from core.segmentation import inference, unet
from tests.test_inference import toy_case

import keras  # noqa: E402


@pytest.fixture(scope="module")
def region_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return unet.build_unet(base_filters=4, depth=3, regions=True)


def test_region_model_outputs_three_sigmoids(region_model):
    out = np.asarray(region_model.predict_on_batch(np.random.default_rng(0).normal(size=(1, 8, 8, 8, 4))))
    assert out.shape == (1, 8, 8, 8, 3) and out.dtype == np.float32
    assert (out > 0).all() and (out < 1).all()
    assert not np.allclose(out.sum(axis=-1), 1.0)  # independent sigmoids, not a softmax
    assert unet.is_region_model(region_model)
    assert not unet.is_region_model(unet.build_unet(base_filters=2, depth=2))


def test_region_loss_prefers_the_right_regions():
    labels = np.zeros((1, 6, 6, 6), np.uint8)
    labels[0, 1:5, 1:5, 1:5] = ED
    labels[0, 2:4, 2:4, 2:4] = NCR
    labels[0, 2, 2, 2] = ET
    truth = np.stack([region_mask(labels, r) for r in unet.REGION_CHANNELS], axis=-1).astype(np.float32)
    perfect = np.clip(truth, 1e-4, 1 - 1e-4)
    swapped = perfect[..., ::-1]  # ET where WT should be and vice versa
    good = float(unet.region_dice_bce_loss(labels, perfect))
    bad = float(unet.region_dice_bce_loss(labels, swapped))
    assert good < 0.01 and bad > 0.5
    # one-channel integer labels (B, X, Y, Z, 1) give the same loss
    assert float(unet.region_dice_bce_loss(labels[..., None], perfect)) == pytest.approx(good, rel=1e-6)


def test_tversky_loss_charges_missed_tumour_more_than_over_called_tumour():
    """Tversky with alpha = beta = 0.5 is the soft Dice; at 0.3 / 0.7, missing n tumour voxels costs more than
    over-calling n, by about twice the margin Dice + BCE puts between the two; the loss is 0-ish when perfect."""
    labels = np.zeros((1, 8, 8, 8), np.uint8)
    labels[0, 2:6, 2:6, 2:6] = ET  # 64 voxels of WT, TC and ET
    truth = np.stack([region_mask(labels, r) for r in unet.REGION_CHANNELS], axis=-1).astype(np.float32)
    probs = np.clip(truth, 1e-4, 1 - 1e-4)
    missed, over = probs.copy(), probs.copy()
    missed[0, 2:6, 2:6, 2:4] = 1e-4  # 32 tumour voxels called background
    over[0, 6:8, 2:6, 2:6] = 1 - 1e-4  # 32 background voxels called tumour
    half = np.asarray(unet._batch_tversky(truth, missed, 0.5, 0.5))
    np.testing.assert_allclose(half, np.asarray(unet._batch_dice(truth, missed)), rtol=1e-5)
    tversky = {name: float(unet.region_tversky_bce_loss(labels, p)) for name, p in
               (("perfect", probs), ("missed", missed), ("over", over))}
    dice = {name: float(unet.region_dice_bce_loss(labels, p)) for name, p in (("missed", missed), ("over", over))}
    assert tversky["perfect"] < 0.01
    assert tversky["missed"] - tversky["over"] > 1.8 * (dice["missed"] - dice["over"]) > 0


def test_tversky_loss_needs_the_region_head():
    from train.unet import TrainConfig, build_model, compile_for

    config = TrainConfig(base=2, depth=2, loss="tversky", regions=False)
    with pytest.raises(ValueError, match="--regions"):
        compile_for(build_model(config), config)
    config = TrainConfig(base=2, depth=2, loss="tversky", regions=True)
    assert compile_for(build_model(config), config).loss is unet.region_tversky_bce_loss


def test_train_cli_refuses_tversky_without_regions_before_making_the_run_dir(tmp_path):
    from train import unet as train_unet

    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit, match="add --regions"):
        train_unet.main(["--data", "phantom", "--loss", "tversky", "--base", "2", "--depth", "2",
                         "--steps", "1", "--val-every", "1", "--run-dir", str(run_dir)])
    assert not run_dir.exists()


def test_regions_decode_to_nested_labels():
    regions = np.array([
        [0.2, 0.9, 0.9],  # not WT: background, whatever TC/ET say
        [0.8, 0.1, 0.9],  # WT only: ED (ET outside TC is ignored)
        [0.8, 0.7, 0.3],  # WT and TC: NCR
        [0.9, 0.8, 0.6],  # all three: ET
    ], np.float32)
    np.testing.assert_array_equal(inference.regions_to_labels(regions), [BACKGROUND, ED, NCR, ET])
    probs = inference.region_class_probabilities(regions)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs[1], [0.2, 0.8 * 0.1 * 0.1, 0.8 * 0.9, 0.8 * 0.1 * 0.9], rtol=1e-6)
    assert (probs >= 0).all()


def test_segment_case_with_a_region_model(region_model, tmp_path):
    path = tmp_path / "regions.keras"
    region_model.save(path)
    model = inference.load_model(path)  # 3 output channels are accepted
    case = toy_case((20, 22, 18), seed=3)
    result = inference.segment_case(case, model, postprocess=False)
    assert result.labels.shape == case.seg.shape and set(np.unique(result.labels)) <= {0, 1, 2, 3}
    assert result.probabilities.shape == (4, *case.seg.shape)
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, rtol=1e-5)
    # the label map is the threshold decoding of the regions, not the argmax of derived probabilities
    net_input, box, _ = inference.prepare_input(case.image, multiple=inference.downsampling_factor(model),
                                                margin=inference.BRAIN_MARGIN)
    regions = inference.predict_volume(model, net_input)
    expected = box.invert(inference.regions_to_labels(regions), fill=BACKGROUND)
    np.testing.assert_array_equal(result.labels, expected)


def test_a_two_output_model_is_rejected(tmp_path):
    inputs = keras.Input((None, None, None, 4))
    bad = keras.Model(inputs, keras.layers.Conv3D(2, 1)(inputs))
    path = tmp_path / "two.keras"
    bad.save(path)
    with pytest.raises(inference.ModelLoadError, match="regions WT, TC, ET"):
        inference.load_model(path)


def test_init_from_a_class_model_keeps_all_but_the_head(tmp_path):
    from train.unet import _load_initial_weights

    keras.utils.set_random_seed(1)
    source = unet.build_unet(base_filters=2, depth=2)
    path = tmp_path / "classes.keras"
    source.save(path)
    target = unet.build_unet(base_filters=2, depth=2, regions=True)
    fresh = _load_initial_weights(target, path)
    assert fresh == ["region_head"]
    for name in ("enc0_conv1", "enc1_conv2", "dec0_conv2"):
        for a, b in zip(target.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(SystemExit, match="architecture differs"):
        _load_initial_weights(unet.build_unet(base_filters=4, depth=2), path)
