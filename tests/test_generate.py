"""Sampling API (core.synthesis.generate) and CLI (core.generate) of the conditional VAE."""

from __future__ import annotations

import zipfile

import nibabel as nib
import numpy as np
import pytest

from core import generate as generate_cli
from core.io.case import CaseError, load_case
from core.io.labels import ED, ET, NCR, from_internal
from core.io.nifti import save_nifti
from core.segmentation.inference import ModelLoadError
from core.synthesis import cvae, generate

SHAPE = (40, 36, 20)
GRID = cvae.CvaeGrid((32, 32, 16), 2)


@pytest.fixture(scope="module")
def model() -> cvae.ConditionalVAE:
    return cvae.build_cvae(base_filters=4, latent_channels=2, depth=2, grid=GRID)


@pytest.fixture()
def geometry() -> tuple[np.ndarray, np.ndarray, np.ndarray, nib.Nifti1Header]:
    """A tumour mask, a brain mask, a non-trivial affine and a header on a small 1 mm grid."""
    mask = np.zeros(SHAPE, np.uint8)
    mask[14:26, 12:24, 6:15] = ED
    mask[17:23, 15:21, 8:13] = ET
    mask[19:21, 17:19, 10:11] = NCR
    brain = np.zeros(SHAPE, bool)
    brain[6:34, 4:32, 2:18] = True
    affine = np.array([[-1.0, 0, 0, 10.5], [0, -1.0, 0, 239.0], [0, 0, 1.0, -3.0], [0, 0, 0, 1]])
    header = nib.Nifti1Header()
    header.set_data_shape(SHAPE)
    header.set_zooms((1.0, 1.0, 1.0))
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    return mask, brain, affine, header


def test_generated_cases_keep_the_mask_geometry(model, geometry):
    mask, brain, affine, header = geometry
    calls = []
    cases = generate.generate_cases(mask, affine, header, model, n_samples=2, seed=5, brain=brain,
                                    progress=lambda f, msg: calls.append(f))
    assert len(cases) == 2 and calls[-1] == 1.0 and calls == sorted(calls)
    for case in cases:
        assert case.image.shape == (4, *SHAPE) and case.image.dtype == np.float32
        np.testing.assert_array_equal(case.affine, affine)
        np.testing.assert_array_equal(case.header.get_best_affine(), affine)
        np.testing.assert_array_equal(case.seg, mask)
        assert np.all(case.image[:, ~brain] == 0)  # outside the brain exactly 0
        assert np.all(case.image[:, brain] >= cvae.INTENSITY_FLOOR)  # inside positive (brain_mask finds it)
    assert cases[0].name != cases[1].name


def test_sampling_is_deterministic_per_seed(model, geometry):
    mask, brain, affine, header = geometry
    a = generate.generate_cases(mask, affine, header, model, n_samples=2, seed=1, brain=brain)
    b = generate.generate_cases(mask, affine, header, model, n_samples=2, seed=1, brain=brain)
    c = generate.generate_cases(mask, affine, header, model, n_samples=1, seed=2, brain=brain)
    np.testing.assert_array_equal(a[0].image, b[0].image)
    np.testing.assert_array_equal(a[1].image, b[1].image)
    assert not np.array_equal(a[0].image, a[1].image)
    assert not np.array_equal(a[0].image, c[0].image)
    cold = [generate.generate_cases(mask, affine, header, model, seed=s, temperature=0.0, brain=brain)[0]
            for s in (1, 2)]
    np.testing.assert_array_equal(cold[0].image, cold[1].image)  # temperature 0: the prior mean


def test_reconstruct_keeps_the_case_geometry(model, geometry):
    mask, brain, affine, header = geometry
    case = generate.generate_cases(mask, affine, header, model, seed=0, brain=brain)[0]
    case.name = "source"
    recon = generate.reconstruct(case, model)
    assert recon.name == "source-recon" and recon.image.shape == case.image.shape
    np.testing.assert_array_equal(recon.affine, affine)
    np.testing.assert_array_equal(recon.seg, mask)
    assert np.all(recon.image[:, ~brain] == 0)
    case.seg = None
    with pytest.raises(CaseError, match="no segmentation"):
        generate.reconstruct(case, model)


def test_bad_masks_get_clear_errors(model, geometry):
    mask, brain, affine, header = geometry
    with pytest.raises(CaseError, match="not the BraTS grid"):
        generate.generate_cases(mask, affine, header, model)  # no brain given and not 240x240x155
    with pytest.raises(CaseError, match="differ in shape"):
        generate.generate_cases(mask, affine, header, model, brain=brain[:-1])
    wrong = mask.copy()
    wrong[0, 0, 0] = 4
    with pytest.raises(CaseError, match="to_internal"):
        generate.generate_cases(wrong, affine, header, model, brain=brain)
    wrong[0, 0, 0] = 7
    with pytest.raises(CaseError, match=r"unknown labels \[7\]"):
        generate.generate_cases(wrong, affine, header, model, brain=brain)
    with pytest.raises(CaseError, match="3D label map"):
        generate.generate_cases(mask[..., 0], affine, header, model, brain=brain)
    coarse = affine @ np.diag([2.0, 2.0, 2.0, 1.0])  # the affine decides the voxel size, not pixdim
    with pytest.raises(CaseError, match=r"^mask: voxel size 2 x 2 x 2 mm is not 1 mm"):
        generate.generate_cases(mask, coarse, header, model, brain=brain)
    with pytest.raises(ValueError, match="n_samples"):
        generate.generate_cases(mask, affine, header, model, n_samples=0, brain=brain)


