"""The API's routes: jobs, the synchronous segmentation routes, generation, health, readiness and models.

Uploads are not FastAPI ``UploadFile`` parameters (those are received whole before the route runs): each route
takes a queue slot, then streams the multipart body to disk (:func:`serve.uploads.receive_files`); the request
body is therefore documented with ``openapi_extra``. Every route lists its real error responses, all
:class:`serve.contract.ErrorBody`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader

from core.io.weights import ModelLoadError, load_model_card, weights_path
from serve.contract import (
    API_KEY_HEADER,
    ERROR_TEXT,
    ApiError,
    Health,
    JobStatus,
    JobTimings,
    ModelEntry,
    Ready,
    SegmentSummary,
    busy_message,
    error_for,
    error_responses,
    redact,
)
from serve.jobs import UPLOAD_HELP, generate_upload, safe_name
from serve.runner import RESULT_PROB, RESULT_SEG
from serve.uploads import receive_files, stored_files
from serve.work import MODEL_KINDS, JobTimeout, QueueFull

Labels = Literal["2020", "2023"]
SEGMENT_PARAMS = ("labels", "tta", "force", "probabilities")


def multipart_body(fields: dict[str, tuple[bool, str]]) -> dict[str, Any]:
    """``openapi_extra`` documenting a multipart body: ``{field: (required, description)}``, each a file list."""
    properties = {name: {"type": "array", "items": {"type": "string", "format": "binary"}, "description": text}
                  for name, (_, text) in fields.items()}
    required = [name for name, (needed, _) in fields.items() if needed]
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "properties": properties, "required": required}}}}}


CASE_BODY = multipart_body({"files": (True, "the four modalities (+ optional seg) or one .zip of the case folder")})
GENERATE_BODY = multipart_body({"mask": (True, "tumour label map .nii/.nii.gz (2020 or 2023 labels), one file"),
                                "files": (False, "optional host case (brain outline)")})
UPLOAD_ERRORS = (400, 401, 413, 422, 429, 500)


def _busy(request: Request, exc: QueueFull) -> ApiError:
    return ApiError(429, "busy", busy_message(request.app.state.queue), {"Retry-After": str(exc.retry_after)})


async def accept_segment(request: Request, params: dict[str, Any], sync: bool) -> str:
    """Take a queue slot, stream the upload into a new job folder and queue the job; returns its id."""
    app = request.app
    settings, store = app.state.settings, app.state.store
    try:
        app.state.queue.reserve()
    except QueueFull as exc:
        raise _busy(request, exc) from exc
    job_id = await asyncio.to_thread(store.create, "segment", params, sync)
    try:
        uploaded = await receive_files(request, store.folder(job_id) / "inputs", max_file_bytes=settings.max_file_bytes,
                                       max_total_bytes=settings.max_upload_bytes, help_text=UPLOAD_HELP)
        if not uploaded.files.get("files"):
            raise ApiError(422, "invalid_request", f"files: Field required; {UPLOAD_HELP}.")
        store.update(job_id, request_id=request.state.request_id)
    except BaseException:
        app.state.queue.unreserve()
        await asyncio.to_thread(store.delete, job_id)
        raise
    app.state.jobs.accept(job_id)
    return job_id


def job_status(state: dict[str, Any]) -> JobStatus:
    """The public view of a job's state."""
    def gap(a: str, b: str) -> float | None:
        return round(state[b] - state[a], 3) if state.get(a) and state.get(b) else None

    done = state["status"] == "done"
    return JobStatus(
        id=state["id"], status=state["status"], progress=state["progress"], message=state["message"],
        params={k: state["params"][k] for k in SEGMENT_PARAMS if k in state["params"]},
        timings=JobTimings(created_at=state["created_at"], queued_at=state["queued_at"],
                           started_at=state["started_at"], finished_at=state["finished_at"],
                           wait_seconds=gap("queued_at", "started_at"), run_seconds=gap("started_at", "finished_at")),
        attempts=state["attempts"], error=state["error"],
        result=f"/jobs/{state['id']}/result" if done else None,
        model=state["result"]["model"] if done else None)


def _job_state(request: Request, job_id: str) -> dict[str, Any]:
    try:
        state = request.app.state.store.get(job_id)
    except KeyError:
        state = None
    if state is None or state["status"] == "receiving" or state.get("sync"):
        raise ApiError(404, "not_found", f"no job {job_id!r}: the id is wrong, or its result expired (results are "
                       f"kept {request.app.state.settings.result_ttl_h:g} h after the job ends); submit it again.")
    return state


def _result_bytes(request: Request, job_id: str, name: str) -> bytes:
    return (request.app.state.store.folder(job_id) / "result" / name).read_bytes()


