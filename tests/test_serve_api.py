"""serve.api: the synchronous routes through FastAPI's TestClient and a real uvicorn process (tiny models).

The jobs (``/jobs``), streamed uploads, readiness and the error contract are in ``tests/test_serve_jobs.py``.
"""

from __future__ import annotations

import atexit
import base64
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import httpx2 as httpx
import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from bench.server import free_port, stop_process
from core.io.case import Case, load_case, save_case
from core.io.labels import ED, ET, NCR
from core.io.weights import file_sha256
from core.segmentation import unet
from core.segmentation.metrics import volumes_ml
from core.synthesis import cvae
from serve.api import ApiSettings, create_app
from serve.contract import ErrorBody
from serve.work import QueueFull, WorkQueue

import keras  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (40, 36, 20)
AFFINE = np.array([[-1.0, 0, 0, 20.5], [0, -1.0, 0, 30.0], [0, 0, 1.0, -7.0], [0, 0, 0, 1]])


def small_case(name: str = "BraTS20_Toy_001", seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> Case:
    """A 1 mm toy case with an ellipsoid brain (0 outside) and a layered tumour, non-trivial affine."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    rx, ry, rz = (n * r / m for n, r, m in zip(shape, (12.5, 12.5, 7.5), SHAPE, strict=True))
    brain = (x / rx) ** 2 + (y / ry) ** 2 + (z / rz) ** 2 < 1
    r = np.sqrt((x - 2) ** 2 + (y + 1) ** 2 + (2 * z) ** 2)
    seg = np.zeros(shape, np.uint8)
    seg[brain & (r < 7)] = ED
    seg[brain & (r < 4.5)] = ET
    seg[brain & (r < 2.5)] = NCR
    means = np.array([[0, 0, 0, 0], [300, 200, 900, 700], [500, 450, 1100, 1200], [550, 1400, 800, 900]], float)
    image = (means[seg].transpose(3, 0, 1, 2) + 400.0 + rng.normal(0, 20, (4, *shape))) * brain
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_zooms((1.0, 1.0, 1.0))
    header.set_qform(AFFINE, code=1)
    header.set_sform(AFFINE, code=1)
    return Case(image=image.astype(np.float32), affine=AFFINE.copy(), header=header, seg=seg, name=name)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Tiny U-Net and CVAE files, used through BRATS_UNET_WEIGHTS / BRATS_CVAE_WEIGHTS."""
    folder = tmp_path_factory.mktemp("serve_weights")
    keras.utils.set_random_seed(0)
    unet.build_unet(base_filters=2, depth=2).save(folder / "unet.keras")
    cvae.build_cvae(4, 2, 2, grid=cvae.CvaeGrid((32, 32, 16), 2)).save(folder / "cvae.keras")
    return {"unet": folder / "unet.keras", "cvae": folder / "cvae.keras"}


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory) -> Path:
    return save_case(small_case(), tmp_path_factory.mktemp("serve_case"), naming="2020")


@pytest.fixture(autouse=True)
def tiny_models(weights, monkeypatch):
    monkeypatch.setenv("BRATS_UNET_WEIGHTS", str(weights["unet"]))
    monkeypatch.setenv("BRATS_CVAE_WEIGHTS", str(weights["cvae"]))


def api_settings(**kwargs) -> ApiSettings:
    """Settings with a fresh temporary jobs folder (never the repository's runs/), removed when the tests end."""
    if "jobs_dir" not in kwargs:
        kwargs["jobs_dir"] = tempfile.mkdtemp(prefix="brats_api_jobs_")
        atexit.register(shutil.rmtree, kwargs["jobs_dir"], ignore_errors=True)
    return ApiSettings(**kwargs)


def wait_ready(client, timeout: float = 600) -> dict:
    """Poll ``/ready`` until the U-Net worker has loaded (tiny model; TensorFlow import on a busy machine)."""
    deadline = time.monotonic() + timeout
    while (response := client.get("/ready")).status_code != 200:
        assert response.json()["error"] == "not_ready" and time.monotonic() < deadline, response.text
        time.sleep(0.2)
    return response.json()