def test_template_brain_on_the_brats_grid():
    """A bare BraTS-grid mask gets the template brain (coarse model: cheap)."""
    model = cvae.build_cvae(base_filters=4, latent_channels=2, depth=2, grid=cvae.CvaeGrid(factor=8))
    mask = np.zeros((240, 240, 155), np.uint8)
    mask[100:120, 110:130, 70:85] = ED
    brain = generate.template_brain(mask.shape)
    case = generate.generate_cases(mask, np.diag([-1.0, -1.0, 1.0, 1.0]), None, model)[0]
    inside = case.image[0] > 0
    assert inside.sum() > 0.95 * brain.sum()  # the brain is generated...
    assert np.all(case.image[:, ~(brain | (mask > 0))] == 0)  # ...and nothing outside it
    assert case.spacing == (1.0, 1.0, 1.0)  # no header given: a fresh one from the affine


def test_load_cvae_errors(tmp_path, model):
    with pytest.raises(ModelLoadError, match="not found"):
        generate.load_cvae(tmp_path / "missing.keras")
    bad = tmp_path / "bad.keras"
    bad.write_text("not a zip")
    with pytest.raises(ModelLoadError, match="not a Keras model file"):
        generate.load_cvae(bad)
    corrupt = tmp_path / "corrupt.keras"
    with zipfile.ZipFile(corrupt, "w") as zf:
        zf.writestr("config.json", "{broken")
    with pytest.raises(ModelLoadError, match="cannot load"):
        generate.load_cvae(corrupt)
    import keras

    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    other.save(tmp_path / "other.keras")
    with pytest.raises(ModelLoadError, match="not a conditional VAE"):
        generate.load_cvae(tmp_path / "other.keras")
    good = tmp_path / "cvae.keras"
    model.save(good)
    assert isinstance(generate.load_cvae(good), cvae.ConditionalVAE)
    assert generate.default_cvae_path().name == "cvae.keras"


@pytest.mark.parametrize("naming", ["2020", "2023"])
def test_cli_round_trip(tmp_path, model, geometry, naming, capsys):
    mask, brain, affine, header = geometry
    weights = tmp_path / "cvae.keras"
    model.save(weights)
    convention = "2023" if naming == "2020" else "2020"  # the input mask in the other convention
    mask_file = save_nifti(tmp_path / "mask.nii.gz", from_internal(mask, convention), affine, header, np.uint8)
    brain_file = save_nifti(tmp_path / "brain.nii.gz", brain.astype(np.uint8), affine, header)
    out = tmp_path / "out"
    status = generate_cli.main([str(mask_file), "-o", str(out), "--samples", "2", "--seed", "3", "--naming", naming,
                            "--weights", str(weights), "--brain", str(brain_file)])
    assert status == 0, capsys.readouterr().err
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folders) == 2
    for folder in folders:
        case = load_case(folder)
        assert case.naming == naming and case.label_convention in (naming, None)
        np.testing.assert_array_equal(case.seg, mask)
        np.testing.assert_allclose(case.affine, affine)
        assert np.all(case.image[:, ~brain] == 0) and np.all(case.image[:, brain] > 0)


def test_cli_reports_bad_input(tmp_path, model, geometry, capsys):
    mask, _, affine, header = geometry
    weights = tmp_path / "cvae.keras"
    model.save(weights)
    mask_file = save_nifti(tmp_path / "mask.nii.gz", mask, affine, header, np.uint8)
    status = generate_cli.main([str(mask_file), "-o", str(tmp_path / "out"), "--weights", str(weights)])
    assert status == 2
    assert "not the BraTS grid" in capsys.readouterr().err
    status = generate_cli.main([str(mask_file), "-o", str(tmp_path / "out"), "--weights", str(tmp_path / "none.keras")])
    assert status == 2 and "not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- augmentation experiment