def _summary_body(state: dict[str, Any], seg: bytes | None, prob: bytes | None) -> SegmentSummary:
    extra = {}
    if seg is not None:
        extra["seg_nii_gz_base64"] = base64.b64encode(seg).decode("ascii")
    if prob is not None:
        extra["prob_nii_gz_base64"] = base64.b64encode(prob).decode("ascii")
    return SegmentSummary(**state["result"], **extra)


def _label_map_response(state: dict[str, Any], data: bytes) -> Response:
    summary, labels = state["result"], state["params"]["labels"]
    name = f"{safe_name(summary['case'])}{'_seg' if labels == '2020' else '-seg'}.nii.gz"
    return Response(data, media_type="application/gzip", headers={
        "Content-Disposition": f'attachment; filename="{name}"',
        "X-Volumes-ML": json.dumps(summary["volumes_ml"], separators=(",", ":")),
        "X-Warnings": json.dumps(summary["warnings"], separators=(",", ":")),
        "X-Case": safe_name(summary["case"]), "X-Labels": labels, "X-Seconds": f"{summary['seconds']:.3f}",
        "X-Model-Name": summary["model"]["name"], "X-Model-SHA256": summary["model"]["sha256"]})


async def run_sync(request: Request, params: dict[str, Any]) -> tuple[dict[str, Any], bytes, bytes | None]:
    """A synchronous segmentation: the job awaited in the request, cancelled at the timeout, removed afterwards."""
    app = request.app
    jobs, store, timeout = app.state.jobs, app.state.store, app.state.settings.timeout_s
    job_id = await accept_segment(request, params, sync=True)
    try:
        try:
            state = await jobs.wait(job_id, timeout)
        except TimeoutError:
            jobs.cancel(job_id)
            with_stop = time.perf_counter()
            try:
                await jobs.wait(job_id, 10)
            except TimeoutError:
                pass
            raise ApiError(504, "timeout", f"the job did not finish within {timeout:g} s and was cancelled (its worker "
                           f"freed in {time.perf_counter() - with_stop:.1f} s) (--timeout / BRATS_API_TIMEOUT_S); "
                           "submit it with POST /jobs to wait as long as it takes, or retry without tta.") from None
        if state["status"] == "failed":
            error = state["error"]
            raise ApiError(error["status"], error["error"], error["detail"])
        if state["status"] != "done":
            raise ApiError(503, "not_ready", "the job was stopped by a server shutdown; retry.")
        seg = _result_bytes(request, job_id, RESULT_SEG)
        prob = _result_bytes(request, job_id, RESULT_PROB) if params.get("probabilities") else None
        return state, seg, prob
    finally:
        await asyncio.to_thread(store.delete, job_id)


