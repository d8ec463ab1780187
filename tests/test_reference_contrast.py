"""bench.analysis.reference_contrast: tumour-class contrast in healthy-brain SDs, and validation cases fainter than
training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.analysis.reference_contrast import class_contrasts, fainter_than_training, main
from core.io.labels import ED, NCR
from tests import input_corpus


def _blocks(shape: tuple[int, int, int] = (20, 20, 20), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Healthy brain ~ N(100, 10) in every channel, an ED block and an NCR block; no ET."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 10.0, (4, *shape)).astype(np.float32)
    seg = np.zeros(shape, np.uint8)
    seg[2:8, 2:8, 2:8] = ED
    seg[12:16, 12:16, 12:16] = NCR
    image[3][seg == ED] = 125.0  # FLAIR oedema +2.5 healthy SDs
    image[1][seg == NCR] = 85.0  # T1ce core -1.5 healthy SDs
    return image, seg


def test_class_contrasts_are_in_healthy_brain_standard_deviations() -> None:
    image, seg = _blocks()
    brain = np.ones(seg.shape, bool)
    contrast = class_contrasts(image, seg, brain)
    assert contrast["ED/flair"] == pytest.approx(2.5, abs=0.05)
    assert contrast["NCR/t1ce"] == pytest.approx(-1.5, abs=0.05)
    assert abs(contrast["ED/t2"]) < 0.2  # T2 was left healthy there
    assert contrast["ET/t1ce"] is None  # no ET voxel: nothing to measure


def test_class_contrasts_ignore_voxels_outside_the_brain() -> None:
    image, seg = _blocks()
    brain = np.ones(seg.shape, bool)
    brain[:, :, 18:] = False
    image[:, :, :, 18:] = 0.0  # background that would drag the healthy mean and SD down if it counted
    assert class_contrasts(image, seg, brain)["ED/flair"] == pytest.approx(2.5, abs=0.05)


def test_class_contrasts_reject_mismatched_shapes() -> None:
    image, seg = _blocks()
    with pytest.raises(ValueError, match="do not match"):
        class_contrasts(image[:3], seg)
    with pytest.raises(ValueError, match="do not match"):
        class_contrasts(image, seg[:-1])


def test_fainter_than_training_follows_each_signatures_direction() -> None:
    ranges = {"ED/flair": {"min": 1.5, "median": 2.8, "max": 5.0},
              "ED/t2": {"min": 0.0, "median": 0.7, "max": 2.2},
              "ET/t1ce": {"min": 0.3, "median": 2.1, "max": 3.9},
              "NCR/t1ce": {"min": -1.4, "median": -0.5, "max": 0.4}}
    row = {"ED/flair": 1.3, "ED/t2": 0.1, "ET/t1ce": None, "NCR/t1ce": -1.5}
    # Oedema below the training minimum is fainter; a core darker than any training core is not fainter.
    assert fainter_than_training(row, ranges) == ["ED/flair"]
    assert fainter_than_training({**row, "NCR/t1ce": 0.7, "ET/t1ce": -0.1}, ranges) == [
        "ED/flair", "ET/t1ce", "NCR/t1ce"]
    assert fainter_than_training({"ED/flair": 1.6}, ranges) == []


def test_main_names_the_validation_case_whose_oedema_is_fainter_than_training(tmp_path: Path) -> None:
    root = tmp_path / "cases"
    _, labels = input_corpus.brain_and_labels()
    # The validation cases are TrainA's scan (so every other contrast ties the training range), ValFaint with its
    # FLAIR oedema faded.
    for name, seed in (("TrainA", 0), ("TrainB", 1), ("ValBright", 0), ("ValFaint", 0)):
        volumes = input_corpus.image(seed=seed)
        if name == "ValFaint":
            healthy = volumes[3][(labels == 0) & (volumes[3] > 0)]
            volumes[3][labels == ED] = healthy.mean() + 0.2 * healthy.std()  # oedema barely above healthy FLAIR
        input_corpus.write_case(root / name, volumes)
    dice = tmp_path / "dice.json"
    dice.write_text(json.dumps({"cases": [{"case": "ValFaint", "WT": {"dice": 0.5}, "TC": {"dice": 0.6}}]}))
    out = tmp_path / "report.json"

    report = main([str(root), "--val-cases", "ValBright,ValFaint", "--dice", str(dice), "--out", str(out)])

    assert report["training_cases"] == 2 and set(report["training"]) == {"TrainA", "TrainB"}
    by_case = {entry["case"]: entry for entry in report["validation"]}
    assert by_case["ValFaint"]["fainter_than_every_training_case"] == ["ED/flair"]
    assert by_case["ValFaint"]["dice"] == {"WT": 0.5, "TC": 0.6}
    assert by_case["ValBright"]["fainter_than_every_training_case"] == []
    assert "dice" not in by_case["ValBright"]
    assert json.loads(out.read_text())["validation"] == report["validation"]


def test_main_stops_when_a_validation_case_is_missing(tmp_path: Path) -> None:
    input_corpus.write_case(tmp_path / "cases" / "TrainA")
    with pytest.raises(SystemExit, match="Nowhere"):
        main([str(tmp_path / "cases"), "--val-cases", "Nowhere"])
