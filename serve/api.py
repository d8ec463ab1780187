"""REST API of BraTS Studio (FastAPI): segment an uploaded case, generate cases from a mask.

Run::

    make serve                                    # http://127.0.0.1:8000, docs at /docs
    python -m serve.api --port 8000 [--host 127.0.0.1] [--workers 1] [--queue 4] [--timeout 600]
                        [--max-upload-mb 1024] [--no-preload]

Routes: ``POST /segment`` (label map ``.nii.gz``, volumes in the ``X-Volumes-ML`` header; the case is checked
and segmented as ``python -m core.segment`` does, ``force=true`` being its ``--force``),
``POST /segment.json`` (volumes, Dice/HD95 against an uploaded seg, warnings; ``include_seg=true`` /
``include_probabilities=true`` add the label map / the WT-TC-ET probability map in base64), ``POST /generate``
(zip of BraTS case folders), ``GET /health``, ``GET /models`` (model cards), OpenAPI docs at ``/docs``.

Settings (flags override the environment): ``BRATS_API_KEY`` (when set, every route but ``/health`` and the docs
needs the header ``X-API-Key``), ``BRATS_API_WORKERS``, ``BRATS_API_QUEUE`` (jobs that may wait),
``BRATS_API_TIMEOUT_S``, ``BRATS_API_MAX_UPLOAD_MB``, ``BRATS_API_MAX_SAMPLES``; the weights are
``BRATS_UNET_WEIGHTS`` / ``BRATS_CVAE_WEIGHTS`` or the shipped files. Every error is a JSON body
``{"error": kind, "detail": message, "status": code}`` whose message names the file and the fix (the
``core`` messages the CLIs print).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Annotated, Any, Literal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fastapi import FastAPI, File, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.io.case import CaseError
from core.io.nifti import NiftiError
from core.io.weights import ModelLoadError, load_model_card, weights_path
from core.services.credentials import same_secret
from serve.jobs import UPLOAD_HELP, generate_upload, safe_name, segment_upload
from serve.work import MODEL_KINDS, JobTimeout, ModelStore, QueueFull, WorkQueue

log = logging.getLogger("serve.api")
API_KEY_HEADER = "X-API-Key"
OPEN_PATHS: frozenset[str] = frozenset({"/health", "/docs", "/openapi.json"})
JOB_PATHS: frozenset[str] = frozenset({"/segment", "/segment.json", "/generate"})
STATIC_DOCS = "/static/swagger"  # Swagger UI files served from the swagger-ui-bundle wheel: /docs works offline
Labels = Literal["2020", "2023"]
Files = Annotated[list[UploadFile], File(description="the four modalities (+ optional seg) or one .zip")]


@dataclass(frozen=True)
class ApiSettings:
    """Server settings; :meth:`from_env` reads the ``BRATS_API_*`` variables."""

    api_key: str | None = None
    workers: int = 1
    max_waiting: int = 4
    timeout_s: float = 600.0
    max_upload_mb: float = 1024.0
    max_samples: int = 8
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
                   max_samples=number("BRATS_API_MAX_SAMPLES", base.max_samples, int))

    @property
    def max_upload_bytes(self) -> int:
        """Upload limit in bytes (whole request body)."""
        return int(self.max_upload_mb * 1024 * 1024)


class ApiError(Exception):
    """An error answered as ``{"error", "detail", "status"}`` JSON."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers or {}


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body every failure uses."""
    return JSONResponse({"error": error, "detail": detail, "status": status}, status_code=status, headers=headers)


# ------------------------------------------------------------------------------------------ guard middleware


def busy_message(queue: WorkQueue) -> str:
    """The 429 message."""
    return (f"the server is busy: all {queue.capacity} job slots are taken ({queue.workers} running, "
            f"{queue.max_waiting} waiting); retry after the Retry-After seconds, or start the server with a longer "
            "queue (--queue / BRATS_API_QUEUE).")


class Guard:
    """ASGI middleware run before the body is read: API key (401), full queue (429) and upload size (413).

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


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The FastAPI application (models and work queue live on ``app.state``)."""
    settings = settings or ApiSettings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for kind in settings.preload:
            try:
                await asyncio.to_thread(app.state.models.get, kind)
                log.info("loaded %s in %.1f s", kind, app.state.models.load_seconds[kind])
            except ModelLoadError as exc:  # the routes answer 503 with this message until the file is fixed
                log.error("%s", exc)
        yield
        app.state.queue.shutdown()

    app = FastAPI(title="BraTS Studio API", version="1.0",
                  description="3D U-Net brain-tumour segmentation and CVAE case generation. " + UPLOAD_HELP + ".",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    _add_docs(app)
    app.state.settings = settings
    app.state.models = ModelStore()
    app.state.queue = WorkQueue(settings.workers, settings.max_waiting)
    app.add_middleware(Guard, settings=settings, queue=app.state.queue)
    _add_error_handlers(app)
    _add_routes(app)
    return app


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
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = f"the request body is not a readable multipart form; {UPLOAD_HELP}."
        return error_response(exc.status_code, "http_error", detail, getattr(exc, "headers", None))


async def _read_uploads(files: Sequence[UploadFile], form_field: str = "files") -> dict[str, bytes]:
    """``{file name: bytes}`` of the uploads of ``form_field``; a file name sent twice is an error."""
    uploads: dict[str, bytes] = {}
    for upload in files:
        name = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1]
        if not name:
            raise ApiError(422, "bad_input", f"an upload in form field '{form_field}' has no file name; send "
                           "it as a file with its name (e.g. curl -F 'files=@X_t1.nii.gz').")
        if name in uploads:
            raise ApiError(422, "bad_input", f"{name}: sent twice; send each file once.")
        uploads[name] = await upload.read()
        await upload.close()
    return uploads


async def _run(request: Request, job: Callable[[], Any]) -> Any:
    """Run ``job`` through the work queue, mapping failures to JSON errors."""
    app = request.app
    try:
        return await app.state.queue.run(job, app.state.settings.timeout_s)
    except QueueFull as exc:
        raise ApiError(429, "busy", busy_message(app.state.queue), {"Retry-After": str(exc.retry_after)}) from exc
    except JobTimeout as exc:
        raise ApiError(504, "timeout", f"{exc} (--timeout / BRATS_API_TIMEOUT_S); retry without tta, or when the "
                       "server is less busy.") from exc
    except (CaseError, NiftiError) as exc:
        raise ApiError(422, "bad_input", str(exc)) from exc
    except ModelLoadError as exc:
        raise ApiError(503, "model_unavailable", str(exc)) from exc
    except MemoryError as exc:  # the CLI's advice
        raise ApiError(422, "bad_input", "out of memory while processing the upload; its volumes are too large - "
                       "resample them to about 1 mm (BraTS: 240 x 240 x 155).") from exc
    except ValueError as exc:
        raise ApiError(422, "bad_input", str(exc)) from exc
    except Exception as exc:  # a bug: log it, answer JSON
        log.exception("job failed")
        raise ApiError(500, "internal_error", f"{type(exc).__name__}: {exc}; see the server log.") from exc


def _model_job(request: Request, kind: str, work: Callable[[Any], Any]) -> Callable[[], Any]:
    """A job that gets the model of ``kind`` (loaded once) and runs ``work(model)``."""
    store: ModelStore = request.app.state.models
    return lambda: work(store.get(kind))


def _add_routes(app: FastAPI) -> None:
    key_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="needed when BRATS_API_KEY is set")
    secured = [Security(key_scheme)]  # documents the header; the Guard middleware enforces it

    async def segment_result(request: Request, files: list[UploadFile], labels: str, tta: bool, force: bool,
                             probabilities: bool = False):
        uploads = await _read_uploads(files)
        return await _run(request, _model_job(request, "unet",
                                              partial(_segment, uploads, labels, tta, force, probabilities)))

    @app.post("/segment", dependencies=secured, response_class=Response,
              responses={200: {"content": {"application/gzip": {}}, "description": "label map .nii.gz"}})
    async def segment(request: Request, files: Files, labels: Labels = "2020", tta: bool = False,
                      force: bool = False) -> Response:
        """Segment a case; returns the uint8 label map (source affine and header), volumes in ``X-Volumes-ML``,
        the checks' warnings in ``X-Warnings`` (JSON lists). ``force`` segments a case the checks refuse."""
        result = await segment_result(request, files, labels, tta, force)
        name = f"{safe_name(result.case)}{'_seg' if labels == '2020' else '-seg'}.nii.gz"
        return Response(result.nii_gz, media_type="application/gzip", headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "X-Volumes-ML": json.dumps(result.volumes_ml, separators=(",", ":")),
            "X-Warnings": json.dumps(result.warnings, separators=(",", ":")),
            "X-Case": safe_name(result.case), "X-Labels": labels, "X-Seconds": f"{result.seconds:.3f}"})

    @app.post("/segment.json", dependencies=secured)
    async def segment_json(request: Request, files: Files, labels: Labels = "2020", tta: bool = False,
                           force: bool = False, include_seg: bool = False,
                           include_probabilities: bool = False) -> dict[str, Any]:
        """Segment a case; returns volumes (mL), Dice/HD95 against an uploaded seg, warnings, optionally the map
        and the WT/TC/ET probability map (4D .nii.gz, as ``core.segment --probabilities``), base64."""
        result = await segment_result(request, files, labels, tta, force, include_probabilities)
        body = result.summary()
        if include_seg:
            body["seg_nii_gz_base64"] = base64.b64encode(result.nii_gz).decode("ascii")
        if include_probabilities:
            body["prob_nii_gz_base64"] = base64.b64encode(result.prob_nii_gz).decode("ascii")
        return body

    @app.post("/generate", dependencies=secured, response_class=Response,
              responses={200: {"content": {"application/zip": {}}, "description": "zip of BraTS case folders"}})
    async def generate(
        request: Request,
        mask: Annotated[UploadFile, File(description="tumour label map .nii/.nii.gz (2020 or 2023 labels)")],
        files: Annotated[list[UploadFile] | None, File(description="optional host case (brain outline)")] = None,
        samples: Annotated[int, Query(ge=1)] = 1, seed: int = 0,
        temperature: Annotated[float, Query(ge=0.0, le=5.0)] = 1.0, naming: Labels = "2020",
    ) -> Response:
        """CVAE cases whose tumour is ``mask``: a zip of ``samples`` BraTS-named case folders (warnings in
        ``X-Warnings``)."""
        limit = request.app.state.settings.max_samples
        if samples > limit:
            raise ApiError(422, "bad_input", f"samples={samples} is more than this server's limit of {limit}; "
                           "ask for fewer per request (BRATS_API_MAX_SAMPLES raises it).")
        mask_uploads = await _read_uploads([mask], "mask")
        host = await _read_uploads(files) if files else None
        (mask_name, mask_bytes), = mask_uploads.items()
        work = partial(_generate, mask_name, mask_bytes, host, samples, seed, temperature, naming)
        data, warnings = await _run(request, _model_job(request, "cvae", work))
        return Response(data, media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="cvae-s{seed}.zip"',
                                 "X-Warnings": json.dumps(warnings, separators=(",", ":"))})

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        """Liveness: loaded models and the work queue (never needs the API key)."""
        return {"status": "ok", "models_loaded": request.app.state.models.loaded(),
                "queue": request.app.state.queue.stats()}

    @app.get("/models", dependencies=secured)
    async def models(request: Request) -> dict[str, Any]:
        """The weights files in use and their model cards."""
        out = {}
        for kind in MODEL_KINDS:
            path, from_env = weights_path(kind)
            entry: dict[str, Any] = {"path": str(path), "from_env": from_env, "exists": path.is_file(),
                                     "loaded": kind in request.app.state.models.loaded()}
            try:
                entry["card"] = load_model_card(path)
            except ModelLoadError as exc:
                entry["card"], entry["card_error"] = None, str(exc)
            out[kind] = entry
        return out


