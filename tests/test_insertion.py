"""Tumour insertion into a real brain (core.synthesis, core.generate --host, train.insertion); tiny models only."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from core import generate
from core.io.case import Case, CaseError, load_case, save_case
from core.io.labels import ED, ET, NCR, from_internal
from core.io.nifti import save_nifti
from core.io.weights import ModelLoadError
from core.synthesis import region as rg
from core.synthesis.insert import insert_tumour, load_insertion_model, plan_insertion
from core.synthesis.vaegan import build_discriminator, build_insertion_model

SHAPE = (48, 40, 32)


@pytest.fixture(scope="module")
def model():
    return build_insertion_model(base_filters=4, latent_channels=2, seed=0)


def _header(affine: np.ndarray) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_data_shape(SHAPE)
    header.set_zooms((1.0, 1.0, 1.0))
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=2)
    header["descrip"] = b"host header"
    return header


def _host(affine: np.ndarray | None = None) -> Case:
    """A small 'brain' with texture and its own tumour at one place."""
    rng = np.random.default_rng(0)
    affine = np.array([[-1.0, 0, 0, 30.5], [0, -1.0, 0, 239.0], [0, 0, 1.0, -3.0], [0, 0, 0, 1]]) \
        if affine is None else affine
    image = np.zeros((4, *SHAPE), np.float32)
    image[:, 4:44, 4:36, 3:29] = 200 + 50 * rng.random((4, 40, 32, 26), dtype=np.float32)
    seg = np.zeros(SHAPE, np.uint8)
    seg[28:36, 20:28, 12:20] = ED
    seg[30:34, 22:26, 14:18] = ET
    image[:, seg > 0] += 300
    return Case(image=image, affine=affine, header=_header(affine), seg=seg, label_convention="2020", name="host")


def _target() -> np.ndarray:
    target = np.zeros(SHAPE, np.uint8)
    target[10:20, 10:18, 8:16] = ED
    target[12:18, 12:16, 10:14] = ET
    target[14:16, 13:15, 11:13] = NCR
    return target


def test_outside_region_is_bit_identical_and_region_covers_both_tumours(model):
    host, target = _host(), _target()
    cases = insert_tumour(host, target, model, n_samples=2, seed=3)
    region = plan_insertion(host, target).region_on_host()
    brain = np.any(host.image != 0, axis=0)
    wanted = rg.dilate((target > 0) | (host.seg > 0), rg.MARGIN) & brain
    assert np.all(region[wanted]) and not np.any(region & ~(brain | (target > 0)))
    for case in cases:
        assert case.image.dtype == host.image.dtype
        assert np.array_equal(case.image[:, ~region], host.image[:, ~region])  # exact, bit for bit
        assert np.mean(case.image[:, target > 0] != host.image[:, target > 0]) > 0.99  # the tumour is generated
        np.testing.assert_array_equal(case.seg, target)


def test_healthy_fill_replaces_the_host_tumour(model):
    host = _host()
    empty = np.zeros(SHAPE, np.uint8)
    case = insert_tumour(host, empty, model, seed=0)[0]
    region = plan_insertion(host, empty).region_on_host()
    assert np.all(region[host.seg > 0])  # the old tumour is regenerated...
    assert np.all(case.image[:, host.seg > 0] != host.image[:, host.seg > 0])
    assert not case.seg.any()  # ... and the result is tumour-free
    assert np.array_equal(case.image[:, ~region], host.image[:, ~region])


def test_geometry_kept_in_any_orientation(model):
    ras = np.array([[1.0, 0, 0, -20.0], [0, 1.0, 0, 5.0], [0, 0, 1.0, -3.0], [0, 0, 0, 1]])
    host, target = _host(ras), _target()
    case = insert_tumour(host, target, model, seed=1)[0]
    np.testing.assert_array_equal(case.affine, ras)
    assert case.header["descrip"] == host.header["descrip"]
    np.testing.assert_array_equal(case.header.get_sform(), host.header.get_sform())
    region = plan_insertion(host, target).region_on_host()
    assert np.array_equal(case.image[:, ~region], host.image[:, ~region])
    assert np.all(region[target > 0])


def test_seed_determinism(model):
    host, target = _host(), _target()
    a = insert_tumour(host, target, model, n_samples=2, seed=5)
    b = insert_tumour(host, target, model, n_samples=2, seed=5)
    c = insert_tumour(host, target, model, seed=6)
    np.testing.assert_array_equal(a[0].image, b[0].image)
    np.testing.assert_array_equal(a[1].image, b[1].image)
    assert not np.array_equal(a[0].image, a[1].image) and not np.array_equal(a[0].image, c[0].image)


def test_bad_inputs_name_the_problem(model):
    host = _host()
    with pytest.raises(CaseError, match="not on the host's grid"):
        insert_tumour(host, np.zeros((10, 10, 10), np.uint8), model)
    with pytest.raises(CaseError, match="unknown labels"):
        insert_tumour(host, np.full(SHAPE, 4, np.uint8), model)
    no_seg = Case(image=host.image, affine=host.affine, header=host.header, seg=None, name="bare")
    with pytest.raises(CaseError, match="no segmentation"):
        insert_tumour(no_seg, _target(), model)
    tumour_free = Case(image=host.image, affine=host.affine, header=host.header, seg=np.zeros(SHAPE, np.uint8))
    with pytest.raises(CaseError, match="nothing to generate"):
        insert_tumour(tumour_free, np.zeros(SHAPE, np.uint8), model)


def test_blend_has_no_step_at_the_border():
    region = np.zeros((30, 30, 30), bool)
    region[8:22, 8:22, 8:22] = True
    alpha = rg.blend_alpha(region, np.ones_like(region))
    assert alpha[~region].max() == 0 and alpha[15, 15, 15] == 1
    assert alpha[8, 15, 15] <= 1 / rg.RAMP + 1e-6  # the first voxel inside R is mostly the host


def test_blend_on_the_region_box_equals_the_whole_grid_transform():
    """blend_alpha runs the distance transform on R's box grown by the ramp: same weights as on the whole grid."""
    from scipy import ndimage

    rng = np.random.default_rng(4)
    for trial in range(4):
        brain = ndimage.binary_opening(rng.random((40, 36, 30)) < 0.9, iterations=1)
        region = np.zeros_like(brain)
        corner = rng.integers(0, 12, size=3) if trial else (0, 0, 0)  # trial 0: R touches the grid's faces
        region[tuple(slice(c, c + n) for c, n in zip(corner, (20, 18, 15)))] = True
        region &= rng.random(region.shape) < 0.97
        keep = brain & ~region
        reference = np.clip(ndimage.distance_transform_edt(~keep) / rg.RAMP, 0, 1).astype(np.float32)
        reference[~region] = 0
        np.testing.assert_array_equal(rg.blend_alpha(region, brain), reference)
    assert not rg.blend_alpha(np.zeros((5, 5, 5), bool), np.ones((5, 5, 5), bool)).any()


