"""core.segmentation.pipeline: the one "segment a case" use-case (issue 39), and every entry point goes through it."""

from __future__ import annotations

import gzip
import types
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from core.io.case import CaseError, save_case
from core.io.labels import ET, NUM_CLASSES, REGIONS, region_probabilities
from core.segmentation import pipeline
from core.segmentation.metrics import region_metrics, volumes_ml
from core.segmentation.pipeline import SegmentOptions, segment
from core.segmentation.segment import segment_oriented
from tests.test_inference import toy_case


@pytest.fixture(scope="module")
def tiny_model():
    from core.segmentation import unet

    import keras

    keras.utils.set_random_seed(0)
    return unet.build_unet(base_filters=4, depth=3)


def implausible(case):
    """``case`` with its T2 a copy of its T1: a plausibility error (``core.preprocessing.input_check``)."""
    image = case.image.copy()
    image[2] = image[0]
    return replace(case, image=image)


def _nifti(data: bytes) -> nib.Nifti1Image:
    """A ``.nii.gz`` file's image from its bytes."""
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


# --------------------------------------------------------------------------- the use-case itself


def test_segment_returns_labels_probabilities_metrics_and_timings(tiny_model):
    case = toy_case((24, 28, 20), seed=1)
    seen: list[tuple[float, str]] = []
    options = SegmentOptions(probabilities=True, force=True)  # a toy case is a crop: refused unless forced
    result = segment(case, tiny_model, options, progress=lambda f, m: seen.append((f, m)))
    expected = segment_oriented(case, tiny_model)
    np.testing.assert_array_equal(result.labels, expected.labels)
    assert result.labels.shape == case.shape and result.class_probabilities.shape == (NUM_CLASSES, *case.shape)
    np.testing.assert_allclose(result.region_probabilities, region_probabilities(expected.probabilities), atol=1e-6)
    assert result.metrics == region_metrics(expected.labels, case.seg, case.spacing)
    assert result.volumes_ml == volumes_ml(expected.labels, case.spacing)
    assert set(result.class_volumes_ml) == {"NCR", "ED", "ET"}
    assert set(result.timings) == {"check", "segment", "probabilities", "metrics"} and result.seconds > 0
    from core.preprocessing.input_check import require_plausible

    assert result.warnings == require_plausible(case, force=True) and any("whole-brain" in w for w in result.warnings)
    assert seen[-1] == (1.0, pipeline.METRICS_MESSAGE) and [f for f, _ in seen] == sorted(f for f, _ in seen)


def test_segment_writes_the_chosen_convention_and_the_probability_map(tiny_model, tmp_path):
    from core.io.case import PROBABILITY_INTENT

    case = toy_case((24, 28, 20), seed=2)
    result = segment(case, tiny_model, SegmentOptions(labels="2023", probabilities=True, postprocess=False, force=True))
    stored = np.asarray(_nifti(result.label_map_bytes()).dataobj)
    np.testing.assert_array_equal(stored, result.labels)  # 2023 values are the internal ones
    path = result.save_label_map(tmp_path / "seg.nii.gz")
    np.testing.assert_allclose(nib.load(path).affine, case.affine, atol=1e-6)
    prob = result.save_probabilities(tmp_path / "prob.nii.gz")
    image = nib.load(prob)
    assert image.shape == (*case.shape, 3)
    assert image.header["intent_name"].tobytes().rstrip(b"\0").decode() == PROBABILITY_INTENT
    assert result.probabilities_bytes()[:2] == b"\x1f\x8b"
    old = SegmentOptions(labels="2020")
    stored_2020 = np.asarray(_nifti(replace(result, options=old).label_map_bytes()).dataobj)
    np.testing.assert_array_equal(stored_2020, np.where(result.labels == ET, 4, result.labels))


def test_segment_without_probabilities_or_reference(tiny_model):
    case = replace(toy_case((24, 28, 20), seed=3), seg=None)
    result = segment(case, tiny_model, SegmentOptions(force=True))
    assert result.region_probabilities is None and result.metrics is None
    with pytest.raises(ValueError, match="probabilities=True"):
        result.probabilities_bytes()
    no_metrics = SegmentOptions(metrics=False, force=True)
    assert segment(toy_case((24, 28, 20), seed=3), tiny_model, no_metrics).metrics is None


def test_gate_refuses_before_loading_the_model_unless_forced(tiny_model):
    case = implausible(toy_case((24, 28, 20), seed=4))
    loads = []

    def load():
        loads.append(1)
        return tiny_model

    with pytest.raises(CaseError, match=r"identical to.*pass force=true"):
        segment(case, options=SegmentOptions(force_hint="force=true"), load_model=load)
    assert loads == []
    with pytest.raises(CaseError) as refused:
        segment(case, options=SegmentOptions(force_hint=None), load_model=load)
    assert "pass" not in str(refused.value)
    warned: list[str] = []
    result = segment(case, options=SegmentOptions(force=True), load_model=load, on_warning=warned.append)
    assert loads == [1] and "model" in result.timings
    assert any("identical to" in w for w in result.warnings) and warned == result.warnings


