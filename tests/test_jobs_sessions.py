"""core.services.jobs (background runs) and core.services.session_store (work saved per browser session)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from core.services.jobs import CANCELLED, DONE, FAILED, JobRegistry
from core.services.session_store import MAX_RECENT, SessionStore, valid_id


def test_job_runs_in_background_and_is_collected_once():
    registry = JobRegistry()
    gate = threading.Event()

    def work(job):
        job.progress(0.5, "half")
        gate.wait(5)
        return 42

    job = registry.start("sid123456", "segment", "case01", "test", work)
    assert job.running and registry.running("sid123456") == [job]
    with pytest.raises(RuntimeError, match="already"):
        registry.start("sid123456", "segment", "case01", "again", work)
    assert registry.collect("sid123456") == []  # not finished yet
    gate.set()
    assert job.wait(5) and job.status == DONE and job.result == 42 and job.fraction == 1.0
    assert registry.collect("sid123456") == [job]
    assert registry.collect("sid123456") == []  # once
    assert registry.get("sid123456", "segment") is job and registry.get("other", "segment") is None


def test_job_cancel_and_failure_are_reported():
    registry = JobRegistry()
    started = threading.Event()

    def slow(job):
        started.set()
        while True:
            job.progress(0.1, "working")

    job = registry.start("sid123456", "segment", "c", "slow", slow)
    started.wait(5)
    job.cancel()
    assert job.wait(5) and job.status == CANCELLED

    def broken(job):
        raise ValueError("bad weights")

    failed = registry.start("sid123456", "generate", "c", "broken", broken)
    assert failed.wait(5) and failed.status == FAILED and "bad weights" in failed.error


def test_session_store_round_trip(tmp_path):
    store = SessionStore("abcdef123456", tmp_path)
    files = {"x_t1.nii.gz": b"one", "x_seg.nii.gz": b"two"}
    store.save_source("case000001", {"kind": "files", "name": "X"}, files)
    store.set_current("case000001", "X")
    source, saved_files = store.source("case000001")
    assert source["kind"] == "files" and saved_files == files
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1, 2, 3] = 3
    store.save_labels("case000001", "edited", labels, {"rev": 7})
    back, meta = store.labels("case000001", "edited")
    assert np.array_equal(back, labels) and meta == {"rev": 7}
    assert store.labels("case000001", "prediction") is None
    image = np.random.default_rng(0).normal(size=(4, 4, 5, 6)).astype(np.float32)
    store.save_samples("case000001", [image], [labels], {"names": ["s1"], "seed": 1})
    images, segs, meta = store.samples("case000001")
    assert np.allclose(images[0], image, atol=1e-2) and np.array_equal(segs[0], labels) and meta["seed"] == 1
    summary = store.summary("case000001")
    assert summary == {"case_id": "case000001", "name": "X", "prediction": False, "edited": True, "samples": 1}
    # a fresh object on the same folder (a browser reload) sees the same work
    assert SessionStore("abcdef123456", tmp_path).workspace()["current"] == "case000001"


def test_recent_list_is_bounded_and_ids_are_checked(tmp_path):
    store = SessionStore("abcdef123456", tmp_path)
    for i in range(MAX_RECENT + 2):
        case_id = f"case{i:06d}"
        store.save_source(case_id, {"kind": "demo", "name": case_id})
        store.set_current(case_id, case_id)
    recent = store.workspace()["recent"]
    assert len(recent) == MAX_RECENT and recent[0]["case_id"] == f"case{MAX_RECENT + 1:06d}"
    assert not store.case_dir("case000000").exists()  # the oldest folders are removed
    assert not valid_id("../etc") and not valid_id("a b")
    with pytest.raises(ValueError):
        SessionStore("../../x", tmp_path)
    with pytest.raises(ValueError):
        store.case_dir("../x")


def test_edits_history_saved_with_the_labels(tmp_path):
    from core.synthesis.anatomy import BRATS_AFFINE
    from core.viewer.mask_edit import MaskEditor
    from core.viewer.render import DisplayGeometry

    store = SessionStore("abcdef123456", tmp_path)
    geometry = DisplayGeometry.from_affine(BRATS_AFFINE)
    editor = MaskEditor(np.zeros((9, 8, 7), np.uint8), geometry)
    editor.paint_voxels((np.array([1]), np.array([2]), np.array([3])), np.array([2]))
    editor.clear_slice("axial", 3)
    store.save_labels("case000001", "edited", editor.labels, {"rev": 2}, history=editor.history_arrays())
    labels, meta = store.labels("case000001", "edited")
    assert np.array_equal(labels, editor.labels) and meta == {"rev": 2}
    restored = MaskEditor(labels, geometry)
    assert restored.restore_history(store.history("case000001", "edited"))
    assert restored.undo() and restored.labels[1, 2, 3] == 2  # the clear is undone after the "reload"
    store.save_labels("case000001", "prediction", labels, {})
    assert store.history("case000001", "prediction") is None


def test_cleanup_removes_old_and_oversized_sessions_but_keeps_open_ones(tmp_path):
    import os

    from core.services.session_store import cleanup_sessions

    now = 1_000_000_000.0
    ages_days = {"old000001": 30, "old000002": 20, "new000001": 1, "new000002": 2, "open00001": 40}
    for sid, days in ages_days.items():
        store = SessionStore(sid, tmp_path)
        store.save_source("case000001", {"kind": "files", "name": sid}, {"x_t1.nii.gz": b"x" * 1000})
        store.set_current("case000001", sid)
        for path in store.folder.rglob("*"):
            os.utime(path, (now - days * 86400, now - days * 86400))
    (tmp_path / "not-a-session!").mkdir()  # not a session id: never touched
    removed = cleanup_sessions(tmp_path, max_age_days=14, max_bytes=10**9, keep=("open00001",), now=now)
    assert sorted(removed) == ["old000001", "old000002"]
    assert (tmp_path / "open00001").is_dir() and (tmp_path / "not-a-session!").is_dir()
    # over the size bound: the least recently used go first until the rest fits
    one = sum(p.stat().st_size for p in (tmp_path / "new000001").rglob("*") if p.is_file())
    removed = cleanup_sessions(tmp_path, max_age_days=14, max_bytes=int(2.5 * one), keep=("open00001",), now=now)
    assert removed == ["new000002"]  # the older of the two new ones; open00001 counts but is kept
    assert cleanup_sessions(tmp_path / "missing", max_age_days=1, max_bytes=1) == []


def test_segment_progress_creeps_during_a_forward_pass(monkeypatch):
    """The Segment bar moves (and says it is an estimate) while a forward pass reports nothing."""
    import time

    from app import actions

    monkeypatch.setattr(actions._EasedProgress, "_last_pass_s", [0.5])
    registry = JobRegistry()
    seen = []

    def work(job):
        with actions._EasedProgress(job, passes=1) as progress:
            progress(0.1, "predicting")
            for _ in range(8):
                time.sleep(0.15)
                seen.append((job.fraction, job.message))
            progress(0.92, "postprocessing")
            assert job.fraction == 0.92 and job.message == "postprocessing"
        return True

    job = registry.start("sid123456", "segment", "c", "eased", work)
    assert job.wait(10) and job.status == DONE, job.error
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and 0.1 < fractions[-1] < 0.9  # rising, never past the next step
    assert any("estimated" in m for _, m in seen)
    assert actions._EasedProgress._last_pass_s[0] >= 1.0  # the measured pass (floored at 1 s) is the next estimate