def test_save_load_safe_mode(model, tmp_path):
    path = tmp_path / "insertion.keras"
    model.save(path)
    loaded = load_insertion_model(path, precision=None)
    host, target = _host(), _target()
    np.testing.assert_array_equal(insert_tumour(host, target, loaded, seed=2)[0].image,
                                  insert_tumour(host, target, model, seed=2)[0].image)
    other = tmp_path / "disc.keras"
    build_discriminator(4).save(other)
    with pytest.raises(ModelLoadError, match="not an insertion"):
        load_insertion_model(other)


def test_cli_round_trip_with_host(model, tmp_path):
    host = _host()
    save_case(host, tmp_path, naming="2020", name="Host_1")
    host = load_case(tmp_path / "Host_1")
    target = _target()
    save_nifti(tmp_path / "mask.nii.gz", from_internal(target, "2020"), host.affine, host.header, np.uint8)
    model.save(tmp_path / "ins.keras")
    status = generate.main([str(tmp_path / "mask.nii.gz"), "--host", str(tmp_path / "Host_1"), "-o",
                            str(tmp_path / "out"), "--samples", "2", "--seed", "4", "--weights",
                            str(tmp_path / "ins.keras"), "--naming", "2023"])
    assert status == 0
    folders = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in folders] == ["BraTS-INS-s4-000", "BraTS-INS-s4-001"]
    region = plan_insertion(host, target).region_on_host()
    for folder in folders:
        case = load_case(folder)
        np.testing.assert_array_equal(case.affine, host.affine)
        np.testing.assert_array_equal(case.seg, target)
        assert case.label_convention == "2023"
        assert np.array_equal(case.image[:, ~region], host.image[:, ~region])
    bad = generate.main([str(tmp_path / "mask.nii.gz"), "--host", str(tmp_path / "nowhere"), "-o",
                         str(tmp_path / "out2"), "--weights", str(tmp_path / "ins.keras")])
    assert bad == 2