def _segment(uploads: dict[str, bytes], labels: str, tta: bool, force: bool, probabilities: bool, model: Any):
    return segment_upload(uploads, model, labels=labels, tta=tta, force=force, probabilities=probabilities)


def _generate(mask_name: str, mask_bytes: bytes, host: dict[str, bytes] | None, samples: int, seed: int,
              temperature: float, naming: str, model: Any) -> tuple[bytes, list[str]]:
    return generate_upload(mask_name, mask_bytes, host, model, samples=samples, seed=seed,
                           temperature=temperature, naming=naming)


# ------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``python -m serve.api``."""
    p = argparse.ArgumentParser(prog="python -m serve.api", description="BraTS Studio REST API (FastAPI + uvicorn).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s; 0.0.0.0 = all)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    p.add_argument("--workers", type=int, help="jobs run at once (default BRATS_API_WORKERS or 1)")
    p.add_argument("--queue", type=int, help="jobs that may wait before 429 (default BRATS_API_QUEUE or 4)")
    p.add_argument("--timeout", type=float, help="seconds per request (default BRATS_API_TIMEOUT_S or 600)")
    p.add_argument("--max-upload-mb", type=float, help="request body limit (default BRATS_API_MAX_UPLOAD_MB or 1024)")
    p.add_argument("--no-preload", action="store_true", help="load the models on first use, not at start-up")
    return p


def settings_from_args(args: argparse.Namespace, env: dict[str, str] | None = None) -> ApiSettings:
    """Environment settings overridden by the flags given."""
    settings = ApiSettings.from_env(env)
    flags = {"workers": args.workers, "max_waiting": args.queue, "timeout_s": args.timeout,
             "max_upload_mb": args.max_upload_mb}
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
