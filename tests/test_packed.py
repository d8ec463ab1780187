"""Packed training cases (train.packed) and parallel patch sampling (train.data.ParallelPatches)."""

from __future__ import annotations

import functools
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_inference import toy_case
from train import data, packed

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy_training_cases() -> list[data.TrainingCase]:
    return [data.training_case(toy_case((40, 44, 36), seed=30 + i, name=f"toy-{i}")) for i in range(2)]


@pytest.fixture(scope="module")
def packed_dir(tmp_path_factory, toy_training_cases) -> Path:
    root = tmp_path_factory.mktemp("packed")
    for case in toy_training_cases:
        packed.pack_case(case.image, case.labels, case.name, root / f"{case.name}{packed.SUFFIX}")
    return root


def test_round_trip_keeps_labels_background_and_error_within_half_a_step(packed_dir, toy_training_cases):
    for case in toy_training_cases:
        image, labels, name = packed.load_packed(packed_dir / f"{case.name}{packed.SUFFIX}")
        assert name == case.name and image.dtype == np.float16 and image.shape == case.image.shape
        np.testing.assert_array_equal(labels, case.labels)
        original = case.image.astype(np.float32)
        inside = original != 0
        np.testing.assert_array_equal(image != 0, inside)  # background exactly 0, brain never 0
        codes, ranges = packed.quantise(case.image)
        step = (ranges[:, 1] - ranges[:, 0]) / (packed.DEFAULT_LEVELS - 1)
        error = np.abs(image.astype(np.float32) - original)
        for c in range(original.shape[-1]):
            lo, hi = ranges[c]
            within = inside[..., c] & (original[..., c] >= lo) & (original[..., c] <= hi)
            # half a step plus float16 rounding of the reconstructed value
            assert error[..., c][within].max() <= step[c] / 2 + 0.01 * max(abs(lo), abs(hi))
        assert 0.0 < float(np.sqrt(np.mean(error[inside] ** 2))) < step.max() / 2


def test_more_levels_mean_smaller_error(toy_training_cases):
    image = toy_training_cases[0].image
    inside = image != 0

    def rms(levels: int) -> float:
        codes, ranges = packed.quantise(image, levels)
        back = packed.dequantise(codes, ranges, levels).astype(np.float32)
        return float(np.sqrt(np.mean((back[inside] - image.astype(np.float32)[inside]) ** 2)))

    assert rms(200) < rms(40) < rms(8)
    with pytest.raises(ValueError, match="levels"):
        packed.quantise(image, 1)


def test_a_packed_folder_is_a_data_folder_and_ids_exclude_cases(packed_dir):
    from train.common import data_spec, labelled_case_folders

    data.find_labelled_cases.cache_clear()
    found = labelled_case_folders(str(packed_dir))
    assert [data.case_id(f) for f in found] == ["toy-0", "toy-1"]
    spec = data_spec([str(packed_dir)], 0, 1.0, exclude=["toy-1"])
    assert [data.case_id(f) for f in spec.folders] == ["toy-0"]
    case = data.make_case(spec, 0, 1, 0, np.random.default_rng(0))
    assert case.name == "toy-0" and case.image.dtype == np.float16


def test_a_damaged_packed_file_names_itself_and_the_fix(tmp_path):
    bad = tmp_path / f"broken{packed.SUFFIX}"
    bad.write_bytes(lzma.compress(b"not an npz"))
    with pytest.raises(ValueError, match=r"broken\.tcase\.xz.*python -m train\.packed"):
        packed.load_packed(bad)


@pytest.mark.parametrize("shared", [True, False])
def test_parallel_patches_come_from_every_worker_in_shape(packed_dir, shared):
    spec = data.ProducerSpec(tuple(str(f) for f in data.find_labelled_cases(str(packed_dir))), seed=3)
    stream = functools.partial(data.patch_stream, size=16, seed=5, fg_fraction=1.0, aug=data.NO_AUGMENTATION)
    shapes = ((16, 16, 16, 4), (16, 16, 16)) if shared else None
    with data.ParallelPatches(spec, 2, pool_size=2, patches_per_case=4, stream=stream, shapes=shapes) as patches:
        items = [next(patches) for _ in range(12)]
        ring = patches._ring
        assert (ring is not None) == shared
    for image, labels in items:
        assert image.shape == (16, 16, 16, 4) and image.dtype == np.float32
        assert labels.shape == (16, 16, 16) and labels.dtype == np.uint8 and labels.max() <= 3
        assert labels.any()  # fg_fraction 1: centred on tumour
    assert len({image.tobytes() for image, _ in items}) > 6  # the workers' streams differ
    if shared:
        assert not Path(f"/dev/shm/{ring.name}").exists()  # unlinked on close


def test_training_from_packed_cases_with_parallel_samplers_keeps_every_export(tmp_path, packed_dir):
    run_dir, out = tmp_path / "run", tmp_path / "unet.keras"
    args = ["--data", str(packed_dir), "--val-cases", "0", "--steps", "2", "--val-every", "1", "--batch", "2",
            "--patch", "16", "--base", "4", "--depth", "2", "--pool", "2", "--patches-per-case", "2",
            "--patch-workers", "2", "--keep-exports", "--run-dir", str(run_dir), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "train.unet", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in run_dir.glob("export_step*.keras")) == ["export_step000001.keras",
                                                                         "export_step000002.keras"]
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training_cases"] == ["toy-0", "toy-1"] and card["config"]["patch_workers"] == 2
    assert "parallel patches: " in proc.stderr


def test_a_consumer_waiting_on_a_stalled_prefetcher_is_released_by_close():
    """tf.data calls ``next`` from its own thread; after a SIGTERM's cleanup that call must return, or the
    interpreter can hang at exit waiting for it."""
    import threading

    release = threading.Event()

    def stalls_after_one():
        yield 1
        release.wait(30)  # a source that has nothing more to give (its producers were stopped)
        yield 2

    prefetched = data.Prefetcher(stalls_after_one(), buffer=2)
    assert next(prefetched) == 1
    outcome: list = []
    consumer = threading.Thread(target=lambda: outcome.append(next(prefetched, "ended")), daemon=True)
    consumer.start()
    consumer.join(1.0)
    assert consumer.is_alive()  # waiting: the source stalls
    prefetched.close()
    consumer.join(3.0)
    release.set()
    assert not consumer.is_alive() and outcome == ["ended"]


def test_parallel_patches_end_their_stream_once_closed(packed_dir):
    spec = data.ProducerSpec(tuple(str(f) for f in data.find_labelled_cases(str(packed_dir))), seed=3)
    stream = functools.partial(data.patch_stream, size=16, seed=5, fg_fraction=1.0, aug=data.NO_AUGMENTATION)
    patches = data.ParallelPatches(spec, 1, pool_size=2, patches_per_case=4, stream=stream,
                                   shapes=((16, 16, 16, 4), (16, 16, 16)))
    with patches:
        next(patches)
    assert next(patches, "ended") == "ended"