@pytest.mark.parametrize("hf_mode", ["energy", "distribution"])
def test_training_examples_and_one_step(hf_mode):
    """The trainer's examples (all three kinds) are well formed, and one GAN step runs and changes the weights;
    its texture term is positive on a paired example and 0 on an unpaired one."""
    from train import insertion as ti

    host = _host()
    brain = np.any(host.image != 0, axis=0)
    mean, std = rg.healthy_stats(host.image, brain, host.seg > 0)
    hosts = [ti.HostCase(rg.normalise(host.image, brain, mean, std).astype(np.float16), host.seg, brain, "h")]
    shapes = ti.tumour_shapes(hosts)
    rng = np.random.default_rng(0)
    for kind in ti.KINDS:
        ex = ti.make_example(hosts, shapes, rng, 16, kind)
        assert ex["image"].shape == (16, 16, 16, 4) and ex["cond"].shape == (16, 16, 16, 5)
        assert not np.any(ex["context"][ex["cond"][..., 3] > 0])  # R is blanked in the context
        if kind == "healthy":
            assert not ex["cond"][..., :3].any()  # empty target
    config = ti.InsertionConfig(batch=1, patch=16, base=4, latent=2, precision="float32", upsampling="linear",
                                disc_antialias=True, hf_weight=1.0, hf_mode=hf_mode)
    net, disc = build_insertion_model(4, 2, upsampling="linear"), build_discriminator(4, antialias=True)
    import keras

    step = ti.make_train_step(net, disc, keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3), config)
    batch = next(ti.example_stream(hosts, 16, 1, 0, config.kind_probs))
    before = keras.ops.convert_to_numpy(net.generator.weights[0]).copy()
    losses = step(batch["image"], batch["context"], batch["cond"], batch["real_cond"], batch["paired"])
    assert all(np.isfinite(float(v)) for v in losses.values())
    assert not np.array_equal(before, keras.ops.convert_to_numpy(net.generator.weights[0]))
    paired = next(ti.example_stream(hosts, 16, 1, 0, (1.0, 0.0, 0.0)))  # tumour kind: paired with the truth
    unpaired = next(ti.example_stream(hosts, 16, 1, 0, (0.0, 0.0, 1.0)))  # foreign kind: no truth
    assert float(step(*(paired[k] for k in ("image", "context", "cond", "real_cond", "paired")))["hf"]) > 0
    assert float(step(*(unpaired[k] for k in ("image", "context", "cond", "real_cond", "paired")))["hf"]) == 0