def test_segment_wants_exactly_one_model_source(tiny_model):
    case = toy_case((16, 16, 16))
    with pytest.raises(ValueError, match="either"):
        segment(case)
    with pytest.raises(ValueError, match="either"):
        segment(case, tiny_model, load_model=lambda: tiny_model)
    with pytest.raises(ValueError):
        SegmentOptions(labels="2021")


# --------------------------------------------------------------------------- every entry point goes through it


@pytest.fixture()
def spy(monkeypatch):
    """Replace the network step inside the pipeline: a call reaches it only through ``pipeline.segment``."""
    calls: list[str] = []

    def fake_segment_oriented(case, model, *, tta=False, postprocess=True, progress=None):
        calls.append(case.name)
        labels = np.zeros(case.shape, np.uint8)
        labels[case.shape[0] // 2, case.shape[1] // 2, case.shape[2] // 2] = ET
        probabilities = np.zeros((NUM_CLASSES, *case.shape), np.float32)
        probabilities[0] = 1.0
        return types.SimpleNamespace(labels=labels, probabilities=probabilities, seconds=0.5)

    monkeypatch.setattr(pipeline, "segment_oriented", fake_segment_oriented)
    return calls


def test_cli_segments_through_the_pipeline(spy, tmp_path, monkeypatch, capsys):
    from core import segment as segment_cli
    from core.segmentation import inference

    monkeypatch.setattr(inference, "load_model", lambda path: object())
    folder = save_case(toy_case((16, 16, 16), name="cli-case"), tmp_path / "in", naming="2020")
    out = tmp_path / "seg.nii.gz"
    probabilities = str(tmp_path / "p.nii.gz")
    assert segment_cli.main([str(folder), "-o", str(out), "--probabilities", probabilities, "--force"]) == 0
    assert spy == ["cli-case"] and out.is_file() and (tmp_path / "p.nii.gz").is_file()
    assert "ET 0.0 mL" in capsys.readouterr().out


def test_batch_segments_through_the_pipeline(spy, tmp_path):
    from serve.batch import segment_one

    folder = save_case(toy_case((16, 16, 16), name="batch-case"), tmp_path / "batch-case", naming="2020")
    refused = segment_one(folder, object(), probabilities=True)  # a crop: refused as the CLI refuses it
    assert refused["status"] == "error" and "not a whole-brain volume" in refused["error"] and spy == []
    assert "--force" in refused["error"]
    row = segment_one(folder, object(), probabilities=True, force=True)
    assert row["status"] == "ok", row["error"]
    assert spy == ["batch-case"] and row["seg"] and row["prob"] and row["dice_WT"]


def test_api_job_segments_through_the_pipeline(spy, tmp_path):
    from serve.jobs import segment_upload

    folder = save_case(toy_case((16, 16, 16), name="BraTS20_Api_001"), tmp_path / "api", naming="2020")
    uploads = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    result = segment_upload(uploads, object(), labels="2023", probabilities=True, force=True)
    assert spy == ["BraTS20_Api_001"] and result.prob_nii_gz and set(result.metrics) == set(REGIONS)
    assert np.asarray(_nifti(result.nii_gz).dataobj).max() == ET  # 2023 labels


def test_app_actions_segment_through_the_pipeline(spy, monkeypatch):
    from app import actions
    from app.state import Studio
    from core.services.jobs import JobRegistry

    state, registry = Studio(case=toy_case((16, 16, 16), name="app-case"), key="k1"), JobRegistry()
    monkeypatch.setattr(actions, "studio", lambda: state)
    monkeypatch.setattr(actions, "job_registry", lambda: registry)
    assert actions.plausibility_errors() and any("whole-brain" in e for e in actions.plausibility_errors())
    refused = actions.start_segmentation(lambda: object(), "tiny", tta=False)  # the checks refuse a crop ...
    assert refused.wait(30) and refused.status == "failed" and "whole-brain" in refused.error and spy == []
    job = actions.start_segmentation(lambda: object(), "tiny", tta=False, force=True)  # ... unless forced
    assert job.wait(30) and job.status == "done", job.error
    assert spy == ["app-case"] and job.result.labels.max() == ET and job.result.metrics is not None


def test_no_entry_point_composes_the_steps_itself():
    """Only the pipeline calls the segmentation step or the region-probability step (issue 39)."""
    root = Path(__file__).resolve().parents[1]
    entry_points = [root / "core" / "segment.py", root / "serve" / "jobs.py", root / "serve" / "batch.py",
                    root / "serve" / "api.py", *sorted((root / "app").rglob("*.py"))]
    for path in entry_points:
        if not path.is_file():
            continue
        text = path.read_text()
        for step in ("segment_case(", "region_probabilities(", "require_plausible(", "segment_checked("):
            assert step not in text, f"{path.relative_to(root)} calls {step[:-1]} itself; use the pipeline"


def test_region_probabilities_moved_to_labels_and_old_import_still_works():
    from core.io import labels
    from core.segmentation import inference

    assert inference.region_probabilities is labels.region_probabilities