def test_augment_experiment_tiny(tmp_path, model):
    """Both arms train and are scored per seed; the K+M arm holds the CVAE samples."""
    from core.io.case import save_case
    from tests.test_cvae import one_mm_toy_case
    from train import augment_experiment as exp

    real = tmp_path / "real"
    for i in range(3):
        save_case(one_mm_toy_case(40 + i, f"toy-{i}"), real)
    weights = tmp_path / "cvae.keras"
    model.save(weights)
    config = exp.ExperimentConfig(k=1, m=2, seeds=[0], steps=1, batch=1, patch=16, base=4, depth=2, real=str(real),
                                  cvae=str(weights), workers=0, work_dir=str(tmp_path / "work"), arms=["a", "b"])
    results = exp.run(config)
    assert len(results["per_seed"]) == 1
    for arm in exp.ARMS[:2]:
        for region in ("WT", "TC", "ET"):
            stats = results["summary"][arm][region]
            assert stats["mean"] == results["per_seed"][0][arm][region] and stats["std"] == 0.0
            assert 0.0 <= stats["mean"] <= 1.0
    augmented = sorted(p.name for p in (tmp_path / "work" / "seed0" / "k_m").iterdir())
    assert len(augmented) == 3 and sum(name.startswith("cvae-") for name in augmented) == 2
    sample = load_case(tmp_path / "work" / "seed0" / "k_m" / augmented[0])
    source = load_case(tmp_path / "work" / "seed0" / "k" / results["per_seed"][0]["k_cases"][0])
    np.testing.assert_array_equal(sample.seg, source.seg)  # sample 0: the K case's mask
    mirrored = load_case(tmp_path / "work" / "seed0" / "k_m" / augmented[1])
    np.testing.assert_array_equal(mirrored.seg, source.seg[::-1])  # second round: mirrored mask
    assert (tmp_path / "work" / "results.md").read_text().count("±") == 6


def test_augment_summary_is_mean_and_std_over_seeds():
    from train import augment_experiment as exp

    per_seed = [{arm: {"WT": w, "TC": 0.5, "ET": 0.0} for arm, w in zip(exp.ARMS, pair)}
                for pair in ((0.6, 0.7), (0.8, 0.9))]
    summary = exp.summarise(per_seed)
    assert summary[exp.ARMS[0]]["WT"]["mean"] == pytest.approx(0.7)
    assert summary[exp.ARMS[1]]["WT"]["std"] == pytest.approx(0.1)
    assert summary[exp.ARMS[0]]["TC"]["std"] == 0.0
    table = exp.format_table(summary, exp.ExperimentConfig(seeds=[0, 1]))
    assert "0.700 ± 0.100" in table and "0.800 ± 0.100" in table and "2 seeds" in table


def test_arm_reuse_key_names_the_generator_file_and_its_sampling_code(tmp_path, monkeypatch):
    """A finished arm is reused only while its generator's weights *and* the code that samples from them are
    unchanged; arms without a generator depend on neither."""
    from train import augment_experiment as exp

    assert all(path.is_file() for paths in exp.SAMPLING_SOURCES.values() for path in paths)
    weights, code = tmp_path / "insertion.keras", tmp_path / "texture.py"
    weights.write_bytes(b"weights v1")
    code.write_text("LEVEL = 1\n")
    monkeypatch.setitem(exp.SAMPLING_SOURCES, "c", (code,))
    config = exp.ExperimentConfig(insertion=str(weights))
    first, plain = exp.arm_settings(config, "c"), exp.arm_settings(config, "a")
    assert exp.arm_settings(config, "c") == first
    code.write_text("LEVEL = 2\n")
    after_code = exp.arm_settings(config, "c")
    assert after_code != first and after_code["insertion_sha256"] == first["insertion_sha256"]
    weights.write_bytes(b"weights v2")
    assert exp.arm_settings(config, "c")["insertion_sha256"] != first["insertion_sha256"]
    assert exp.arm_settings(config, "a") == plain and not any("sha256" in key for key in plain)


def test_shipped_cvae_gives_each_subregion_its_contrast():
    """Regression floor for weights/cvae.keras on a held-out phantom mask (skips without shipped weights)."""
    path = generate.default_cvae_path()
    if not path.is_file():
        pytest.skip(f"no shipped CVAE at {path}")
    from core.preprocessing.preprocess import brain_mask
    from core.synthesis.phantom import generate_phantom

    source = generate_phantom(1_100_000)
    brain = brain_mask(source.image)
    case = generate.generate_cases(source.seg, source.affine, source.header, generate.load_cvae(path), seed=0,
                                   brain=brain)[0]
    assert case.shape == source.shape and np.array_equal(case.affine, source.affine)
    assert np.array_equal(case.seg, source.seg)
    t1, t1ce, t2, flair = case.image
    healthy = brain & (case.seg == 0)

    def z(volume: np.ndarray, region: np.ndarray) -> float:
        return float((volume[region].mean() - volume[healthy].mean()) / volume[healthy].std())

    assert z(flair, case.seg == ED) > 1.0  # FLAIR-bright edema
    assert z(t1ce, case.seg == ET) > 1.0  # enhancing rim
    assert z(t1, case.seg == NCR) < -1.0  # dark necrosis on T1
    assert z(t2, case.seg == ED) > 0.5