def test_mean_z_fraction_one_decodes_paired_examples_at_z_zero():
    """With ``mean_z_fraction=1`` a paired example is decoded at z = 0: the reconstruction loss of the same weights
    is the same on every call; with 0 it is decoded from a posterior sample and changes from call to call."""
    from train import insertion as ti

    import keras

    host = _host()
    brain = np.any(host.image != 0, axis=0)
    mean, std = rg.healthy_stats(host.image, brain, host.seg > 0)
    hosts = [ti.HostCase(rg.normalise(host.image, brain, mean, std).astype(np.float16), host.seg, brain, "h")]
    paired = next(ti.example_stream(hosts, 16, 1, 0, (1.0, 0.0, 0.0)))
    args = [paired[k] for k in ("image", "context", "cond", "real_cond", "paired")]
    recs = {}
    for fraction in (0.0, 1.0):
        config = ti.InsertionConfig(batch=1, patch=16, base=4, latent=2, precision="float32",
                                    mean_z_fraction=fraction)
        net, disc = build_insertion_model(4, 2, seed=1), build_discriminator(4)
        step = ti.make_train_step(net, disc, keras.optimizers.Adam(0.0), keras.optimizers.Adam(0.0), config)
        recs[fraction] = [float(step(*args)["rec"]) for _ in range(3)]  # lr 0: the weights stay as they are
    assert len(set(recs[1.0])) == 1
    assert len(set(recs[0.0])) == 3


def test_high_pass_keeps_only_voxel_scale_texture():
    """A constant or linear ramp has no high-pass content (inside); a one-voxel checkerboard keeps all of it."""
    from train.insertion import high_pass

    ramp = np.broadcast_to(np.arange(8, dtype="float32")[None, :, None, None, None], (1, 8, 8, 8, 1))
    np.testing.assert_allclose(np.asarray(high_pass(ramp))[:, 1:-1], 0.0, atol=1e-6)
    grid = np.indices((8, 8, 8)).sum(axis=0) % 2 * 2.0 - 1.0
    hp = np.asarray(high_pass(grid[None, ..., None].astype("float32")))[0, 1:-1, 1:-1, 1:-1, 0]
    np.testing.assert_allclose(hp, grid[1:-1, 1:-1, 1:-1], atol=1e-6)  # blur of a 1-voxel checkerboard is 0


def test_texture_energy_loss_ignores_the_texture_phase_but_not_its_amplitude():
    """The same noise shifted by a voxel has the truth's roughness: the energy term is ~0, the pixel term is not;
    a smooth fill costs the energy term the truth's whole amplitude; unpaired examples cost nothing."""
    from train.insertion import texture_loss

    rng = np.random.default_rng(0)
    truth = rng.normal(size=(1, 16, 16, 16, 4)).astype("float32")
    shifted = np.roll(truth, 1, axis=1)
    region = np.zeros((1, 16, 16, 16, 1), "float32")
    region[:, 3:13, 3:13, 3:13] = 1.0
    paired, unpaired = np.ones((1,), "float32"), np.zeros((1,), "float32")

    def loss(fake, pair, mode):
        return float(texture_loss(fake, truth, region, pair, mode))

    assert loss(shifted, paired, "energy") < 0.02 < 0.5 < loss(shifted, paired, "pixel")
    smooth = np.zeros_like(truth)
    assert loss(smooth, paired, "energy") == pytest.approx(loss(smooth, paired, "pixel"), rel=1e-4)  # all of |HP|
    assert loss(smooth, paired, "energy") > 0.5
    assert loss(smooth, unpaired, "energy") == 0.0 and loss(smooth, unpaired, "pixel") == 0.0