def add_routes(app: FastAPI) -> None:
    """Register every route on ``app``."""
    key_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="needed when BRATS_API_KEY is set")
    secured = [Security(key_scheme)]  # documents the header; the Guard middleware enforces it
    _add_job_routes(app, secured)
    _add_sync_routes(app, secured)
    _add_info_routes(app, secured)
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's schema with its automatic 422 (``HTTPValidationError``) replaced by the body really sent."""
        if app.openapi_schema is None:
            schema = default_openapi()
            for methods in schema["paths"].values():
                for spec in methods.values():
                    invalid = spec.get("responses", {}).get("422")
                    if invalid is not None:
                        invalid["description"] = ERROR_TEXT[422]
                        invalid["content"] = {"application/json": {"schema": {
                            "$ref": "#/components/schemas/ErrorBody"}}}
            components = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_job_routes(app: FastAPI, secured: list) -> None:
    @app.post("/jobs", dependencies=secured, status_code=202, response_model=JobStatus,
              response_model_exclude_none=True, openapi_extra=CASE_BODY,
              responses={202: {"description": "accepted; Location names the job"}, **error_responses(*UPLOAD_ERRORS)})
    async def create_job(request: Request, labels: Labels = "2020", tta: bool = False, force: bool = False,
                         probabilities: bool = False) -> JSONResponse:
        """Accept a case for segmentation (same inputs as ``/segment``); poll ``GET /jobs/{id}``. The upload is
        stored before the 202, so the job survives a server restart. ``probabilities`` also keeps the WT/TC/ET
        probability map."""
        params = {"labels": labels, "tta": tta, "force": force, "probabilities": probabilities}
        job_id = await accept_segment(request, params, sync=False)
        body = job_status(request.app.state.store.get(job_id)).model_dump(exclude_none=True)
        return JSONResponse(body, status_code=202, headers={"Location": f"/jobs/{job_id}"})

    @app.get("/jobs/{job_id}", dependencies=secured, response_model=JobStatus, response_model_exclude_none=True,
             responses=error_responses(401, 404))
    async def get_job(request: Request, job_id: str) -> JobStatus:
        """Status (queued, running, done, failed, cancelled), progress, timings, error of a job."""
        return job_status(_job_state(request, job_id))

    @app.get("/jobs/{job_id}/result", dependencies=secured, response_model=SegmentSummary,
             response_model_exclude_none=True,
             responses={200: {"content": {"application/gzip": {}},
                              "description": "format=nifti: the label map (.nii.gz, source affine and header); "
                                             "format=probabilities: the 4D WT/TC/ET map; format=json: the summary"},
                        **error_responses(401, 404, 409)})
    async def get_result(request: Request, job_id: str,
                         format: Literal["nifti", "json", "probabilities"] = "nifti",  # noqa: A002
                         include_seg: bool = False) -> Any:
        """A finished job's result: the label map (volumes in ``X-Volumes-ML``, model in ``X-Model-SHA256``),
        or with ``format=json`` its volumes, metrics, warnings and model (``include_seg`` adds the map in base64)."""
        state = _job_state(request, job_id)
        if state["status"] == "failed":
            error = state["error"]
            raise ApiError(409, "job_failed", f"job {job_id} failed ({error['status']} {error['error']}): "
                           f"{error['detail']}")
        if state["status"] != "done":
            raise ApiError(409, "not_ready", f"job {job_id} is {state['status']}; poll GET /jobs/{job_id} until "
                           "its status is done.", {"Retry-After": "2"})
        if format == "probabilities":
            if not state["params"].get("probabilities"):
                raise ApiError(409, "no_probabilities", f"job {job_id} was not asked for probabilities; submit it "
                               "with probabilities=true.")
            return Response(_result_bytes(request, job_id, RESULT_PROB), media_type="application/gzip",
                            headers={"Content-Disposition": f'attachment; filename="{job_id}_prob.nii.gz"',
                                     "X-Model-SHA256": state["result"]["model"]["sha256"]})
        if format == "json":
            seg = _result_bytes(request, job_id, RESULT_SEG) if include_seg else None
            return _summary_body(state, seg, None)
        return _label_map_response(state, _result_bytes(request, job_id, RESULT_SEG))

    @app.delete("/jobs/{job_id}", dependencies=secured, response_model=JobStatus, response_model_exclude_none=True,
                responses=error_responses(401, 404))
    async def delete_job(request: Request, job_id: str) -> JobStatus:
        """Cancel a queued or running job (a running one stops within seconds and frees its worker); a finished
        job is deleted with its result (status ``deleted``)."""
        state = _job_state(request, job_id)
        jobs = request.app.state.jobs
        if jobs.cancel(job_id):
            try:
                return job_status(await jobs.wait(job_id, 10))
            except TimeoutError:
                return job_status(request.app.state.store.get(job_id))
        await asyncio.to_thread(request.app.state.store.delete, job_id)
        return JobStatus(id=job_id, status="deleted", progress=state["progress"], message="deleted")


def _add_sync_routes(app: FastAPI, secured: list) -> None:
    sync_errors = error_responses(*UPLOAD_ERRORS, 503, 504)

    @app.post("/segment", dependencies=secured, response_class=Response, openapi_extra=CASE_BODY,
              responses={200: {"content": {"application/gzip": {}}, "description": "label map .nii.gz"},
                         **sync_errors})
    async def segment(request: Request, labels: Labels = "2020", tta: bool = False, force: bool = False) -> Response:
        """Segment a case; returns the uint8 label map (source affine and header), volumes in ``X-Volumes-ML``,
        the checks' warnings in ``X-Warnings`` (JSON lists), the model in ``X-Model-Name`` / ``X-Model-SHA256``.
        ``force`` segments a case the checks refuse."""
        params = {"labels": labels, "tta": tta, "force": force, "probabilities": False}
        state, seg, _ = await run_sync(request, params)
        return _label_map_response(state, seg)

    @app.post("/segment.json", dependencies=secured, response_model=SegmentSummary,
              response_model_exclude_unset=True, openapi_extra=CASE_BODY, responses=sync_errors)
    async def segment_json(request: Request, labels: Labels = "2020", tta: bool = False, force: bool = False,
                           include_seg: bool = False, include_probabilities: bool = False) -> SegmentSummary:
        """Segment a case; returns volumes (mL), Dice/HD95 against an uploaded seg, warnings, the model, optionally
        the map and the WT/TC/ET probability map (4D .nii.gz, as ``core.segment --probabilities``), base64."""
        params = {"labels": labels, "tta": tta, "force": force, "probabilities": include_probabilities}
        state, seg, prob = await run_sync(request, params)
        return _summary_body(state, seg if include_seg else None, prob)

    @app.post("/generate", dependencies=secured, response_class=Response, openapi_extra=GENERATE_BODY,
              responses={200: {"content": {"application/zip": {}}, "description": "zip of BraTS case folders"},
                         **sync_errors})
    async def generate(request: Request, samples: Annotated[int, Query(ge=1)] = 1, seed: int = 0,
                       temperature: Annotated[float, Query(ge=0.0, le=5.0)] = 1.0, naming: Labels = "2020"
                       ) -> Response:
        """CVAE cases whose tumour is ``mask``: a zip of ``samples`` BraTS-named case folders (warnings in
        ``X-Warnings``)."""
        limit = request.app.state.settings.max_samples
        if samples > limit:
            raise ApiError(422, "bad_input", f"samples={samples} is more than this server's limit of {limit}; "
                           "ask for fewer per request (BRATS_API_MAX_SAMPLES raises it).")
        data, warnings = await _generate(request, samples, seed, temperature, naming)
        return Response(data, media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="cvae-s{seed}.zip"',
                                 "X-Warnings": json.dumps(warnings, separators=(",", ":"))})


