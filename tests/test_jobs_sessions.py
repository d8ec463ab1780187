"""core.jobs (background runs) and core.session_store (work saved per browser session)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from core.jobs import CANCELLED, DONE, FAILED, JobRegistry
from core.session_store import MAX_RECENT, SessionStore, valid_id


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