def test_init_copies_the_generator_and_refuses_another_size(tmp_path, model):
    """--init starts a run from a saved model's weights (nearest -> linear up-sampling) and names a mismatch."""
    from train import insertion as ti

    model.save(tmp_path / "start.keras")
    linear = build_insertion_model(4, 2, seed=1, upsampling="linear")
    ti.init_from(linear, tmp_path / "start.keras")
    for a, b in zip(linear.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(SystemExit, match="base 4, latent 2"):
        ti.init_from(build_insertion_model(8, 2), tmp_path / "start.keras")


def test_augment_experiment_insertion_arm_on_real_style_folders(tmp_path, model, monkeypatch):
    """Arms (a) and (c) on case folders with a fixed validation split: K never drawn from it, samples in arm (c)."""
    from tests.test_cvae import one_mm_toy_case
    from train import augment_experiment as exp

    real = tmp_path / "real"
    for i in range(3):
        save_case(one_mm_toy_case(40 + i, f"toy-{i}"), real)
    model.save(tmp_path / "ins.keras")
    config = exp.ExperimentConfig(k=1, m=2, seeds=[0], steps=1, batch=1, patch=16, base=4, depth=2, real=str(real),
                                  val_cases="toy-2", arms=["a", "c"], insertion=str(tmp_path / "ins.keras"),
                                  workers=0, work_dir=str(tmp_path / "work"))
    results = exp.run(config)
    seed = results["per_seed"][0]
    assert set(results["summary"]) == {"K only", "K + M insertion"} and "toy-2" not in seed["k_cases"]
    assert [p.name for p in (tmp_path / "work" / "seed0" / "test").iterdir()] == ["toy-2"]
    folders = sorted(p.name for p in (tmp_path / "work" / "seed0" / "k_m_insert").iterdir())
    assert len(folders) == 3 and sum(name.startswith("insert-") for name in folders) == 2
    host = load_case(real / seed["k_cases"][0])
    sample = load_case(tmp_path / "work" / "seed0" / "k_m_insert" / folders[0])
    np.testing.assert_array_equal(sample.affine, host.affine)
    assert not np.array_equal(sample.seg, host.seg)  # a mask of another case (mirrored): a new tumour
    # rerun: finished arms are reused from their score.json, not retrained; other settings retrain
    trained = []
    monkeypatch.setattr(exp, "train_unet", lambda cfg, command: trained.append(cfg.out))
    again = exp.run(config)
    assert trained == [] and again["per_seed"][0]["K only"] == seed["K only"]
    build_insertion_model(4, 2, seed=5).save(tmp_path / "ins.keras")  # the insertion model retrained in place
    exp.run(config)
    assert trained == [str(tmp_path / "work" / "seed0" / "unet_k_m_insert" / "unet.keras")]  # only arm (c)
    config.lr = config.lr / 2
    exp.run(config)  # the stub "retrains" both arms (their old models are scored again)
    assert len(trained) == 3


def test_linear_upsampling_is_trilinear_interpolation_at_voxel_centres():
    """LinearUpSampling3D equals scipy's order-1 zoom (half-pixel grid, edges replicated) on every axis."""
    from scipy import ndimage

    from core.synthesis.vaegan import LinearUpSampling3D

    import keras

    x = np.random.default_rng(3).normal(size=(1, 5, 4, 6, 2)).astype("float32")
    up = keras.ops.convert_to_numpy(LinearUpSampling3D()(x))
    ref = np.stack([ndimage.zoom(x[0, ..., c], 2, order=1, grid_mode=True, mode="nearest") for c in range(2)], -1)
    assert up.shape == (1, 10, 8, 12, 2)
    np.testing.assert_allclose(up[0], ref, atol=1e-5)
    # a constant stays constant (no seams at the edges), unlike a ringing transposed convolution
    np.testing.assert_allclose(keras.ops.convert_to_numpy(LinearUpSampling3D()(np.ones((1, 2, 2, 2, 1), "float32"))),
                               1.0, atol=1e-6)


def test_linear_upsampling_model_round_trips_in_safe_mode_and_old_files_stay_nearest(tmp_path, model):
    """The up-sampling mode is part of the saved config; a file saved without it loads with nearest up-sampling."""
    import keras

    linear = build_insertion_model(base_filters=4, latent_channels=2, seed=0, upsampling="linear")
    linear.save(tmp_path / "linear.keras")
    again = load_insertion_model(tmp_path / "linear.keras", precision=None)
    assert again.upsampling == "linear"
    context = np.random.default_rng(0).normal(size=(1, 16, 16, 16, 4)).astype("float32")
    cond = np.zeros((1, 16, 16, 16, 5), "float32")
    z = np.random.default_rng(1).normal(size=(1, 2, 2, 2, 2)).astype("float32")
    out = keras.ops.convert_to_numpy(again.generate(context, cond, z))
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(linear.generate(context, cond, z)), atol=1e-5)
    assert model.upsampling == "nearest" and linear.count_params() == model.count_params()
    again.set_weights(model.get_weights())  # the same weights: only the up-sampling differs
    nearest = keras.ops.convert_to_numpy(model.generate(context, cond, z))
    assert not np.allclose(keras.ops.convert_to_numpy(again.generate(context, cond, z)), nearest)
    with pytest.raises(ValueError, match="upsampling"):
        build_insertion_model(4, 2, upsampling="cubic")