async def _generate(request: Request, samples: int, seed: int, temperature: float, naming: str
                    ) -> tuple[bytes, list[str]]:
    app = request.app
    settings, queue = app.state.settings, app.state.queue
    try:
        queue.reserve()
    except QueueFull as exc:
        raise _busy(request, exc) from exc
    folder = app.state.store.root / "uploads" / uuid.uuid4().hex
    submitted = False
    try:
        await receive_files(request, folder, fields=("mask", "files"), max_file_bytes=settings.max_file_bytes,
                            max_total_bytes=settings.max_upload_bytes, help_text=UPLOAD_HELP)
        masks = stored_files(folder, "mask")
        if len(masks) != 1:
            raise ApiError(422, "invalid_request", f"mask: send exactly one label map as form field 'mask' "
                           f"(got {len(masks)}); {UPLOAD_HELP} for the optional host case.")
        (mask_name, mask_path), = masks.items()
        host = {name: path.read_bytes() for name, path in stored_files(folder, "files").items()} or None
        store = app.state.models

        def work() -> tuple[bytes, list[str]]:
            return generate_upload(mask_name, mask_path.read_bytes(), host, store.get("cvae"), samples=samples,
                                   seed=seed, temperature=temperature, naming=naming)

        submitted = True
        return await queue.run(work, settings.timeout_s, reserved=True)
    except JobTimeout as exc:
        raise ApiError(504, "timeout", f"{exc} (--timeout / BRATS_API_TIMEOUT_S); ask for fewer samples, or "
                       "retry when the server is less busy.") from exc
    except (ApiError, QueueFull):
        raise
    except Exception as exc:
        if isinstance(exc, (ValueError, ModelLoadError, MemoryError)) or submitted:
            status, error, detail = error_for(exc)
            raise ApiError(status, error, detail) from exc
        raise
    finally:
        if not submitted:
            queue.unreserve()
        shutil.rmtree(folder, ignore_errors=True)


def _add_info_routes(app: FastAPI, secured: list) -> None:
    @app.get("/health", response_model=Health)
    async def health(request: Request) -> Health:
        """Liveness: the process answers; loaded models and the work queue (never needs the API key)."""
        loaded = set(request.app.state.models.loaded())
        if request.app.state.pool.readiness()[0] == "ready":
            loaded.add("unet")
        return Health(status="ok", models_loaded=sorted(loaded), queue=request.app.state.queue.stats())

    @app.get("/ready", response_model=Ready, responses=error_responses(503))
    async def ready(request: Request) -> Any:
        """Readiness: 200 once the U-Net is loaded, 503 while it loads or when it failed (the message says why)."""
        state, info = request.app.state.pool.readiness()
        if state == "ready":
            return Ready(status="ready", model=info)
        if state == "failed":
            raise ApiError(503, info[1], info[2])
        if state == "loading":
            raise ApiError(503, "not_ready", "the U-Net is still loading; retry in a few seconds.",
                           {"Retry-After": "5"})
        raise ApiError(503, "not_ready", "the U-Net is not loaded: the server was started with --no-preload and "
                       "loads it with the first job.")

    @app.get("/models", dependencies=secured, response_model=dict[str, ModelEntry], responses=error_responses(401))
    async def models(request: Request) -> dict[str, ModelEntry]:
        """The weights files in use (names, not server paths), their SHA-256 once loaded, and their model cards."""
        state, info = request.app.state.pool.readiness()
        out = {}
        for kind in MODEL_KINDS:
            path, from_env = weights_path(kind)
            loaded = state == "ready" if kind == "unet" else kind in request.app.state.models.loaded()
            entry = ModelEntry(file=path.name, from_env=from_env, exists=path.is_file(), loaded=loaded,
                               sha256=info["sha256"] if kind == "unet" and state == "ready" else None)
            try:
                entry.card = redact(load_model_card(path))
            except ModelLoadError as exc:
                entry.card_error = error_for(exc)[2]
            out[kind] = entry
        return out

