"""train.data sampling/augmentation, the train.unet CLI (incl. resume and 2 devices) and train.evaluate."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.io.case import save_case
from core.io.labels import ED, ET, NCR
from tests.test_inference import toy_case
from train import data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy_training_case() -> data.TrainingCase:
    return data.training_case(toy_case((40, 44, 36), seed=4)).index()


def test_training_case_is_cropped_to_the_brain_and_zscored(toy_training_case):
    case = toy_training_case
    assert case.image.dtype == np.float16 and case.labels.dtype == np.uint8
    assert case.image.shape[:3] == case.labels.shape and case.image.shape[3] == 4
    brain = np.any(case.image != 0, axis=-1)
    for axis in range(3):  # tight crop: the brain touches both ends of every axis
        others = tuple(a for a in range(3) if a != axis)
        profile = brain.any(axis=others)
        assert profile[0] and profile[-1]
    values = case.image[brain].astype(np.float64)
    np.testing.assert_allclose(values.mean(axis=0), 0, atol=0.02)
    np.testing.assert_allclose(values.std(axis=0), 1, atol=0.02)
    assert set(case.class_voxels) == {NCR, ED, ET}


def test_unaugmented_patch_is_the_exact_crop_with_zero_outside(toy_training_case, monkeypatch):
    case = toy_training_case
    centre = np.array([3, case.labels.shape[1] // 2, case.labels.shape[2] - 2])  # sticks out on axes 0 and 2
    monkeypatch.setattr(data, "_patch_centre", lambda *_: centre)
    image, labels = data.sample_patch(case, 24, np.random.default_rng(0), aug=data.NO_AUGMENTATION)
    assert image.shape == (24, 24, 24, 4) and labels.shape == (24, 24, 24) and image.dtype == np.float32
    padded_image = np.pad(case.image.astype(np.float32), [(24, 24)] * 3 + [(0, 0)])
    padded_labels = np.pad(case.labels, 24)
    window = tuple(slice(c - 12 + 24, c + 12 + 24) for c in centre)
    np.testing.assert_array_equal(image, padded_image[window])
    np.testing.assert_array_equal(labels, padded_labels[window])


def test_tumour_centred_patches_are_oversampled(toy_training_case):
    case = toy_training_case
    rng = np.random.default_rng(1)
    centre = (12, 12, 12)
    tumour_centred = [data.sample_patch(case, 24, rng, fg_fraction=1.0, aug=data.NO_AUGMENTATION)[1][centre] != 0
                      for _ in range(30)]
    assert all(tumour_centred)
    # class-balanced: ET and NCR (small) are picked as often as ED (large)
    picks = [case.labels[tuple(data._patch_centre(case, True, rng))] for _ in range(300)]
    counts = np.bincount(picks, minlength=4)[1:]
    assert counts.min() > 60


def test_crop_sticking_out_is_zero_padded():
    volume = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7) + 1
    patch = data._crop(volume, np.array([-2, 3, 4]), 4)
    np.testing.assert_array_equal(patch[2:, :3, :3], volume[0:2, 3:6, 4:7])
    assert not patch[:2].any() and not patch[:, 3:].any() and not patch[:, :, 3:].any()


def test_augmentation_changes_only_the_brain(toy_training_case):
    rng = np.random.default_rng(2)
    strong = data.AugmentConfig(p_noise=1, p_blur=1, p_brightness=1, p_contrast=1, p_gamma=1, p_scale_shift=1,
                                p_low_res=1, p_rotate_scale=1, p_flip=1)
    image, labels = data.sample_patch(toy_training_case, 32, rng, fg_fraction=1.0, aug=strong)
    assert np.isfinite(image).all()
    brain = np.any(image != 0, axis=-1)
    assert brain.any() and not brain.all()
    assert np.all(labels[~brain] == 0)
    plain = np.ones((16, 16, 16, 4), np.float32)
    mask = np.zeros((16, 16, 16), bool)
    mask[4:12, 4:12, 4:12] = True
    out = data.augment_intensity(plain * mask[..., None], mask, rng, strong)
    assert not out[~mask].any()
    assert not np.allclose(out[mask], 1.0)


def test_training_phantom_seeds_never_reach_the_validation_seeds():
    spec = data.ProducerSpec(seed=data.VALIDATION_SEED_START - 3)
    with pytest.raises(RuntimeError, match="validation"):
        data.make_case(spec, worker=1, workers=2, k=1, rng=np.random.default_rng(0))  # seed start + 3


class _CountingProducers:
    def __init__(self):
        self.made = 0

    def get(self, block=True, timeout=None):
        self.made += 1
        return data.TrainingCase(np.zeros((8, 8, 8, 4), np.float16), np.zeros((8, 8, 8), np.uint8), f"c{self.made}")


def test_pool_reuses_each_case_for_several_patches():
    producers = _CountingProducers()
    pool = data.CasePool(producers, pool_size=3, patches_per_case=5, min_cases=2)
    rng = np.random.default_rng(0)
    for _ in range(40):
        pool.draw(rng)
    # filled to 3 at once, then one new case per 5 draws
    assert len(pool.cases) == 3
    assert 3 + 40 // 5 - 1 <= producers.made <= 3 + 40 // 5 + 1


class _LateProducers(_CountingProducers):
    """Cases in a fixed order; a non-blocking ``get`` finds none ready on the draws in ``late``."""

    def __init__(self, late: set[int]):
        super().__init__()
        self.late, self.asked = late, 0

    def get(self, block=True, timeout=None):
        self.asked += 1
        if not block and self.asked in self.late:
            return None
        return super().get(block, timeout)


def _drawn_names(producers, wait_for_cases: bool) -> list[str]:
    pool = data.CasePool(producers, pool_size=3, patches_per_case=2, min_cases=2, wait_for_cases=wait_for_cases)
    rng = np.random.default_rng(7)
    return [pool.draw(rng).name for _ in range(30)]


def test_waiting_pool_draws_the_same_cases_however_late_the_producer_is():
    on_time, late = set(), {4, 5, 9, 12, 13}
    assert _drawn_names(_LateProducers(on_time), True) == _drawn_names(_LateProducers(late), True)
    # without waiting, a late producer changes which cases are drawn: what --reproducible removes
    assert _drawn_names(_LateProducers(on_time), False) != _drawn_names(_LateProducers(late), False)


def test_reproducible_needs_a_single_case_producer(tmp_path):
    from train import unet as train_unet

    with pytest.raises(SystemExit, match="--reproducible needs one case producer"):
        train_unet.main(["--data", "phantom", "--reproducible", "--workers", "2", "--base", "2", "--depth", "2",
                         "--steps", "1", "--val-every", "1", "--run-dir", str(tmp_path / "run")])


def test_steps_that_are_not_a_multiple_of_val_every_are_announced(tmp_path, capsys):
    from train import unet as train_unet

    args = ["--data", "phantom", "--base", "2", "--depth", "3", "--patch", "30", "--run-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit, match="--patch 30"):  # stops before building a model
        train_unet.main([*args, "--steps", "5", "--val-every", "4"])
    assert "--steps 5 is not a multiple of --val-every 4: training 8 steps" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--patch 30"):
        train_unet.main([*args, "--steps", "8", "--val-every", "4"])
    assert "not a multiple" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- CLIs


@pytest.fixture(scope="module")
def toy_cases_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cases")
    for i in range(2):
        save_case(toy_case((32, 36, 30), seed=10 + i, name=f"toy-{i}"), root, naming="2023" if i else "2020")
    save_case(dataclasses.replace(toy_case((32, 36, 30), seed=20), seg=None), root, name="unlabelled")
    return root


def _run(module: str, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


TINY = ["--batch", "2", "--patch", "16", "--base", "4", "--depth", "2", "--val-every", "1", "--pool", "2",
        "--patches-per-case", "2"]


def test_training_cli_writes_weights_card_and_resumes(tmp_path, toy_cases_dir):
    out, run_dir = tmp_path / "w" / "unet.keras", tmp_path / "run"

    def args(steps: int, val_cases: int) -> list[str]:
        return ["--data", str(toy_cases_dir), "--steps", str(steps), "--val-cases", str(val_cases),
                "--workers", "1", "--out", str(out), "--run-dir", str(run_dir), *TINY]

    # a producer process loads the cases; validation segments one held-out phantom (seed 1,000,000)
    proc = _run("train.unet", *args(2, 1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["step"] in (1, 2) and card["config"]["steps"] == 2 and card["backend"] == "tensorflow"
    assert [h["step"] for h in card["history"]] == [1, 2][: len(card["history"])]
    assert "train.unet" in card["command"] and np.isfinite(card["validation"]["loss"])
    assert set(card["validation"]["dice"]) == {"WT", "TC", "ET"} and "1000000" in card["validation"]["cases"]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["step"] == 2 and (run_dir / "checkpoint.keras").is_file()
    from core.segmentation.inference import load_model

    assert load_model(out).count_params() == card["params"]
    proc = _run("train.unet", *args(3, 0), "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["step"] == 3 and [h["step"] for h in state["history"]] == [1, 2, 3]


def _is_spawned_worker(process) -> bool:
    """Whether ``process`` is a multiprocessing spawn child (false for one that ended or is a zombie)."""
    import psutil

    try:
        return "spawn_main" in " ".join(process.cmdline())
    except psutil.Error:  # short-lived helpers (e.g. a zombie awaiting its parent) cannot be read
        return False


def test_sigterm_stops_the_case_producer_processes_too(tmp_path, toy_cases_dir):
    """A killed run (``kill PID``) must not leave its ``--workers`` case producers running."""
    import signal
    import time

    import psutil

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "train.unet", "--data", str(toy_cases_dir),
                             "--steps", "100000",
                             "--val-cases", "0", "--workers", "1", "--out", str(tmp_path / "unet.keras"),
                             "--run-dir", str(tmp_path / "run"), *TINY, "--val-every", "100000"],  # no validation
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        children: list = []
        while time.monotonic() < deadline and proc.poll() is None:
            children = [c for c in psutil.Process(proc.pid).children(recursive=True) if _is_spawned_worker(c)]
            if children and (tmp_path / "run").exists():
                break
            time.sleep(0.5)
        assert children, "the case producer never started: " + (proc.stderr.read()[-2000:] if proc.poll() else "")
        time.sleep(2)  # training under way
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # hung on the way out: SIGABRT makes faulthandler print every thread
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=30)
            pytest.fail("no exit within 60 s of SIGTERM; thread stacks:\n" + proc.stderr.read()[-6000:])
        assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read()[-3000:]
        _, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"orphaned: {[c.pid for c in alive]}"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_training_on_two_logical_cpu_devices(tmp_path, toy_cases_dir):
    out = tmp_path / "unet.keras"
    proc = _run("train.unet", "--data", str(toy_cases_dir), "--steps", "2", "--val-cases", "0", "--workers", "0",
                "--cpu-devices", "2", "--devices", "2", "--out", str(out), "--run-dir", str(tmp_path / "run"), *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["devices"] == 2 and "MirroredStrategy" in card["distribution"]
    assert np.isfinite(card["validation"]["loss"])


def test_evaluate_reports_dice_and_hd95_and_skips_unlabelled(tmp_path, toy_cases_dir):
    from core.segmentation import unet

    weights = tmp_path / "tiny.keras"
    unet.build_unet(base_filters=4, depth=2).save(weights)
    report_path = tmp_path / "report.json"
    proc = _run("train.evaluate", str(toy_cases_dir), "--out", str(report_path), "--weights", str(weights))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert sorted(c["case"] for c in report["cases"]) == ["toy-0", "toy-1"]
    assert [s["case"] for s in report["skipped"]] == ["unlabelled"]
    for c in report["cases"]:
        for region in ("WT", "TC", "ET"):
            assert 0.0 <= c[region]["dice"] <= 1.0 and c[region]["hd95"] >= 0.0
    assert report["mean"]["WT"]["dice"] == pytest.approx(np.mean([c["WT"]["dice"] for c in report["cases"]]))


def test_evaluate_selects_cases_and_reports_median_worst_and_lesion_wise(tmp_path, toy_cases_dir, capsys):
    from core.segmentation import unet
    from train import evaluate

    weights = tmp_path / "tiny.keras"
    unet.build_unet(base_filters=4, depth=2).save(weights)
    ids = tmp_path / "ids.txt"
    ids.write_text("# validation\ntoy-1\ntoy-0  # both\n")
    report_path = tmp_path / "report.json"
    assert evaluate.main([str(toy_cases_dir), "--cases", str(ids), "--out", str(report_path),
                          "--weights", str(weights)]) == 0
    report = json.loads(report_path.read_text())
    assert [c["case"] for c in report["cases"]] == ["toy-1", "toy-0"] and report["case_ids"] == ["toy-1", "toy-0"]
    dice = [c["WT"]["dice"] for c in report["cases"]]
    wt = report["summary"]["WT"]["dice"]
    assert wt["median"] == pytest.approx(np.median(dice)) and wt["worst"] == pytest.approx(min(dice))
    assert wt["worst_case"] == report["cases"][int(np.argmin(dice))]["case"]
    assert min(dice) - 1e-4 <= wt["mean_ci95"][0] <= wt["mean"] <= wt["mean_ci95"][1] <= max(dice) + 1e-4
    hd = [c["ET"]["hd95"] for c in report["cases"]]
    assert report["summary"]["ET"]["hd95"]["worst"] == pytest.approx(max(hd))
    for c in report["cases"]:
        assert 0.0 <= c["TC"]["lesion_dice"] <= 1.0 and c["TC"]["lesion_hd95"] >= 0.0
    printed = capsys.readouterr().out
    assert "**median**" in printed and "**mean, 95 % CI over cases**" in printed
    with pytest.raises(SystemExit, match="toy-9 not found"):
        evaluate.main([str(toy_cases_dir), "--cases", "toy-9", "--out", str(report_path), "--weights", str(weights)])


# ------------------------------------------------------------------- real data: mixing, validation split, phases
def test_data_spec_excludes_validation_cases_and_mixes_phantoms(toy_cases_dir):
    from train.common import DEFAULT_MIX_PHANTOM_FRACTION, data_spec

    spec = data_spec([str(toy_cases_dir)], 0, 1.0, exclude=["toy-0"])
    assert [Path(f).name for f in spec.folders] == ["toy-1"] and spec.phantom_fraction == 0.0
    mixed = data_spec([str(toy_cases_dir), "phantom"], 0, 1.0)
    assert len(mixed.folders) == 2 and mixed.phantom_fraction == DEFAULT_MIX_PHANTOM_FRACTION
    assert data_spec("phantom", 5, 1.0).folders == ()
    with pytest.raises(SystemExit, match="needs '--data phantom'"):
        data_spec([str(toy_cases_dir)], 0, 1.0, phantom_fraction=0.5)
    with pytest.raises(SystemExit, match="nothing left to train on"):
        data_spec([str(toy_cases_dir)], 0, 1.0, exclude=["toy-0", "toy-1"])


def test_mixed_producer_draws_phantoms_at_the_asked_rate_and_never_an_excluded_case(toy_cases_dir, monkeypatch):
    from train.common import data_spec

    spec = data_spec([str(toy_cases_dir), "phantom"], 0, 1.0, exclude=["toy-0"], phantom_fraction=0.3)
    rng = np.random.default_rng(0)
    draws = [spec.draws_phantom(rng) for _ in range(2000)]
    assert abs(np.mean(draws) - 0.3) < 0.04
    assert not any(data.ProducerSpec(seed=0).draws_phantom(rng) is False for _ in range(10))  # no folders: phantoms
    monkeypatch.setattr(data.ProducerSpec, "draws_phantom", lambda self, rng: False)
    names = {data.make_case(spec, 0, 1, k, rng).name for k in range(6)}
    assert names == {"toy-1"}


def test_rare_kinds_name_absent_enhancement_small_tumours_and_non_enhancing_cores():
    labels = np.zeros((60, 60, 60), np.uint8)
    labels[:40, :40, :20] = ED  # 32 mL of oedema
    labels[:10, :10, :10] = ET  # 1 mL ET, no NCR
    assert data.rare_kinds(labels) == ()
    labels[10:20, :10, :10] = NCR  # core: 1 mL NCR + 1 mL ET -> half non-enhancing
    assert data.rare_kinds(labels) == ("non-enhancing-core",)
    labels[labels == ET] = NCR
    assert data.rare_kinds(labels) == ("no-ET", "non-enhancing-core")
    assert data.rare_kinds(labels, voxel_ml=0.0005) == ("no-ET", "small", "non-enhancing-core")  # 16 mL


def test_rare_weight_draws_rare_cases_proportionally_more_often(toy_cases_dir, monkeypatch):
    from train.common import data_spec

    typical = np.zeros((40, 40, 40), np.uint8)
    typical[:10, :10, :10] = ET  # 1 mL ET, no NCR
    typical[:35, :35, :35][typical[:35, :35, :35] == 0] = ED  # 43 mL: not small
    no_et = np.where(typical == ET, NCR, typical).astype(np.uint8)
    monkeypatch.setattr(data, "reference_labels", lambda f: (no_et if Path(f).name == "toy-0" else typical, 0.001))
    uniform = data_spec([str(toy_cases_dir)], 0, 1.0)
    assert uniform.weights == ()
    kinds = {Path(f).name: data.rare_kinds(data.reference_labels(f)[0]) for f in uniform.folders}
    assert kinds == {"toy-0": ("no-ET", "non-enhancing-core"), "toy-1": ()}
    spec = data_spec([str(toy_cases_dir)], 0, 1.0, rare_weight=3.0)
    assert sorted(spec.weights) == [1.0, 3.0]
    rng = np.random.default_rng(1)
    draws = [Path(spec.draw_folder(rng)).name for _ in range(4000)]
    assert abs(draws.count("toy-0") / len(draws) - 0.75) < 0.03
    with pytest.raises(SystemExit, match="rare-weight"):
        data_spec([str(toy_cases_dir)], 0, 1.0, rare_weight=0.0)
    with pytest.raises(ValueError, match="one positive weight per folder"):
        data.ProducerSpec(folders=("a", "b"), weights=(1.0,))


def test_read_case_ids_from_text_or_file(tmp_path):
    from train.common import read_case_ids
    from train.unet import parse_val_cases

    ids = tmp_path / "val.txt"
    ids.write_text("# split\nA_1\n\nB-2  # comment\n")
    assert read_case_ids(str(ids)) == ["A_1", "B-2"]
    assert read_case_ids("A_1, B-2") == ["A_1", "B-2"]
    assert parse_val_cases("4") == 4 and parse_val_cases(0) == 0 and parse_val_cases("A_1") == ["A_1"]
    with pytest.raises(SystemExit, match="no case id"):
        read_case_ids(" , ")
    many = [f"BraTS2021_{i:05d}" for i in range(40)]  # longer than a file name may be
    assert read_case_ids(",".join(many)) == many


def test_elastic_patch_without_displacement_is_the_plain_crop(toy_training_case):
    case = toy_training_case
    centre = np.array(case.labels.shape) // 2
    # the warped patch is centred between voxels ((size - 1) / 2); half a voxel back gives the crop's grid
    image, labels = data._elastic_patch(case, centre - 0.5, 16, np.eye(3), np.zeros((3, 16, 16, 16)))
    start = centre - 8
    np.testing.assert_allclose(image, data._crop(case.image, start, 16).astype(np.float32), atol=1e-6)
    np.testing.assert_array_equal(labels, data._crop(case.labels, start, 16))
    field = data._displacement_field(16, 8, 3.0, np.random.default_rng(0))
    assert field.shape == (3, 16, 16, 16) and 1.0 < field.std() < 6.0
    moved, moved_labels = data._elastic_patch(case, centre - 0.5, 16, np.eye(3), field)
    assert not np.allclose(moved, image) and set(np.unique(moved_labels)) <= set(np.unique(case.labels))


def test_real_data_augmentation_keeps_background_zero_and_applies_a_smooth_bias_field(toy_training_case):
    bias = data._bias_field((20, 20, 20), 0.3, np.random.default_rng(3))
    assert (bias > 0).all() and bias.std() > 0.01
    assert np.abs(np.diff(np.log(bias), axis=0)).max() < 0.2  # smooth: small change between neighbours
    strong = dataclasses.replace(data.REAL_DATA_AUGMENTATION, p_elastic=1.0, p_bias=1.0)
    image, labels = data.sample_patch(toy_training_case, 32, np.random.default_rng(5), 1.0, strong)
    brain = np.any(image != 0, axis=-1)
    assert np.isfinite(image).all() and brain.any() and not brain.all()
    assert np.all(labels[~brain] == 0)


def test_region_training_on_real_validation_ids_in_phases(tmp_path, toy_cases_dir):
    from core.segmentation import unet

    init = tmp_path / "classes.keras"
    unet.build_unet(base_filters=4, depth=2).save(init)
    out, run_dir = tmp_path / "w" / "unet.keras", tmp_path / "run"
    args = ["--data", str(toy_cases_dir), "--data", "phantom", "--phantom-fraction", "0.5", "--val-cases", "toy-1",
            "--regions", "--precision", "mixed_bfloat16", "--init", str(init), "--steps", "4", "--workers", "0",
            "--ema", "0.9", "--out", str(out), "--run-dir", str(run_dir), *TINY]
    proc = _run("train.unet", *args, "--stop-at", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training_cases"] == ["toy-0"] and card["phantom_fraction"] == 0.5
    assert "toy-1" in card["validation"]["cases"] and set(card["validation"]["dice"]) == {"WT", "TC", "ET"}
    assert card["architecture"]["dtype_policy"] == "mixed_bfloat16" and "sigmoid" in card["architecture"]["outputs"]
    assert card["init"]["fresh_layers"] == ["region_head"] and card["config"]["ema"] == 0.9
    assert json.loads((run_dir / "state.json").read_text())["step"] == 2  # stopped at 2 of 4
    proc = _run("train.unet", *args, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "state.json").read_text())["step"] == 4
    from core.segmentation.inference import load_model

    assert unet.is_region_model(load_model(out))


def test_tune_postprocess_reports_the_best_grid_point(tmp_path, toy_cases_dir):
    from core.segmentation import unet
    from train import tune_postprocess

    weights = tmp_path / "regions.keras"
    unet.build_unet(base_filters=4, depth=2, regions=True).save(weights)
    out = tmp_path / "pp.json"
    assert tune_postprocess.main([str(toy_cases_dir), "--cases", "toy-0,toy-1", "--weights", str(weights),
                                  "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["region_model"] and report["cases"] == ["toy-0", "toy-1"]
    assert len(report["all"]) == int(np.prod([len(v) for v in tune_postprocess.GRID.values()]))
    assert report["best"]["mean_dice"] == pytest.approx(max(r["mean_dice"] for r in report["all"]))
    assert report["defaults"]["params"] == tune_postprocess.DEFAULTS


def test_tune_postprocess_grid_option_varies_only_the_named_knob(tmp_path, toy_cases_dir):
    from core.segmentation import unet
    from train import tune_postprocess

    weights = tmp_path / "regions.keras"
    unet.build_unet(base_filters=4, depth=2, regions=True).save(weights)
    out = tmp_path / "et.json"
    assert tune_postprocess.main([str(toy_cases_dir), "--cases", "toy-0", "--weights", str(weights),
                                  "--grid", "min_et_ml=0,2.5", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["params"]["min_et_ml"] for r in report["all"]] == [0.0, 2.5]
    fixed = {k: v for k, v in tune_postprocess.DEFAULTS.items() if k != "min_et_ml"}
    assert all({k: r["params"][k] for k in fixed} == fixed for r in report["all"])
    assert report["defaults"] is None  # the default 0.5 mL is not among the values searched
    with pytest.raises(SystemExit, match="unknown key"):
        tune_postprocess.parse_grid(["min_et=1"])
    with pytest.raises(SystemExit, match="give numbers"):
        tune_postprocess.parse_grid(["min_et_ml=a"])


def test_soup_averages_the_weights_and_refuses_another_architecture(tmp_path):
    from core.segmentation import unet
    from core.segmentation.inference import load_model
    from train import soup

    import keras

    paths = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        model = unet.build_unet(base_filters=4, depth=2, regions=True)
        paths.append(tmp_path / f"m{seed}.keras")
        model.save(paths[-1])
    out = tmp_path / "soup" / "soup.keras"
    assert soup.main(["-o", str(out), *map(str, paths)]) == 0
    averaged = load_model(out).get_weights()
    a, b = (load_model(p).get_weights() for p in paths)
    assert any(not np.allclose(x, y) for x, y in zip(a, b))  # the ingredients differ
    for x, y, z in zip(a, b, averaged):
        np.testing.assert_allclose(z, (x + y) / 2, rtol=1e-6, atol=1e-7)
    card = json.loads(out.with_suffix(".json").read_text())
    assert [i["path"] for i in card["ingredients"]] == [str(p) for p in paths]
    other = tmp_path / "wide.keras"
    unet.build_unet(base_filters=8, depth=2, regions=True).save(other)
    with pytest.raises(SystemExit, match="different architecture"):
        soup.main(["-o", str(tmp_path / "bad.keras"), str(paths[0]), str(other)])


def test_soup_averages_insertion_models_and_refuses_a_unet_among_them(tmp_path):
    from core.segmentation import unet
    from core.synthesis.insert import load_insertion_model
    from core.synthesis.vaegan import build_insertion_model
    from train import soup

    paths = []
    for seed in (1, 2):
        paths.append(tmp_path / f"ins{seed}.keras")
        build_insertion_model(4, 2, seed=seed, upsampling="linear").save(paths[-1])
    out = tmp_path / "ins_soup.keras"
    assert soup.main(["-o", str(out), *map(str, paths)]) == 0
    a, b = (load_insertion_model(p).get_weights() for p in paths)
    assert any(not np.allclose(x, y) for x, y in zip(a, b))
    for x, y, z in zip(a, b, load_insertion_model(out).get_weights()):
        np.testing.assert_allclose(z, (x + y) / 2, rtol=1e-6, atol=1e-7)
    assert "insertion VAE-GANs" in json.loads(out.with_suffix(".json").read_text())["model"]
    net = tmp_path / "unet.keras"
    unet.build_unet(base_filters=4, depth=2, regions=True).save(net)
    with pytest.raises(SystemExit, match="different architecture"):
        soup.main(["-o", str(tmp_path / "bad.keras"), str(paths[0]), str(net)])


def test_ensemble_averages_the_members_outputs_in_one_safe_file(tmp_path):
    from core.segmentation import unet
    from core.segmentation.inference import load_model, segment_case
    from tests.test_inference import toy_case
    from train import ensemble

    import keras

    paths = []
    for seed, depth in ((1, 2), (2, 3)):  # members may differ in architecture (here: depth)
        keras.utils.set_random_seed(seed)
        paths.append(tmp_path / f"m{seed}.keras")
        unet.build_unet(base_filters=4, depth=depth, regions=True).save(paths[-1])
    out = tmp_path / "ens" / "ens.keras"
    assert ensemble.main(["-o", str(out), *map(str, paths)]) == 0
    model = load_model(out)  # safe_mode: built-in layers only
    assert unet.size_multiple(model) == 4 and unet.is_region_model(model)  # the deeper member's multiple
    x = np.random.default_rng(0).normal(size=(1, 8, 12, 16, 4)).astype(np.float32)
    a, b = (np.asarray(load_model(p).predict_on_batch(x)) for p in paths)
    assert not np.allclose(a, b)
    np.testing.assert_allclose(np.asarray(model.predict_on_batch(x)), (a + b) / 2, atol=1e-6)
    labels = segment_case(toy_case((20, 22, 18), seed=3), model, postprocess=False).labels
    assert labels.shape == (20, 22, 18)  # padded to the multiple 4 and cropped back
    card = json.loads(out.with_suffix(".json").read_text())
    assert [m["path"] for m in card["members"]] == [str(p) for p in paths]
    classes = tmp_path / "classes.keras"
    unet.build_unet(base_filters=4, depth=2).save(classes)
    with pytest.raises(SystemExit, match="output channels"):
        ensemble.main(["-o", str(tmp_path / "bad.keras"), str(paths[0]), str(classes)])


def test_ema_export_is_the_moving_average_of_the_training_weights():
    from core.segmentation.unet import build_unet
    from train.unet import averaged_weights, compile_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 16, 16, 16, 4)).astype(np.float32)
    y = (rng.random((1, 16, 16, 16)) < 0.3).astype(np.int32)
    momentum = 0.5
    model = compile_model(build_unet(base_filters=4, depth=2), lr=1e-2, steps=10, ema=momentum)
    assert [a.shape for a in averaged_weights(model)] == [w.shape for w in model.get_weights()]
    trainable = [i for i, v in enumerate(model.weights) if v.trainable]
    expected = None
    for _ in range(3):
        model.train_on_batch(x, y)
        current = model.get_weights()
        # Keras: the first step's average is the weights themselves, then avg = m * avg + (1 - m) * w
        expected = current if expected is None else [momentum * e + (1 - momentum) * c
                                                     for e, c in zip(expected, current)]
    averaged = averaged_weights(model)
    for i in trainable:
        np.testing.assert_allclose(averaged[i], expected[i], rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(averaged[i], current[i]) for i in trainable)  # not the raw weights
    np.testing.assert_array_equal(model.get_weights()[trainable[0]], current[trainable[0]])  # training untouched

    plain = compile_model(build_unet(base_filters=4, depth=2), lr=1e-2, steps=10)
    plain.train_on_batch(x, y)
    for a, w in zip(averaged_weights(plain), plain.get_weights()):
        np.testing.assert_array_equal(a, w)
    with pytest.raises(SystemExit, match="--ema"):
        compile_model(build_unet(base_filters=4, depth=2), lr=1e-2, steps=10, ema=1.0)


def test_fade_lesion_lowers_tumour_contrast_and_leaves_the_rest():
    """Faded tumours keep a share of their contrast to the healthy median; far tissue and labels are untouched."""
    from train.data import AugmentConfig, fade_lesion

    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 0.1, (32, 32, 32, 2)).astype(np.float32)
    labels = np.zeros((32, 32, 32), np.uint8)
    labels[12:20, 12:20, 12:20] = 2
    image[labels > 0] += 3.0
    brain = np.ones(labels.shape, bool)
    before = image.copy()
    aug = AugmentConfig(lesion_contrast=(0.25, 0.25))
    fade_lesion(image, labels, brain, rng, aug)
    contrast = image[labels > 0].mean(axis=0) - np.median(image[labels == 0], axis=0)
    np.testing.assert_allclose(contrast, 0.25 * 3.0, atol=0.05)
    far = np.ones(labels.shape, bool)
    far[4:28, 4:28, 4:28] = False
    np.testing.assert_array_equal(image[far], before[far])
    empty = np.zeros_like(labels)
    again = before.copy()
    np.testing.assert_array_equal(fade_lesion(again, empty, brain, rng, aug), before)