def test_antialiased_discriminator_keeps_outputs_and_weights():
    """Blurring before the strided convolutions adds no weights and keeps the feature / logit grid."""
    image = np.random.default_rng(0).normal(size=(1, 16, 16, 16, 4)).astype("float32")
    cond = np.zeros((1, 16, 16, 16, 5), "float32")
    plain, smooth = build_discriminator(4), build_discriminator(4, antialias=True)
    assert plain.count_params() == smooth.count_params()
    assert [tuple(o.shape) for o in plain([image, cond])] == [tuple(o.shape) for o in smooth([image, cond])]


def test_full_resolution_discriminator_sees_the_texture_the_blur_removes():
    """The anti-aliased discriminator is blind to a 1-voxel checkerboard (the blur zeroes it: its outputs equal
    those of a flat image); with a full-resolution convolution in front it is not, and it leads the feature list."""
    import keras

    keras.utils.set_random_seed(0)
    flat = np.zeros((1, 64, 64, 64, 4), "float32")
    board = (np.indices((64, 64, 64)).sum(axis=0) % 2 * 2.0 - 1.0)[None, ..., None].repeat(4, -1).astype("float32")
    cond = np.zeros((1, 64, 64, 64, 5), "float32")
    blind, seeing = build_discriminator(4, antialias=True), build_discriminator(4, antialias=True, full_res=True)

    def logits(disc, image):
        return keras.ops.convert_to_numpy(disc([image, cond])[-1])[:, 2:-2, 2:-2, 2:-2]  # away from the edges

    np.testing.assert_allclose(logits(blind, board), logits(blind, flat), atol=1e-5)
    assert np.abs(logits(seeing, board) - logits(seeing, flat)).max() > 1e-3
    outputs = seeing([board, cond])
    assert len(outputs) == 5 and tuple(outputs[0].shape[1:4]) == (64, 64, 64)
    assert tuple(outputs[-1].shape) == tuple(blind([board, cond])[-1].shape)


def test_samples_carry_the_hosts_texture_inside_R_and_the_mean_fill_none(model):
    """Temperature > 0 adds host-matched noise inside R (seeded, nothing outside); temperature 0 adds none."""
    from core.synthesis.insert import render
    from core.synthesis.texture import high_pass, robust_level

    host, target = _host(), _target()
    plan = plan_insertion(host, target)
    assert plan.texture is not None
    z = model.sample_latent(plan.crop_shape, seed=0, temperature=1.0)
    plain = render(plan, model, z)
    grainy = render(plan, model, z, texture=1.0, texture_seed=7)
    region = plan.region_on_host()
    np.testing.assert_array_equal(plain[:, ~region], grainy[:, ~region])
    inner = rg.dilate(~region, 3)  # R away from the blend ramp
    core_r = region & ~inner

    def level(image):
        return robust_level(high_pass(np.moveaxis(image, 0, -1))[core_r])

    assert np.all(level(grainy) > 1.5 * level(plain))
    np.testing.assert_array_equal(grainy, render(plan, model, z, texture=1.0, texture_seed=7))
    mean_fill = insert_tumour(host, target, model, temperature=0.0)[0].image
    z0 = model.sample_latent(plan.crop_shape, seed=0, temperature=0.0)
    np.testing.assert_array_equal(mean_fill, render(plan, model, z0))
    from core.synthesis.generate import sample_seed

    z1 = model.sample_latent(plan.crop_shape, seed=sample_seed(4, 0), temperature=1.0)
    no_noise = insert_tumour(host, target, model, seed=4, texture=0.0)[0].image
    np.testing.assert_array_equal(no_noise, render(plan, model, z1))
    with pytest.raises(ValueError, match="texture"):
        insert_tumour(host, target, model, texture=-1.0)


