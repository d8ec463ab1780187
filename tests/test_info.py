"""core.info: the case summary and its CLI (JSON, table, clean errors)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.info import case_info, format_info
from core.io.case import load_case
from tests.conftest import ROOT
from tests.test_case import SHAPE, SPACING, internal_labels, write_case


def run_info(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.info", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def expected_volumes() -> dict[str, float]:
    labels, voxel_ml = internal_labels(), float(np.prod(SPACING)) / 1000
    return {
        "WT": np.count_nonzero(labels > 0) * voxel_ml,
        "TC": np.count_nonzero((labels == 1) | (labels == 3)) * voxel_ml,
        "ET": np.count_nonzero(labels == 3) * voxel_ml,
    }


def test_case_info_fields(tmp_path: Path) -> None:
    paths = write_case(tmp_path / "Case01", "2020")
    info = case_info(load_case(tmp_path / "Case01"))
    assert info["name"] == "Case01" and info["naming"] == "2020"
    assert info["modalities"] == {k: paths[k].name for k in ("t1", "t1ce", "t2", "flair")}
    assert info["seg"] == paths["seg"].name
    assert info["shape"] == list(SHAPE) and info["spacing"] == list(SPACING)
    assert info["labels"] == "2020"
    assert info["volumes_ml"] == pytest.approx(expected_volumes())
    table = format_info(info)
    assert "Case01_t1ce.nii.gz" in table and "12 x 10 x 8" in table and "WT volume (mL)" in table


def test_case_info_without_seg(tmp_path: Path) -> None:
    write_case(tmp_path, "plain", seg=None)
    info = case_info(load_case(tmp_path))
    assert info["labels"] is None and info["volumes_ml"] is None and info["seg"] is None
    assert "volume" not in format_info(info)


@pytest.mark.parametrize("naming", ["2020", "2023"])
def test_cli_json(tmp_path: Path, naming: str) -> None:
    write_case(tmp_path / "CaseX", naming, case_id="CaseX")
    result = run_info(str(tmp_path / "CaseX"), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["shape"] == list(SHAPE) and info["labels"] == naming and info["naming"] == naming
    assert info["volumes_ml"] == pytest.approx(expected_volumes())


def test_cli_table_and_clean_error(tmp_path: Path) -> None:
    paths = write_case(tmp_path / "ok", "2023")
    table = run_info(str(tmp_path / "ok"))
    assert table.returncode == 0 and paths["flair"].name in table.stdout and not table.stdout.startswith("{")
    paths["t1ce"].write_bytes(b"garbage" * 100)
    bad = run_info(str(tmp_path / "ok"), "--json")
    assert bad.returncode == 2 and bad.stdout == ""
    assert paths["t1ce"].name in bad.stderr and "Traceback" not in bad.stderr


def test_cli_real_cases(real_root: Path) -> None:
    demo = run_info(str(real_root / "BraTS-GLI-demo-0001"), "--json")
    assert demo.returncode == 0, demo.stderr
    info = json.loads(demo.stdout)
    assert info["shape"] == [240, 240, 155] and info["spacing"] == [1.0, 1.0, 1.0]
    assert info["labels"] == "2023" and info["naming"] == "2023"
    assert all(v > 0 for v in info["volumes_ml"].values())
    assert info["volumes_ml"]["WT"] >= info["volumes_ml"]["TC"] >= info["volumes_ml"]["ET"]

    raw = run_info(str(real_root / "BraTS-GLI-00001-000"), "--json")
    assert raw.returncode == 0, raw.stderr
    info = json.loads(raw.stdout)
    assert info["shape"] == [240, 240, 155] and info["spacing"] == [1.0, 1.0, 1.0]
    assert info["labels"] is None and info["volumes_ml"] is None
    assert info["modalities"]["flair"] == "BraTS-GLI-00001-000-t2f.nii.gz"
