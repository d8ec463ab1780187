"""docs/experiments/scripts/probe_report.py (trial scaffolding, moved out of train/ in issue 39): validation Dice
against the CPU-hours each side-by-side run used."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "experiments" / "scripts" / "probe_report.py"
_spec = importlib.util.spec_from_file_location("probe_report", _SCRIPT)
probe_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe_report)
main, run_report = probe_report.main, probe_report.run_report


def _run(tmp_path: Path, name: str, cpu_s: float | None, means: list[float]) -> Path:
    run = tmp_path / name
    run.mkdir()
    history = [{"step": 100 * (i + 1), "wall_time_s": 600.0 * (i + 1), "median_step_s": 3.0,
                "val_dice": {"WT": m + 0.1, "TC": m, "ET": m - 0.1}, "val_mean_dice": m}
               for i, m in enumerate(means)]
    history.insert(1, {"step": 150, "wall_time_s": 900.0, "loss": 0.5})  # a training-only row is skipped
    (run / "state.json").write_text(json.dumps({"history": history, "step": 100 * len(means),
                                                "wall_time_s": 600.0 * len(means), "command": "x"}))
    if cpu_s is not None:
        (run / "time.json").write_text(json.dumps({"cpu_user_s": cpu_s - 100, "cpu_system_s": 100,
                                                   "wall_s": 600.0 * (len(means) + 1), "max_rss_kb": 2 ** 21}))
    return run


def test_cpu_hours_scale_with_each_step_share_of_the_run_steps(tmp_path: Path) -> None:
    # 2 CPU-hours over 300 steps; the wall clock is uneven (the first validation came late: shared machine), so a
    # wall-time share would say 0.75 CPU-h at step 100 instead of a third of the run's compute
    run = _run(tmp_path, "a", cpu_s=7200.0, means=[0.5, 0.7, 0.6])
    state = json.loads((run / "state.json").read_text())
    state["history"][0]["wall_time_s"] = 1350.0
    (run / "state.json").write_text(json.dumps(state))
    report = run_report(run)
    assert [c["step"] for c in report["curve"]] == [100, 200, 300]
    assert [c["cpu_h"] for c in report["curve"]] == pytest.approx([2 / 3, 4 / 3, 2.0], abs=1e-3)
    assert report["best"]["step"] == 200
    assert report["best_mean_dice_per_cpu_h"] == pytest.approx(0.7 / (4 / 3), abs=1e-3)
    assert report["max_rss_gb"] == 2.0


def test_without_timing_cpu_hours_are_unknown_not_invented(tmp_path: Path) -> None:
    run = _run(tmp_path, "b", cpu_s=None, means=[0.4])
    report = run_report(run)
    assert report["curve"][0]["cpu_h"] is None and report["best_mean_dice_per_cpu_h"] is None
    (run / "time.json").write_text("")  # a run still going: /usr/bin/time has only created the file
    assert run_report(run)["curve"][0]["cpu_h"] is None


def test_architecture_comes_from_the_run_card(tmp_path: Path) -> None:
    run = _run(tmp_path, "d", 3600.0, [0.3])
    assert run_report(run)["depth"] is None  # no card yet: unknown, not a default
    (run / "unet.json").write_text(json.dumps({"params": 5647715, "config": {"base": 16, "depth": 5, "patch": 96}}))
    report = run_report(run)
    assert (report["base"], report["depth"], report["patch"], report["params"]) == (16, 5, 96, 5647715)


def test_cli_writes_json_and_names_a_folder_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.json"
    assert main([str(_run(tmp_path, "c", 3600.0, [0.3, 0.35])), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["runs"]["c"]["best"]["step"] == 200
    assert "depth None patch None" in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 2
    assert "missing/state.json" in capsys.readouterr().err