def test_uncalibrated_render_is_the_raw_generator_inside_the_tumour_classes(model):
    """``calibrated=False`` skips the class bias removal: outside R nothing differs, inside the target's ET the
    calibrated fill is brighter in FLAIR and darker in T1ce (CLASS_BIAS: the generator's ET is too dark / too
    bright there)."""
    from core.synthesis.calibration import CLASS_BIAS
    from core.synthesis.insert import render

    host, target = _host(), _target()
    plan = plan_insertion(host, target)
    z = model.sample_latent(plan.crop_shape, seed=0, temperature=1.0)
    calibrated = render(plan, model, z, host_levels=False)  # the z-score fill: the level model would reset medians
    raw = render(plan, model, z, calibrated=False, host_levels=False)
    region = plan.region_on_host()
    np.testing.assert_array_equal(calibrated[:, ~region], raw[:, ~region])
    shift = (calibrated - raw)[:, target == ET].mean(axis=1)
    assert CLASS_BIAS[3][3] < 0 < CLASS_BIAS[3][1]
    assert shift[3] > 0 > shift[1]


def test_bfloat16_sampling_is_close_to_float32_and_leaves_the_model_float32(model, tmp_path):
    """Sampling in mixed bfloat16 runs the generator through an untracked copy: samples stay close to the float32
    ones, the model's weights and its saved file are unchanged, and precision=None is exact."""
    import keras

    path = tmp_path / "ins.keras"
    model.save(path)
    exact = load_insertion_model(path, precision=None)
    fast = load_insertion_model(path, precision="mixed_bfloat16")
    assert len(fast.weights) == len(exact.weights) and fast.generator.dtype_policy.name == "float32"
    host, target = _host(), _target()
    a = insert_tumour(host, target, exact, seed=2, texture=0.0)[0].image
    b = insert_tumour(host, target, fast, seed=2, texture=0.0)[0].image
    np.testing.assert_array_equal(a, insert_tumour(host, target, model, seed=2, texture=0.0)[0].image)
    region = plan_insertion(host, target).region_on_host()
    assert not np.array_equal(a[:, region], b[:, region])  # it did run in another precision
    scale = np.abs(a[:, region]).max()
    assert np.abs(a - b).max() < 0.02 * scale
    np.testing.assert_array_equal(a[:, ~region], b[:, ~region])
    fast.save(tmp_path / "again.keras")
    again = keras.saving.load_model(tmp_path / "again.keras", safe_mode=True)
    assert again.generator.dtype_policy.name == "float32"
    for w, v in zip(again.weights, exact.weights):
        np.testing.assert_array_equal(np.asarray(w), np.asarray(v))


def test_auto_precision_samples_in_float32_where_bfloat16_is_emulated(monkeypatch):
    """Issue 36: on a CPU without native bfloat16 the generator runs float32 (emulated bfloat16 was ~10x slower);
    where it is native, or when BRATS_INFERENCE_PRECISION asks, mixed bfloat16."""
    from core.segmentation import precision
    from core.synthesis.insert import INFERENCE_PRECISION, sampling_precision

    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    monkeypatch.setattr(precision, "native_bfloat16", lambda flags=None: False)
    assert sampling_precision("auto") is None
    assert sampling_precision("mixed_bfloat16") == "mixed_bfloat16" and sampling_precision(None) is None
    monkeypatch.setenv(precision.PRECISION_ENV, "mixed_bfloat16")
    assert sampling_precision("auto") == INFERENCE_PRECISION
    monkeypatch.delenv(precision.PRECISION_ENV)
    monkeypatch.setattr(precision, "native_bfloat16", lambda flags=None: True)
    assert sampling_precision("auto") == INFERENCE_PRECISION


