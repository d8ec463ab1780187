"""REST API of BraTS Studio (FastAPI): segment an uploaded case (synchronously or as a job), generate cases.

Run::

    make serve                                    # http://127.0.0.1:8000, docs at /docs
    python -m serve.api --port 8000 [--host 127.0.0.1] [--workers 1] [--queue 4] [--timeout 600]
                        [--max-upload-mb 300] [--max-file-mb 150] [--jobs-dir runs/api-jobs]
                        [--result-ttl-h 24] [--no-preload]

Routes (``serve.routes``): ``POST /jobs`` (202 + ``{"id", "status"}`` and ``Location``), ``GET /jobs/{id}``
(status, progress, timings, error), ``GET /jobs/{id}/result`` (label map; ``?format=json`` volumes/metrics,
``?format=probabilities``), ``DELETE /jobs/{id}`` (cancel; a running job's worker process is killed);
``POST /segment`` / ``POST /segment.json`` (the same job awaited in the request, cancelled at ``--timeout``: 504),
``POST /generate`` (zip of BraTS case folders), ``GET /health`` (liveness), ``GET /ready`` (503 until the U-Net is
loaded), ``GET /models`` (model cards, no server paths), OpenAPI docs at ``/docs``.

Jobs live on disk (``--jobs-dir``): the upload is stored before 202, the state file is written atomically, and a
server restarted on the same folder serves finished results and runs queued/running jobs again; finished jobs
expire after ``--result-ttl-h``. Uploads are streamed to disk with per-file and per-request limits checked while
they arrive, and an upload in progress holds a queue slot. Every response carries ``X-Request-ID`` (the client's
when it sent one), also in the log lines; every result names the model (file name and SHA-256).

Settings (flags override the environment): ``BRATS_API_KEY`` (when set, every route but ``/health``, ``/ready``
and the docs needs the header ``X-API-Key``), ``BRATS_API_WORKERS``, ``BRATS_API_QUEUE`` (jobs that may wait),
``BRATS_API_TIMEOUT_S``, ``BRATS_API_MAX_UPLOAD_MB``, ``BRATS_API_MAX_FILE_MB``, ``BRATS_API_JOBS_DIR``,
``BRATS_API_RESULT_TTL_H``, ``BRATS_API_MAX_SAMPLES``; the weights are ``BRATS_UNET_WEIGHTS`` /
``BRATS_CVAE_WEIGHTS`` or the shipped files. Every error is a JSON body ``{"error": kind, "detail": message,
"status": code}`` (``serve.contract.ErrorBody``) whose message names the file and the fix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.io.weights import weights_path
from core.services.credentials import same_secret
from serve.contract import API_KEY_HEADER, ApiError, busy_message, error_response
from serve.jobs import UPLOAD_HELP
from serve.manager import JobManager
from serve.routes import add_routes
from serve.runner import SegmentPool
from serve.store import JobStore
from serve.uploads import UploadError
from serve.work import MODEL_KINDS, ModelStore, WorkQueue

log = logging.getLogger("serve.api")
REQUEST_ID_HEADER = "X-Request-ID"
OPEN_PATHS: frozenset[str] = frozenset({"/health", "/ready", "/docs", "/openapi.json"})
JOB_PATHS: frozenset[str] = frozenset({"/segment", "/segment.json", "/generate", "/jobs"})
STATIC_DOCS = "/static/swagger"  # Swagger UI files served from the swagger-ui-bundle wheel: /docs works offline
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True)
class ApiSettings:
    """Server settings; :meth:`from_env` reads the ``BRATS_API_*`` variables."""

    api_key: str | None = None
    workers: int = 1
    max_waiting: int = 4
    timeout_s: float = 600.0
    max_upload_mb: float = 300.0  # a BraTS case is ~7 MB as .nii.gz, ~150 MB as float32 .nii
    max_file_mb: float = 150.0
    max_samples: int = 8
    jobs_dir: str = "runs/api-jobs"
    result_ttl_h: float = 24.0
    preload: tuple[str, ...] = field(default=MODEL_KINDS)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ApiSettings:
        """Settings from ``env`` (default ``os.environ``); unset variables keep the defaults."""
        env = dict(os.environ if env is None else env)
        base = cls()

        def number(name: str, default: float, kind: type) -> Any:
            raw = env.get(name, "").strip()
            try:
                return kind(raw) if raw else default
            except ValueError as exc:
                raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}; unset it or give a number") from exc

        return cls(api_key=env.get("BRATS_API_KEY") or None,
                   workers=number("BRATS_API_WORKERS", base.workers, int),
                   max_waiting=number("BRATS_API_QUEUE", base.max_waiting, int),
                   timeout_s=number("BRATS_API_TIMEOUT_S", base.timeout_s, float),
                   max_upload_mb=number("BRATS_API_MAX_UPLOAD_MB", base.max_upload_mb, float),
                   max_file_mb=number("BRATS_API_MAX_FILE_MB", base.max_file_mb, float),
                   max_samples=number("BRATS_API_MAX_SAMPLES", base.max_samples, int),
                   jobs_dir=env.get("BRATS_API_JOBS_DIR") or base.jobs_dir,
                   result_ttl_h=number("BRATS_API_RESULT_TTL_H", base.result_ttl_h, float))

    @property
    def max_upload_bytes(self) -> int:
        """Upload limit in bytes (whole request body)."""
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_file_bytes(self) -> int:
        """Per-file upload limit in bytes."""
        return int(self.max_file_mb * 1024 * 1024)


# ------------------------------------------------------------------------------------------ guard middleware


class Guard:
    """ASGI middleware run before the body is read: request id, API key (401), full queue (429), upload size (413).

    Every response gets ``X-Request-ID`` (the client's when it is 1-128 letters, digits or ``._:-``, else a new
    one), which is also set for the log lines of the request (:data:`REQUEST_ID`) and ends with one access line.
    A job request that would find the queue full is refused before its upload is received (the route checks
    again when it submits). The size is checked on ``Content-Length`` and again on the bytes actually received
    (chunked uploads); past the limit the body is cut off and the app's answer replaced by the 413.
    """

    def __init__(self, app: ASGIApp, settings: ApiSettings, queue: WorkQueue) -> None:
        self.app = app
        self.settings = settings
        self.queue = queue

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"x-request-id"), "")
        request_id = sent if _CLIENT_ID.match(sent) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        start, status = time.perf_counter(), [0]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (REQUEST_ID_HEADER.lower().encode(), request_id.encode())]
            await send(message)

        try:
            await self._guard(scope, receive, send_with_id)
        except Exception as exc:  # a bug: logged with the request id, answered as JSON (with the id) if still possible
            log.exception("unhandled error")
            if status[0]:
                raise
            await error_response(500, "internal_error", f"{type(exc).__name__}; see the server log under "
                                 f"X-Request-ID {request_id}.")(scope, receive, send_with_id)
        finally:
            log.info("%s %s -> %s in %.3f s", scope.get("method"), scope["path"], status[0],
                     time.perf_counter() - start)
            REQUEST_ID.reset(token)

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        key = self.settings.api_key
        path = scope["path"]
        is_open = path in OPEN_PATHS or path.startswith(STATIC_DOCS + "/")
        if key and not is_open and not same_secret(headers.get(API_KEY_HEADER.lower(), ""), key):
            await error_response(401, "unauthorized", f"missing or wrong API key: send the header "
                                 f"'{API_KEY_HEADER}: <key>' with the key the server was started with "
                                 "(BRATS_API_KEY).", {"WWW-Authenticate": API_KEY_HEADER})(scope, receive, send)
            return
        if scope.get("method") == "POST" and path in JOB_PATHS and self.queue.full():
            retry = str(self.queue.refuse())
            await error_response(429, "busy", busy_message(self.queue), {"Retry-After": retry})(scope, receive, send)
            return
        limit = self.settings.max_upload_bytes
        too_big = error_response(413, "upload_too_large", f"the request body is larger than the "
                                 f"{self.settings.max_upload_mb:g} MB upload limit; send one case at a time "
                                 "(.nii.gz rather than .nii) or raise the limit (--max-upload-mb / "
                                 "BRATS_API_MAX_UPLOAD_MB).")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await too_big(scope, receive, send)
            return
        state = {"received": 0, "over": False, "answered": False}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:
                if not state["answered"]:
                    state["answered"] = True
                    await too_big(scope, receive, send)
                return
            await send(message)

        await self.app(scope, limited_receive, guarded_send)
        if state["over"] and not state["answered"]:
            await too_big(scope, receive, send)


# ------------------------------------------------------------------------------------------ app


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (the current request's :data:`REQUEST_ID`, ``-`` outside one) to log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The FastAPI application (models, work queue, job store and manager live on ``app.state``)."""
    settings = settings or ApiSettings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if "unet" in settings.preload:
            app.state.pool.start()  # the U-Net loads in its worker process(es); /ready says when
        for kind in settings.preload:
            if kind == "unet":
                continue
            try:
                await asyncio.to_thread(app.state.models.get, kind)
                log.info("loaded %s in %.1f s", kind, app.state.models.load_seconds[kind])
            except ValueError as exc:  # ModelLoadError: /generate answers 503 with this message until fixed
                log.error("%s", exc)
        app.state.jobs.recover()
        janitor = asyncio.create_task(_expire_loop(app.state.jobs, settings.result_ttl_h * 3600))
        try:
            yield
        finally:
            janitor.cancel()
            with suppress(asyncio.CancelledError):
                await janitor
            await asyncio.to_thread(app.state.jobs.shutdown)

    app = FastAPI(title="BraTS Studio API", version="2.0",
                  description="3D U-Net brain-tumour segmentation (synchronous or as jobs) and CVAE case "
                              "generation. " + UPLOAD_HELP + ". Every error is one JSON schema (ErrorBody); "
                              "every response carries X-Request-ID.",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    _add_docs(app)
    app.state.settings = settings
    app.state.models = ModelStore()
    app.state.queue = WorkQueue(settings.workers, settings.max_waiting)
    app.state.pool = SegmentPool(settings.workers, lambda: weights_path("unet")[0])
    app.state.store = JobStore(Path(settings.jobs_dir))
    app.state.jobs = JobManager(app.state.store, app.state.queue, app.state.pool)
    app.add_middleware(Guard, settings=settings, queue=app.state.queue)
    _add_error_handlers(app)
    add_routes(app)
    return app


async def _expire_loop(jobs: JobManager, ttl_s: float) -> None:
    """Remove expired results now and then (every minute at most, twice per TTL at least)."""
    while True:
        gone = await asyncio.to_thread(jobs.expire, ttl_s)
        if gone:
            log.info("removed %d expired job(s)", len(gone))
        await asyncio.sleep(max(0.5, min(60.0, ttl_s / 2)))


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at ``/docs`` from local files (FastAPI's default page loads them from a CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount(STATIC_DOCS, StaticFiles(directory=swagger_ui_path), name="swagger")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs",
                                   swagger_js_url=f"{STATIC_DOCS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{STATIC_DOCS}/swagger-ui.css",
                                   swagger_favicon_url=f"{STATIC_DOCS}/favicon-32x32.png")


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(UploadError)
    async def upload_error(_: Request, exc: UploadError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}")
        hint = UPLOAD_HELP if any("files" in p or "mask" in p for p in parts) else "see /docs for the parameters"
        return error_response(422, "invalid_request", f"{'; '.join(parts)}; {hint}.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return error_response(exc.status_code, "not_found" if exc.status_code == 404 else "http_error", detail,
                              getattr(exc, "headers", None))


# ------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``python -m serve.api``."""
    p = argparse.ArgumentParser(prog="python -m serve.api", description="BraTS Studio REST API (FastAPI + uvicorn).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s; 0.0.0.0 = all)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    p.add_argument("--workers", type=int, help="jobs run at once (default BRATS_API_WORKERS or 1)")
    p.add_argument("--queue", type=int, help="jobs that may wait before 429 (default BRATS_API_QUEUE or 4)")
    p.add_argument("--timeout", type=float, help="seconds per request (default BRATS_API_TIMEOUT_S or 600)")
    p.add_argument("--max-upload-mb", type=float, help="request body limit (default BRATS_API_MAX_UPLOAD_MB or 300)")
    p.add_argument("--max-file-mb", type=float, help="per-file upload limit (default BRATS_API_MAX_FILE_MB or 150)")
    p.add_argument("--jobs-dir", help="folder of the jobs and their results, kept across restarts "
                   "(default BRATS_API_JOBS_DIR or runs/api-jobs)")
    p.add_argument("--result-ttl-h", type=float, help="hours a finished job's result is kept "
                   "(default BRATS_API_RESULT_TTL_H or 24)")
    p.add_argument("--no-preload", action="store_true", help="load the models on first use, not at start-up")
    return p


def settings_from_args(args: argparse.Namespace, env: dict[str, str] | None = None) -> ApiSettings:
    """Environment settings overridden by the flags given."""
    settings = ApiSettings.from_env(env)
    flags = {"workers": args.workers, "max_waiting": args.queue, "timeout_s": args.timeout,
             "max_upload_mb": args.max_upload_mb, "max_file_mb": args.max_file_mb, "jobs_dir": args.jobs_dir,
             "result_ttl_h": args.result_ttl_h}
    settings = replace(settings, **{k: v for k, v in flags.items() if v is not None})
    return replace(settings, preload=()) if args.no_preload else settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until interrupted; returns the exit status (2 for bad settings)."""
    import uvicorn

    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        WorkQueue(settings.workers, settings.max_waiting).shutdown()  # validates the numbers
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # serve.api's own objects, not __main__'s copies: one ApiError class and one REQUEST_ID for routes and log lines
    from serve.api import RequestIdFilter as IdFilter
    from serve.api import create_app as app_factory

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s [%(request_id)s] %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(IdFilter())
    uvicorn.run(app_factory(settings), host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
