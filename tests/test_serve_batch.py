"""serve.batch: three small cases (and one broken) segmented on a local Ray with a tiny U-Net; resumable."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from core.io.case import save_case
from core.segmentation import unet
from serve import batch
from tests.test_serve_api import AFFINE, SHAPE, small_case

import keras  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_unet(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("batch_weights") / "unet.keras"
    keras.utils.set_random_seed(0)
    unet.build_unet(base_filters=2, depth=2).save(path)
    return path


@pytest.fixture()
def cases_root(tmp_path) -> Path:
    """Three good cases (the last without a reference seg) and one without its flair file."""
    root = tmp_path / "cases"
    for i in range(3):
        case = small_case(f"BraTS-Toy-{i:03d}", seed=i)
        if i == 2:
            case.seg = None
        save_case(case, root, naming="2023")
    broken = save_case(small_case("BraTS-Toy-bad", seed=9), root, naming="2023")
    (broken / "BraTS-Toy-bad-t2f.nii.gz").unlink()
    return root


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def test_plan_finds_cases_and_skips_done_ones(cases_root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    todo, done = batch.plan(cases_root, out)
    assert [p.name for p in todo] == ["BraTS-Toy-000", "BraTS-Toy-001", "BraTS-Toy-002", "BraTS-Toy-bad"]
    batch.seg_path(out, "BraTS-Toy-001").write_bytes(b"x")
    todo, done = batch.plan(cases_root, out)
    assert [p.name for p in done] == ["BraTS-Toy-001"] and len(todo) == 3
    # Asked for probabilities too, a case is done only once its probability map exists as well.
    assert [p.name for p in batch.plan(cases_root, out, probabilities=True)[1]] == []
    batch.prob_path(out, "BraTS-Toy-001").write_bytes(b"x")
    assert [p.name for p in batch.plan(cases_root, out, probabilities=True)[1]] == ["BraTS-Toy-001"]
    assert batch.find_cases(cases_root / "BraTS-Toy-000") == [cases_root / "BraTS-Toy-000"]


def test_batch_on_local_ray_then_resume(cases_root, tmp_path, tiny_unet, capsys):
    import ray

    out = tmp_path / "out"
    argv = [str(cases_root), "-o", str(out), "--weights", str(tiny_unet), "--workers", "1", "--cpus-per-worker", "1",
            "--labels", "2023", "--probabilities", "--quiet", "--force"]  # toy cases are crops: forced
    assert batch.main(argv) == 1  # one case failed, the others were segmented
    assert not ray.is_initialized()  # the local Ray it started is shut down
    printed = capsys.readouterr().out
    assert "segmented 3 case(s), 1 failed (BraTS-Toy-bad" in printed
    rows = read_csv(out / batch.RESULTS)
    assert sorted(rows) == ["BraTS-Toy-000", "BraTS-Toy-001", "BraTS-Toy-002", "BraTS-Toy-bad"]
    assert rows["BraTS-Toy-bad"]["status"] == "error" and "missing flair" in rows["BraTS-Toy-bad"]["error"]
    for name in ("BraTS-Toy-000", "BraTS-Toy-001", "BraTS-Toy-002"):
        row = rows[name]
        assert row["status"] == "ok" and row["seg_file"] == f"{name}_seg.nii.gz"
        image = nib.load(out / row["seg_file"])
        np.testing.assert_array_equal(image.affine, AFFINE)
        data = np.asanyarray(image.dataobj)
        assert data.dtype == np.uint8 and data.shape == SHAPE
        assert float(row["WT_ml"]) == pytest.approx(np.count_nonzero(data) / 1000, abs=1e-3)
        prob = nib.load(batch.prob_path(out, name))
        np.testing.assert_array_equal(prob.affine, AFFINE)
        values = prob.get_fdata()
        assert values.shape == (*SHAPE, 3) and 0.0 <= values.min() and values.max() <= 1.0 + 1e-6  # float32 slope
        assert np.all(values[..., 0] >= values[..., 1] - 1e-2)  # WT >= TC (to the 1/255 storage step)
    assert not batch.prob_path(out, "BraTS-Toy-bad").exists()
    assert 0.0 <= float(rows["BraTS-Toy-000"]["dice_WT"]) <= 1.0
    assert rows["BraTS-Toy-002"]["dice_WT"] == ""  # no reference seg in that folder
    assert "not a whole-brain volume" in rows["BraTS-Toy-000"]["warnings"]  # the CLI's checks ran
    assert not list(out.glob("*.part"))
    # Resume on a "cluster" reached by address (a Ray started here, the CLI in another process and folder): the
    # three done cases are skipped, the fixed one is segmented by a worker that got the code through py_modules.
    save_case(small_case("BraTS-Toy-bad", seed=9), cases_root, naming="2023")
    context = ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cli = subprocess.run([sys.executable, "-m", "serve.batch", *argv, "--address",
                              context.address_info["gcs_address"]], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
    finally:
        ray.shutdown()
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "segmented 1 case(s), skipped 3 already done" in cli.stdout
    rows = read_csv(out / batch.RESULTS)
    assert len(rows) == 4 and rows["BraTS-Toy-bad"]["status"] == "ok" and rows["BraTS-Toy-bad"]["error"] == ""
    assert (out / "BraTS-Toy-bad_seg.nii.gz").is_file() and batch.prob_path(out, "BraTS-Toy-bad").is_file()
    assert not list(out.glob("*.part"))


def test_bad_arguments_exit_2(tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert batch.main([str(tmp_path / "nope"), "-o", str(tmp_path / "out")]) == 2
    assert "not a folder" in capsys.readouterr().err
    root = tmp_path / "root"
    save_case(small_case("c1"), root, naming="2020")
    assert batch.main([str(root), "-o", str(tmp_path / "out"), "--weights", str(tmp_path / "none.keras")]) == 2
    assert "U-Net weights not found" in capsys.readouterr().err
    weights = tmp_path / "w.keras"
    weights.write_bytes(b"PK")  # read as bytes only; never loaded, the connection fails first
    assert not ray.is_initialized()  # and no cluster runs here: "auto" finds nothing
    assert batch.main([str(root), "-o", str(tmp_path / "out"), "--weights", str(weights), "--address", "auto"]) == 2
    assert "cannot start or reach the Ray cluster at auto" in capsys.readouterr().err


def _one_case_root(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    save_case(small_case("c1"), root, naming="2020")
    weights = tmp_path / "w.keras"
    weights.write_bytes(b"PK")  # read as bytes only; never loaded: the connection fails first
    return root, weights


@pytest.mark.parametrize("address", ["ray://127.0.0.1:{port}", "127.0.0.1:{port}"])
def test_bad_address_fails_within_30_s_with_a_clear_message(tmp_path, capsys, address):
    from bench.server import free_port

    root, weights = _one_case_root(tmp_path)
    address = address.format(port=free_port())  # nobody listens there: refused at once, before Ray retries
    start = time.monotonic()
    assert batch.main([str(root), "-o", str(tmp_path / "out"), "--weights", str(weights), "--address", address]) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert f"cannot reach the Ray cluster at {address}" in err and "ray://HEAD:10001" in err
    assert "Traceback" not in err


def test_local_mode_starts_its_own_ray_and_removes_its_temp_folder(tmp_path, monkeypatch):
    """Without --address it never joins a running cluster (address='local'), and its temp folder goes away."""
    import ray

    seen: dict = {}

    def fake_init(**kwargs):
        seen.update(kwargs)
        assert Path(kwargs["_temp_dir"]).is_dir() and len(kwargs["_temp_dir"]) < 60  # socket paths stay short
        raise RuntimeError("no Ray here")

    monkeypatch.setattr(ray, "init", fake_init)
    root, weights = _one_case_root(tmp_path)
    with pytest.raises(batch.BatchError, match="cannot start or reach a local Ray"):
        batch.run_batch(root, tmp_path / "out", weights=weights, progress=False)
    assert seen["address"] == "local" and not Path(seen["_temp_dir"]).exists()


def test_interrupt_exits_130_without_traceback(tmp_path, capsys, monkeypatch):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "run_batch", interrupted)
    root, weights = _one_case_root(tmp_path)
    assert batch.main([str(root), "-o", str(tmp_path / "out"), "--weights", str(weights)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "run the same command again" in err and "Traceback" not in err
    import signal

    assert signal.getsignal(signal.SIGTERM) is not batch._interrupt  # the handler is put back