def test_texture_distribution_loss_sees_the_tails_the_energy_loss_misses():
    """Heavy-tailed truth texture vs Gaussian fill of the same mean |high-pass|: the energy term is ~0, the
    distribution term is not; the truth's own texture shifted by a voxel costs the distribution term ~0; the loss
    equals the 1-D Wasserstein distance of the high-pass values inside R; unpaired examples cost nothing."""
    from scipy.stats import wasserstein_distance

    from train.insertion import high_pass, texture_loss

    rng = np.random.default_rng(0)
    shape = (1, 24, 24, 24, 2)
    truth = rng.laplace(size=shape).astype("float32")
    truth[rng.random(shape) < 0.02] *= 6.0  # sparse strong structures
    region = np.zeros((1, 24, 24, 24, 1), "float32")
    region[:, 4:20, 4:20, 4:20] = 1.0
    paired, unpaired = np.ones((1,), "float32"), np.zeros((1,), "float32")
    hp_truth = np.asarray(high_pass(truth))
    gauss = rng.normal(size=shape).astype("float32")
    inside = region[..., 0] > 0
    gauss *= np.abs(hp_truth[inside]).mean(0) / np.abs(np.asarray(high_pass(gauss))[inside]).mean(0)  # per channel

    def loss(fake, pair, mode):
        return float(texture_loss(fake, truth, region, pair, mode))

    assert loss(gauss, paired, "energy") < 0.01
    assert loss(gauss, paired, "distribution") > 10 * loss(gauss, paired, "energy")
    assert loss(np.roll(truth, 1, axis=1), paired, "distribution") < 0.3 * loss(gauss, paired, "distribution")
    hp_gauss = np.asarray(high_pass(gauss))
    expected = np.mean([wasserstein_distance(hp_gauss[..., c][inside], hp_truth[..., c][inside]) for c in range(2)])
    assert loss(gauss, paired, "distribution") == pytest.approx(expected, rel=1e-3)
    assert loss(gauss, unpaired, "distribution") == 0.0


def test_host_texture_is_measured_once_and_only_when_noise_is_added(model, monkeypatch):
    """The texture's spectrum is the plan's slowest part: temperature-0 fills never measure it; samples with
    texture measure it once per plan, however many samples."""
    from core.synthesis import insert as ins

    calls = []
    real = ins.host_texture
    monkeypatch.setattr(ins, "host_texture", lambda *a, **k: calls.append(1) or real(*a, **k))
    host, target = _host(), _target()
    insert_tumour(host, target, model, n_samples=2, temperature=0.0)
    assert calls == []
    insert_tumour(host, target, model, n_samples=3, seed=1)
    assert calls == [1]


def test_faint_host_flair_stays_under_its_window_top_and_outside_R_is_unchanged(model):
    """Issue 36's "white plate": on a host whose healthy brain is its brightest tissue (FLAIR 99.5th percentile only
    ~1.7 healthy SDs above the mean), the z-score fill (host_levels=False) puts the calibrated enhancing tumour
    (FLAIR +1.9 SD, ``CLASS_BIAS``) above the window's top; the host-relative model keeps every tumour voxel under it,
    leaves texture in the tumour and changes nothing outside R."""
    from core.synthesis.insert import fill, place

    host, target = _host(), _target()
    host.image[:, host.seg > 0] -= 300  # the host's own tumour no brighter than its brain: a faint host
    plan = plan_insertion(host, target)
    z = model.sample_latent(plan.crop_shape, seed=0, temperature=1.0)
    crop = fill(plan, model, z, texture=1.0, texture_seed=0)
    old, new = place(plan, crop, host_levels=False), place(plan, crop, host_levels=True)
    brain = np.any(host.image != 0, axis=0)
    top = np.percentile(host.image[3][brain], 99.5)
    tumour = target > 0
    assert np.mean(old[3][tumour] >= top) > 0.05  # precondition: the old fill saturates this host's FLAIR
    assert np.mean(new[3][tumour] >= top) == 0.0
    assert np.std(new[3][target == ED]) > 0.3 * np.std(old[3][target == ED])  # texture kept, not flattened
    region = plan.region_on_host()
    for image in (old, new):
        assert np.array_equal(image[:, ~region], host.image[:, ~region])  # bit for bit
    cases = insert_tumour(host, target, model, seed=0)  # the default path is the new one
    assert np.mean(cases[0].image[3][tumour] >= top) == 0.0
