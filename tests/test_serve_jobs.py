"""serve API v2: async jobs, cancel, crash recovery, streamed uploads, readiness, error contract (tiny models)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
import psutil
import pytest
from fastapi.testclient import TestClient

from bench.serve.bench_serve import oversized_uploads
from bench.server import free_port, stop_process
from core.io.case import load_case, save_case
from core.io.weights import file_sha256
from core.segmentation.inference import load_model
from core.segmentation.pipeline import SegmentOptions, segment
from serve.api import create_app
from tests import test_serve_api as base
from tests.test_serve_api import (
    ROOT,
    api_settings,
    assert_json_error,
    case_files,
    read_label_map,
    small_case,
    wait_ready,
    wait_up,
)

weights, case_dir, tiny_models = base.weights, base.case_dir, base.tiny_models  # the sync tests' fixtures

FORCE = {"force": "true"}  # the test cases are crops, not whole brains: the plausibility gate refuses them unforced
BIG = (128, 128, 96)  # with tta (8 forward passes) the tiny U-Net runs for many seconds here: long enough to cancel
SEEN_ERRORS: set[tuple[str, str, int]] = set()  # (method, route, status) of every error answered in this module


def error(response: httpx.Response, route: str, status: int, *needles: str) -> dict:
    """:func:`assert_json_error`, remembering the route so the OpenAPI test checks it is documented."""
    SEEN_ERRORS.add((response.request.method.lower(), route, status))
    return assert_json_error(response, status, *needles)


@pytest.fixture(scope="module")
def big_case_dir(tmp_path_factory) -> Path:
    return save_case(small_case("BraTS20_Big_001", shape=BIG), tmp_path_factory.mktemp("big_case"), naming="2020")


@pytest.fixture(scope="module")
def api(weights):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRATS_UNET_WEIGHTS", str(weights["unet"]))
        mp.setenv("BRATS_CVAE_WEIGHTS", str(weights["cvae"]))
        with TestClient(create_app(api_settings(preload=("unet",), workers=1, max_waiting=2))) as client:
            wait_ready(client)
            yield client


def wait_job(client, job_id: str, until: tuple[str, ...] = ("done", "failed", "cancelled"), timeout: float = 300,
             message: str = "") -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = client.get(f"/jobs/{job_id}").json()
        if state["status"] in until and message in state.get("message", ""):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.1)


def test_async_job_result_is_core_segment_voxel_for_voxel(api, case_dir, weights):
    params = {"probabilities": "true", "labels": "2023", **FORCE}
    accepted = api.post("/jobs", files=case_files(case_dir), params=params)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    assert accepted.headers["Location"] == f"/jobs/{job_id}" and accepted.json()["status"] in ("queued", "running")
    state = wait_job(api, job_id)
    assert state["status"] == "done", state
    assert state["progress"] == 1.0 and state["attempts"] == 1 and state["result"] == f"/jobs/{job_id}/result"
    assert state["timings"]["run_seconds"] > 0 and state["timings"]["wait_seconds"] >= 0
    sha = file_sha256(weights["unet"])
    assert state["model"] == {"name": "unet.keras", "sha256": sha}
    label_map = api.get(f"/jobs/{job_id}/result")
    assert label_map.status_code == 200 and label_map.headers["X-Model-SHA256"] == sha
    expected = segment(load_case(case_dir), load_model(weights["unet"]), SegmentOptions(labels="2023", force=True))
    served = read_label_map(label_map.content)
    written = read_label_map(expected.label_map_bytes())  # what python -m core.segment writes
    np.testing.assert_array_equal(np.asanyarray(served.dataobj), np.asanyarray(written.dataobj))
    np.testing.assert_array_equal(np.asanyarray(served.dataobj), expected.labels)  # 2023 labels = internal ones
    np.testing.assert_array_equal(served.affine, load_case(case_dir).affine)
    summary = api.get(f"/jobs/{job_id}/result", params={"format": "json"}).json()
    assert summary["model"]["sha256"] == sha and summary["volumes_ml"] == pytest.approx(expected.volumes_ml, abs=1e-3)
    assert "seg_nii_gz_base64" not in summary
    prob = api.get(f"/jobs/{job_id}/result", params={"format": "probabilities"})
    assert prob.status_code == 200 and read_label_map(prob.content).shape == (*load_case(case_dir).shape, 3)
    gone = api.delete(f"/jobs/{job_id}")
    assert gone.json()["status"] == "deleted"
    error(api.get(f"/jobs/{job_id}"), "/jobs/{job_id}", 404, "expired")


def test_failed_and_unfinished_jobs_answer_json_errors(api, case_dir):
    bad = api.post("/jobs", files=case_files(case_dir, ("t1", "t1ce", "t2")))
    assert bad.status_code == 202  # the case is checked by the job, like core.segment
    state = wait_job(api, bad.json()["id"])
    assert state["status"] == "failed" and state["error"]["status"] == 422
    assert "missing flair" in state["error"]["detail"] and set(state["error"]) == {"error", "detail", "status"}
    error(api.get(f"/jobs/{bad.json()['id']}/result"), "/jobs/{job_id}/result", 409, "failed", "missing flair")
    ok = api.post("/jobs", files=case_files(case_dir), params=FORCE)
    if api.get(f"/jobs/{ok.json()['id']}").json()["status"] != "done":
        error(api.get(f"/jobs/{ok.json()['id']}/result"), "/jobs/{job_id}/result", 409, "poll GET")
    done = wait_job(api, ok.json()["id"])
    error(api.get(f"/jobs/{done['id']}/result", params={"format": "probabilities"}), "/jobs/{job_id}/result", 409,
          "probabilities=true")
    error(api.get("/jobs/not-a-job-id"), "/jobs/{job_id}", 404)
    error(api.get("/jobs/0123456789abcdef0123456789abcdef"), "/jobs/{job_id}", 404, "submit it again")
    error(api.delete("/jobs/0123456789abcdef0123456789abcdef"), "/jobs/{job_id}", 404)
    error(api.post("/jobs", data={"x": "1"}), "/jobs", 422, "files")
    error(api.post("/jobs", files=case_files(case_dir), params={"labels": "1999"}), "/jobs", 422, "labels")
    assert api.app.state.jobs.expire(0.0) and api.get(f"/jobs/{done['id']}").status_code == 404  # results expire


def test_cancel_stops_a_running_job_and_frees_its_worker_within_5_s(api, big_case_dir, case_dir):
    job = api.post("/jobs", files=case_files(big_case_dir), params={"tta": "true", **FORCE}).json()
    wait_job(api, job["id"], until=("running",), message="forward pass")  # inside the U-Net's forward passes
    start = time.monotonic()
    cancelled = api.delete(f"/jobs/{job['id']}")
    stopped = time.monotonic() - start
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    assert stopped < 5, f"cancel took {stopped:.1f} s"
    print(f"cancel of a running job: DELETE answered 'cancelled' in {stopped:.2f} s")
    assert api.get("/health").json()["queue"]["running"] == 0
    again = api.post("/jobs", files=case_files(case_dir), params=FORCE).json()  # the worker process is replaced
    assert wait_job(api, again["id"])["status"] == "done"


def test_sync_timeout_cancels_its_job(api, big_case_dir):
    settings = api.app.state.settings
    api.app.state.settings = dataclasses.replace(settings, timeout_s=1.5)
    try:
        start = time.monotonic()
        response = api.post("/segment", files=case_files(big_case_dir), params={"tta": "true", **FORCE})
        body = error(response, "/segment", 504, "did not finish within 1.5 s", "was cancelled")
        assert time.monotonic() - start < 1.5 + 10, body  # the upload, the timeout, the cancel
        assert api.get("/health").json()["queue"]["running"] == 0  # the bug: running: 1 after the 504
        print(f"sync timeout: 504 after {time.monotonic() - start:.2f} s, {body['detail']}")
    finally:
        api.app.state.settings = settings


def test_uploads_stream_to_disk_hold_a_queue_slot_and_stop_at_the_limits(weights, case_dir, tmp_path):
    """An upload in progress takes a slot (429 for the next request); a file past its limit stops the upload."""
    files = case_files(case_dir)
    smallest = min(len(f[1][1]) for f in files)
    app = create_app(api_settings(preload=(), workers=1, max_waiting=0, max_file_mb=smallest / 2 / 2**20,
                                  jobs_dir=str(tmp_path)))
    request = httpx.Request("POST", "http://x/jobs", files=files)
    body, content_type = request.read(), request.headers["content-type"]

    async def scenario() -> tuple[httpx.Response, httpx.Response, dict]:
        release = asyncio.Event()
        first_chunk = body[:1000]

        async def slow_receive():
            if not slow_receive.sent:
                slow_receive.sent = True
                return {"type": "http.request", "body": first_chunk, "more_body": True}
            await release.wait()
            return {"type": "http.disconnect"}

        slow_receive.sent = False
        sent: list[dict] = []

        async def collect(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/jobs", "query_string": b"", "root_path": "",
                 "headers": [(b"content-type", content_type.encode())], "scheme": "http", "server": ("x", 80),
                 "client": ("c", 1), "http_version": "1.1", "app": app}
        uploading = asyncio.create_task(app(dict(scope), slow_receive, collect))
        await asyncio.sleep(0.3)
        stats = app.state.queue.stats()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as client:
            busy = await client.post("/jobs", files=files, params=FORCE)
            release.set()
            await uploading
            too_big = await client.post("/segment", files=files)
        return busy, too_big, stats

    busy, too_big, stats = asyncio.run(scenario())
    assert stats["uploading"] == 1 and stats["waiting"] == 0
    error(busy, "/jobs", 429, "busy")
    error(too_big, "/segment", 413, "per-file limit", "BraTS20_Toy_001_flair.nii.gz is larger", "--max-file-mb")
    assert app.state.queue.stats()["uploading"] == 0 and list(tmp_path.iterdir()) == []  # nothing left on disk
    app.state.queue.shutdown()


def test_ready_is_503_until_the_unet_loads_and_names_the_fix(tmp_path, case_dir, monkeypatch):
    monkeypatch.setenv("BRATS_UNET_WEIGHTS", "/nonexistent/unet.keras")
    with TestClient(create_app(api_settings(preload=("unet",), jobs_dir=str(tmp_path)))) as client:
        deadline = time.monotonic() + 300
        while (ready := client.get("/ready")).json().get("error") == "not_ready":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert client.get("/health").status_code == 200  # alive, not ready
        body = error(ready, "/ready", 503, "unet.keras", "BRATS_UNET_WEIGHTS")
        assert body["error"] == "model_unavailable"
        assert "/nonexistent" not in body["detail"] and "--weights" not in body["detail"]
        sync = error(client.post("/segment", files=case_files(case_dir)), "/segment", 503, "BRATS_UNET_WEIGHTS")
        assert "/nonexistent" not in sync["detail"]
        assert "/nonexistent" not in client.get("/models").text


def test_openapi_documents_every_error_with_one_schema_and_typed_json(api):
    schema = api.get("/openapi.json").json()
    error_ref = "#/components/schemas/ErrorBody"
    assert set(schema["components"]["schemas"]["ErrorBody"]["properties"]) == {"error", "detail", "status"}
    for path, methods in schema["paths"].items():
        for method, spec in methods.items():
            for code, response in spec["responses"].items():
                if code.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"]["$ref"] == error_ref, (path, code)
            if method == "post":
                assert {"401", "413", "422", "429"} <= set(spec["responses"]), path
    for method, route, status in SEEN_ERRORS:
        assert str(status) in schema["paths"][route][method]["responses"], (method, route, status)
    typed = {"/segment.json": ("post", "SegmentSummary"), "/jobs/{job_id}": ("get", "JobStatus"),
             "/ready": ("get", "Ready"), "/health": ("get", "Health")}
    for path, (method, name) in typed.items():
        ok = schema["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok["$ref"].endswith("/" + name), (path, ok)
    assert "/segment" in schema["paths"] and {"504", "503"} <= set(schema["paths"]["/segment"]["post"]["responses"])


# ------------------------------------------------------------------------------------------ real uvicorn


def _start(port: int, jobs: Path, env: dict, log: Path) -> subprocess.Popen:
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, "-m", "serve.api", "--port", str(port), "--jobs-dir", str(jobs),
                                 "--workers", "1", "--queue", "4", "--max-upload-mb", "8"],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def test_kill_9_with_two_accepted_jobs_then_restart_finishes_both(weights, case_dir, big_case_dir, tmp_path):
    port, jobs, log = free_port(), tmp_path / "jobs", tmp_path / "server.log"
    env = {**os.environ, "BRATS_UNET_WEIGHTS": str(weights["unet"]), "BRATS_CVAE_WEIGHTS": str(weights["cvae"])}
    url = f"http://127.0.0.1:{port}"
    server = _start(port, jobs, env, log)
    try:
        with httpx.Client(base_url=url, timeout=300) as http:
            wait_up(http, server, log)
            first = http.post("/jobs", files=case_files(big_case_dir), params={"tta": "true", **FORCE}).json()["id"]
            second = http.post("/jobs", files=case_files(case_dir), params=FORCE).json()["id"]
            wait_job(http, first, until=("running",), message="forward pass")
            children = [p.pid for p in psutil.Process(server.pid).children(recursive=True)]
            server.send_signal(signal.SIGKILL)
            server.wait(10)
            assert _gone(children, 30), "the worker process outlived the killed server"
            server = _start(port, jobs, env, log)
            wait_up(http, server, log)
            states = [wait_job(http, job_id, timeout=600) for job_id in (first, second)]
            assert [s["status"] for s in states] == ["done", "done"], states
            assert states[0]["attempts"] == 2  # ran again after the restart
            assert http.get(f"/jobs/{second}/result").status_code == 200

            junk = oversized_uploads(url, server.pid, jobs, count=3, size_mb=64)  # chunked: refused while arriving
            assert junk["server_rss_growth_mb"] < 100, junk
            results = junk["answers"]
            assert all(r in (413, "WriteError", "RemoteProtocolError", "ReadError") for r in results), results
            assert 413 in results and junk["jobs_dir_peak_mb"] < 3 * 8 + 5  # never more than the limit on disk
            assert sorted(p.name for p in jobs.iterdir() if p.name != "uploads") == sorted([first, second])
            print(f"3 concurrent 64 MB uploads: {junk}")
    finally:
        stop_process(server, timeout=30)


def _gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids):
            return True
        time.sleep(0.2)
    return False


def test_job_state_survives_as_json(tmp_path):
    """The store writes state atomically and a restart requeues accepted jobs but drops cut uploads."""
    from serve.store import JobStore

    store = JobStore(tmp_path)
    accepted, cut, sync, done = (store.create("segment", {"labels": "2020"}, sync=s) for s in (False, False, True,
                                                                                               False))
    store.update(accepted, status="running")
    store.update(sync, status="queued")
    store.update(done, status="done", finished_at=time.time())
    (tmp_path / "uploads" / "cut").mkdir(parents=True)
    rerun, removed = JobStore(tmp_path).recoverable()
    assert rerun == [accepted] and sorted(removed) == sorted([cut, sync])
    assert json.loads((tmp_path / accepted / "state.json").read_text())["status"] == "queued"
    assert sorted(store.ids()) == sorted([accepted, done]) and not (tmp_path / "uploads").exists()
    assert not list(tmp_path.glob("*/.*.tmp"))