@pytest.fixture(scope="module")
def client(weights):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRATS_UNET_WEIGHTS", str(weights["unet"]))
        mp.setenv("BRATS_CVAE_WEIGHTS", str(weights["cvae"]))
        with TestClient(create_app(api_settings(preload=("unet",)))) as c:
            wait_ready(c)
            yield c


def case_files(folder: Path, keys: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")) -> list[tuple]:
    """Multipart ``files`` entries of a case folder (only the modality files in ``keys``, + seg if listed)."""
    out = []
    for path in sorted(folder.iterdir()):
        if any(path.name.endswith(f"_{k}.nii.gz") for k in keys):
            out.append(("files", (path.name, path.read_bytes(), "application/gzip")))
    return out


def assert_json_error(response: httpx.Response, status: int, *needles: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    ErrorBody.model_validate(body)  # the one documented error schema, nothing more
    assert set(body) == {"error", "detail", "status"}
    assert body["status"] == status and body["error"] and isinstance(body["detail"], str)
    assert response.headers["X-Request-ID"]
    for needle in needles:
        assert needle in body["detail"], body["detail"]
    return body


def read_label_map(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


# ------------------------------------------------------------------------------------------ TestClient


def test_health_and_models(client, weights):
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["models_loaded"] == ["unet"]
    ready = client.get("/ready").json()
    assert ready["model"] == {"name": "unet.keras", "sha256": file_sha256(weights["unet"])}
    response = client.get("/models")
    models = response.json()
    assert models["unet"]["file"] == "unet.keras" and models["unet"]["from_env"] is True
    assert models["unet"]["sha256"] == file_sha256(weights["unet"])
    assert models["unet"]["loaded"] is True and models["cvae"]["loaded"] is False
    assert str(weights["unet"].parent) not in response.text and str(ROOT) not in response.text  # no server paths
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/static/swagger/swagger-ui-bundle.js" in docs.text  # no CDN: works offline
    assert client.get("/static/swagger/swagger-ui-bundle.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/segment", "/segment.json", "/generate", "/health", "/models"} <= set(paths)


def test_segment_returns_the_label_map_on_the_source_grid(client, case_dir):
    # the toy case is a crop, refused unless forced (test_implausible_case_is_refused_like_the_cli_unless_forced)
    response = client.post("/segment", files=case_files(case_dir), params={"labels": "2023", "force": "true"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    assert 'filename="BraTS20_Toy_001-seg.nii.gz"' in response.headers["content-disposition"]
    image = read_label_map(response.content)
    source = nib.load(case_dir / "BraTS20_Toy_001_t1.nii.gz")
    np.testing.assert_array_equal(image.affine, source.affine)
    assert image.header.get_zooms() == source.header.get_zooms()
    assert image.header["sform_code"] == source.header["sform_code"]
    data = np.asanyarray(image.dataobj)
    assert data.dtype == np.uint8 and data.shape == SHAPE and set(np.unique(data)) <= {0, 1, 2, 3}
    warnings = json.loads(response.headers["X-Warnings"])  # the CLI's warnings: a toy case is not a whole brain
    assert any("not a whole-brain volume" in w for w in warnings)
    volumes = json.loads(response.headers["X-Volumes-ML"])
    assert set(volumes) == {"WT", "TC", "ET"}
    expected = volumes_ml(data, (1.0, 1.0, 1.0))  # 2023 labels are the internal ones
    assert volumes == pytest.approx(expected, abs=1e-3)
    assert response.headers["X-Model-Name"] == "unet.keras" and len(response.headers["X-Model-SHA256"]) == 64


def test_segment_json_from_a_zip_with_reference_metrics(client, case_dir):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in case_dir.iterdir():
            zf.write(path, f"{case_dir.name}/{path.name}")
    response = client.post("/segment.json", files=[("files", ("case.zip", buffer.getvalue(), "application/zip"))],
                           params={"include_seg": "true", "include_probabilities": "true", "force": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    prob = read_label_map(base64.b64decode(body["prob_nii_gz_base64"]))
    assert prob.shape == (*SHAPE, 3) and prob.header["intent_name"].tobytes().rstrip(b"\0") == b"P(WT,TC,ET)"
    values = prob.get_fdata()
    assert 0.0 <= values.min() and values.max() <= 1.0 + 1e-6
    assert body["case"] == case_dir.name and body["labels"] == "2020" and body["shape"] == list(SHAPE)
    assert set(body["metrics"]) == {"WT", "TC", "ET"} and 0.0 <= body["metrics"]["WT"]["dice"] <= 1.0
    labels = np.asanyarray(read_label_map(base64.b64decode(body["seg_nii_gz_base64"])).dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 4}  # 2020 labels
    assert body["volumes_ml"]["WT"] == pytest.approx(float(np.count_nonzero(labels)) / 1000, abs=1e-3)
    plain = client.post("/segment.json", files=case_files(case_dir, ("t1", "t1ce", "t2", "flair")),
                        params={"force": "true"})
    assert plain.status_code == 200 and not {"seg_nii_gz_base64", "prob_nii_gz_base64"} & set(plain.json())


def test_bad_uploads_get_json_errors_naming_file_and_fix(client, case_dir):
    missing = client.post("/segment", files=case_files(case_dir, ("t1", "t1ce", "t2")))
    assert_json_error(missing, 422, "missing flair", "BraTS20_Toy_001_t1.nii.gz")
    broken = case_files(case_dir, ("t1", "t1ce", "t2")) + [
        ("files", ("BraTS20_Toy_001_flair.nii.gz", b"this is not an image" * 40, "application/gzip"))]
    assert_json_error(client.post("/segment", files=broken), 422, "BraTS20_Toy_001_flair.nii.gz", "not a NIfTI")
    no_files = client.post("/segment", data={"other": "x"})
    assert_json_error(no_files, 422, "files", "repeated form field 'files'")
    mixed = case_files(case_dir, ("t1",)) + [("files", ("case.zip", b"PK", "application/zip"))]
    assert_json_error(client.post("/segment", files=mixed), 422, "case.zip", "not both")
    assert_json_error(client.post("/segment", files=case_files(case_dir), params={"labels": "2021"}), 422, "labels")


def test_implausible_case_is_refused_like_the_cli_unless_forced(client, case_dir):
    files = case_files(case_dir, ("t1", "t1ce", "flair"))
    files.append(("files", ("BraTS20_Toy_001_t2.nii.gz", (case_dir / "BraTS20_Toy_001_t1.nii.gz").read_bytes(),
                            "application/gzip")))
    refused = client.post("/segment.json", files=files)
    assert_json_error(refused, 422, "BraTS20_Toy_001_t2.nii.gz", "identical to", "pass force=true")
    forced = client.post("/segment.json", files=files, params={"force": "true"})
    assert forced.status_code == 200, forced.text
    assert any("identical to" in w for w in forced.json()["warnings"])
    crop = client.post("/segment", files=case_files(case_dir))  # a toy case is a crop of a brain, not a whole one
    assert_json_error(crop, 422, "BraTS20_Toy_001", "not a whole-brain volume", "pass force=true")


def test_upload_limit_answers_413(weights, case_dir):
    with TestClient(create_app(api_settings(preload=(), max_upload_mb=0.01))) as small:
        body = assert_json_error(small.post("/segment", files=case_files(case_dir)), 413, "upload limit")
        assert body["error"] == "upload_too_large"


def test_upload_limit_also_counts_chunked_bodies():
    """Without Content-Length the Guard counts the bytes received and answers 413 past the limit."""
    import asyncio

    from serve.api import Guard

    async def reads_everything(scope, receive, send):
        while (message := await receive())["type"] == "http.request" and message.get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    chunks = [{"type": "http.request", "body": b"x" * 4096, "more_body": True} for _ in range(5)]
    chunks.append({"type": "http.request", "body": b"", "more_body": False})
    sent: list[dict] = []

    async def receive():
        return chunks.pop(0)

    async def send(message):
        sent.append(message)

    queue = WorkQueue(1, 0)
    guard = Guard(reads_everything, api_settings(max_upload_mb=10_000 / 1024 / 1024), queue)
    asyncio.run(guard({"type": "http", "method": "POST", "path": "/segment", "headers": []}, receive, send))
    queue.shutdown()
    assert sent[0]["status"] == 413 and json.loads(sent[1]["body"])["error"] == "upload_too_large"
    assert (b"x-request-id", sent[0]["headers"][-1][1]) in sent[0]["headers"]
    assert len(sent) == 2


def _blocking_app(**settings) -> tuple[TestClient, threading.Event]:
    app = create_app(api_settings(preload=(), **settings))
    gate = threading.Event()
    app.state.queue.submit(lambda: gate.wait(30))  # occupies the only worker
    return TestClient(app), gate


def test_full_queue_answers_429_with_retry_after(case_dir):
    client, gate = _blocking_app(workers=1, max_waiting=0)
    try:
        with client:
            response = client.post("/segment", files=case_files(case_dir))
            body = assert_json_error(response, 429, "busy")
            assert body["error"] == "busy" and int(response.headers["Retry-After"]) >= 1
            assert client.get("/health").json()["queue"]["refused"] == 1  # refused before the upload was read
            with pytest.raises(QueueFull):  # the route's own check, behind the middleware's early one
                client.app.state.queue.submit(lambda: None)
            assert client.get("/health").json()["queue"]["refused"] == 2
            gate.set()
    finally:
        gate.set()


def test_timeout_answers_504_and_frees_the_waiting_slot(case_dir):
    client, gate = _blocking_app(workers=1, max_waiting=1, timeout_s=0.3)
    try:
        with client:
            start = time.perf_counter()
            assert_json_error(client.post("/segment", files=case_files(case_dir)), 504, "did not finish within 0.3 s",
                              "was cancelled")
            assert time.perf_counter() - start < 10
            queue = client.get("/health").json()["queue"]
            assert queue["waiting"] == 0 and queue["running"] == 1  # the timed-out job never started
            gate.set()
    finally:
        gate.set()


def test_api_key_is_required_when_set(weights):
    with TestClient(create_app(api_settings(preload=(), api_key="s3cret"))) as keyed:
        assert keyed.get("/health").status_code == 200 and keyed.get("/ready").status_code == 503  # no key needed
        assert keyed.get("/docs").status_code == 200 and keyed.get("/openapi.json").status_code == 200
        body = assert_json_error(keyed.get("/models"), 401, "X-API-Key")
        assert body["error"] == "unauthorized"
        refused = keyed.post("/segment", headers={"X-API-Key": "wrong", "X-Request-ID": "client-42"})
        assert_json_error(refused, 401)
        assert refused.headers["X-Request-ID"] == "client-42"  # the client's id, also on early refusals
        assert keyed.get("/models", headers={"X-API-Key": "s3cret"}).status_code == 200


def test_generate_returns_a_zip_of_brats_case_folders(client, case_dir, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    mask = ("mask", ("BraTS20_Toy_001_seg.nii.gz", (case_dir / "BraTS20_Toy_001_seg.nii.gz").read_bytes(),
                     "application/gzip"))
    response = client.post("/generate", files=[mask, *case_files(case_dir)],
                           params={"samples": 2, "seed": 3, "naming": "2023"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert isinstance(json.loads(response.headers["X-Warnings"]), list)
    with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
        names = sorted(zf.namelist())
        assert names[:5] == sorted(f"BraTS-CVAE-s3-000/BraTS-CVAE-s3-000-{k}.nii.gz"
                                   for k in ("t1n", "t1c", "t2w", "t2f", "seg"))
        assert len(names) == 10
        zf.extractall(tmp_path / "out")
    generated = load_case(tmp_path / "out" / "BraTS-CVAE-s3-001")
    source = load_case(case_dir)
    np.testing.assert_array_equal(generated.affine, source.affine)
    np.testing.assert_array_equal(generated.seg, source.seg)
    assert list(scratch.iterdir()) == []  # no temporary file left behind
    assert list((client.app.state.store.root / "uploads").iterdir()) == []  # nor a streamed upload
    too_many = client.post("/generate", files=[mask], params={"samples": 99})
    assert_json_error(too_many, 422, "samples=99", "limit")
    not_brats = client.post("/generate", files=[mask])  # no host case: the template brain needs the BraTS grid
    assert_json_error(not_brats, 422, "BraTS20_Toy_001_seg.nii.gz", "BraTS grid")
    empty = small_case()
    empty.seg[:] = 0
    empty_dir = save_case(empty, tmp_path / "empty", naming="2020", name="Empty")
    empty_mask = ("mask", ("Empty_seg.nii.gz", (empty_dir / "Empty_seg.nii.gz").read_bytes(), "application/gzip"))
    no_tumour = client.post("/generate", files=[empty_mask, *case_files(case_dir)])
    assert no_tumour.status_code == 200, no_tumour.text
    assert any("Empty_seg.nii.gz: no tumour label" in w for w in json.loads(no_tumour.headers["X-Warnings"]))


# ------------------------------------------------------------------------------------------ real uvicorn


def wait_up(http: httpx.Client, server: subprocess.Popen, log: Path, route: str = "/ready") -> None:
    """Poll ``route`` of a starting server until it answers 200 (fails with its log if it exits or 600 s pass)."""
    deadline = time.monotonic() + 600
    while True:
        try:
            if http.get(route).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)


def test_real_uvicorn_server(weights, case_dir, tmp_path):
    port = free_port()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "BRATS_UNET_WEIGHTS": str(weights["unet"]), "BRATS_CVAE_WEIGHTS": str(weights["cvae"]),
           "BRATS_API_KEY": "k3y", "TMPDIR": str(scratch)}
    log = tmp_path / "server.log"
    with open(log, "w") as out:  # models preloaded: the server answers only once they are in memory
        server = subprocess.Popen([sys.executable, "-m", "serve.api", "--port", str(port), "--max-upload-mb", "1.5",
                                   "--jobs-dir", str(tmp_path / "jobs")],
                                  cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:  # generous limits: on a loaded 2-core machine the server's TensorFlow import alone can take minutes
        with httpx.Client(base_url=url, timeout=300) as http:
            wait_up(http, server, log, "/health")
            assert_json_error(http.post("/segment", files=case_files(case_dir)), 401, "X-API-Key")
            key = {"X-API-Key": "k3y"}
            ok = http.post("/segment", files=case_files(case_dir), headers={**key, "X-Request-ID": "abc-123"},
                           params={"force": "true"})
            assert ok.status_code == 200, ok.text
            assert ok.headers["X-Request-ID"] == "abc-123"
            np.testing.assert_array_equal(read_label_map(ok.content).affine, AFFINE)
            assert set(json.loads(ok.headers["X-Volumes-ML"])) == {"WT", "TC", "ET"}
            bad = http.post("/segment", files=[("files", ("x_t1.nii.gz", b"junk", "application/gzip"))], headers=key)
            assert_json_error(bad, 422, "missing t1ce")
            big = [("files", ("x_t1.nii.gz", b"x" * (2 << 20), "application/gzip"))]
            assert_json_error(http.post("/segment", files=big, headers=key), 413, "1.5 MB upload limit")
            assert http.get("/health").json()["models_loaded"] == ["cvae", "unet"]
    finally:
        stop_process(server, timeout=30)
    assert list(scratch.iterdir()) == []
    assert [p.name for p in (tmp_path / "jobs").iterdir()] in ([], ["uploads"])  # synchronous jobs are removed
    assert "[abc-123]" in log.read_text()  # the request id in the server's log lines


def test_settings_from_env_and_flags():
    from serve.api import build_parser, settings_from_args

    env = {"BRATS_API_KEY": "k", "BRATS_API_QUEUE": "7", "BRATS_API_TIMEOUT_S": "12.5"}
    settings = settings_from_args(build_parser().parse_args(["--workers", "2", "--no-preload"]), env)
    assert (settings.api_key, settings.max_waiting, settings.timeout_s, settings.workers) == ("k", 7, 12.5, 2)
    assert settings.preload == ()
    with pytest.raises(ValueError, match="BRATS_API_QUEUE='many' is not a valid int"):
        ApiSettings.from_env({"BRATS_API_QUEUE": "many"})


def test_core_never_imports_serve_fastapi_or_ray():
    code = ("import sys, pkgutil, importlib, core\n"
            "for m in pkgutil.iter_modules(core.__path__):\n"
            "    importlib.import_module('core.' + m.name)\n"
            "print(sorted(n for n in ('serve', 'fastapi', 'starlette', 'ray', 'uvicorn') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-1] == "[]"
