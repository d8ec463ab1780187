"""The API's contract: the one error body, typed JSON responses, and exceptions mapped to errors.

Every failure is ``{"error": kind, "detail": message, "status": code}`` (:class:`ErrorBody`); :func:`error_for`
maps the exceptions of a job (``core`` checks, model loading, memory, bugs) to it the same way in the server and
in its worker processes, and :func:`redact_paths` keeps server paths out of what a client sees.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from core.io.case import CaseError
from core.io.nifti import NiftiError
from core.io.weights import WEIGHTS_ENV, ModelLoadError, weights_path

JobStatusName = Literal["queued", "running", "done", "failed", "cancelled", "deleted"]
API_KEY_HEADER = "X-API-Key"
ROUTE_PREFIXES = ("jobs", "segment", "generate", "docs", "static", "health", "ready", "models", "openapi")
_ABS_PATH = re.compile(r"(?<![\w.:/~-])/((?:[\w.+@~-]+/)+)([\w.+@~-]+)")


class ApiError(Exception):
    """An error answered as ``{"error", "detail", "status"}`` JSON."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers or {}


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body every failure uses."""
    return JSONResponse({"error": error, "detail": detail, "status": status}, status_code=status, headers=headers)


def busy_message(queue: Any) -> str:
    """The 429 message for a ``serve.work.WorkQueue`` with every slot taken."""
    return (f"the server is busy: all {queue.capacity} job slots are taken ({queue.workers} running, "
            f"{queue.max_waiting} waiting or uploading); retry after the Retry-After seconds, or start the server "
            "with a longer queue (--queue / BRATS_API_QUEUE).")


class ErrorBody(BaseModel):
    """Every error response (4xx/5xx) of every route."""

    error: str = Field(description="machine-readable kind, e.g. bad_input, busy, upload_too_large")
    detail: str = Field(description="what went wrong, naming the file and the fix")
    status: int = Field(description="the HTTP status code, repeated")


ERROR_TEXT: dict[int, str] = {
    400: "the client closed the connection during the upload (client_disconnected)",
    401: "missing or wrong X-API-Key (unauthorized)",
    404: "no such job, or its result expired (not_found)",
    409: "the job has no such result yet or failed (not_ready / job_failed / no_probabilities)",
    413: "a file or the whole upload is over its limit, checked while it arrives (upload_too_large)",
    422: "malformed request or a case the checks refuse; the message names the file and the fix "
         "(invalid_request / bad_input)",
    429: "every job slot is taken, uploads in progress included; see Retry-After (busy)",
    500: "a bug; see the server log under the X-Request-ID (internal_error / worker_died)",
    503: "the model could not be loaded (model_unavailable) or is not loaded yet (not_ready)",
    504: "the synchronous request ran past --timeout; its job was cancelled (timeout)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for ``codes``, all with the :class:`ErrorBody` schema."""
    return {code: {"model": ErrorBody, "description": ERROR_TEXT[code]} for code in codes}


class ModelInfo(BaseModel):
    """The weights a result was computed with."""

    name: str = Field(description="weights file name (no server path)")
    sha256: str = Field(description="SHA-256 of the weights file's bytes")


class RegionMetrics(BaseModel):
    """Dice and HD95 (mm; null when a region is empty) of one region against the uploaded seg."""

    model_config = {"extra": "allow"}
    dice: float | None = None
    hd95: float | None = None


class SegmentSummary(BaseModel):
    """A segmentation's measurements (``/segment.json``, ``GET /jobs/{id}/result?format=json``)."""

    case: str
    labels: Literal["2020", "2023"]
    shape: list[int]
    spacing_mm: list[float]
    volumes_ml: dict[str, float] = Field(description="WT, TC, ET volumes in mL")
    class_volumes_ml: dict[str, float]
    metrics: dict[str, RegionMetrics] | None = Field(description="against the uploaded seg, when one was sent")
    seconds: float
    tta: bool
    files: dict[str, str] = Field(description="modality -> uploaded file name")
    warnings: list[str]
    model: ModelInfo
    seg_nii_gz_base64: str | None = Field(None, description="the label map, when include_seg=true")
    prob_nii_gz_base64: str | None = Field(None, description="the WT/TC/ET probability map, when asked")


class JobTimings(BaseModel):
    """Unix times (s) and durations of a job."""

    created_at: float
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    wait_seconds: float | None = None
    run_seconds: float | None = None


class JobStatus(BaseModel):
    """An asynchronous job (``POST /jobs``, ``GET /jobs/{id}``, ``DELETE /jobs/{id}``)."""

    id: str
    status: JobStatusName
    progress: float = Field(0.0, description="0..1")
    message: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    timings: JobTimings | None = None
    attempts: int = Field(0, description="runs started (more than 1 after a server restart)")
    error: ErrorBody | None = None
    result: str | None = Field(None, description="URL of the result once done")
    model: ModelInfo | None = None


class QueueStats(BaseModel):
    running: int
    waiting: int
    uploading: int
    workers: int
    max_waiting: int
    completed: int
    refused: int


class Health(BaseModel):
    """Liveness: the process answers (says nothing about the model; see ``/ready``)."""

    status: Literal["ok"]
    models_loaded: list[str]
    queue: QueueStats


class Ready(BaseModel):
    """Readiness: the U-Net is loaded in its worker process(es)."""

    status: Literal["ready"]
    model: ModelInfo


class ModelEntry(BaseModel):
    file: str = Field(description="weights file name (no server path)")
    from_env: bool
    exists: bool
    loaded: bool
    sha256: str | None = None
    card: dict[str, Any] | None = None
    card_error: str | None = None


def redact_paths(text: str) -> str:
    """``text`` with absolute server paths reduced to their last component (``/a/b/unet.keras`` -> ``unet.keras``).

    The weights files, the temp folder, the working folder and home are replaced first; then any other
    ``/x/y/...`` path that is not an API route.
    """
    known = {str(weights_path(kind)[0]) for kind in WEIGHTS_ENV}
    for path in sorted(known, key=len, reverse=True):
        if path.startswith("/"):
            text = text.replace(path, Path(path).name)
    for root in (os.getcwd(), tempfile.gettempdir(), str(Path.home())):
        if len(root) > 1:
            text = text.replace(root + "/", "")

    def short(match: re.Match) -> str:
        first = match.group(1).split("/", 1)[0]
        return match.group(0) if first in ROUTE_PREFIXES else match.group(2)

    return _ABS_PATH.sub(short, text)


def redact(value: Any) -> Any:
    """:func:`redact_paths` applied to every string inside a JSON-like value."""
    if isinstance(value, str):
        return redact_paths(value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def error_for(exc: BaseException) -> tuple[int, str, str]:
    """``(status, error, detail)`` of a job's exception, as the API answers it."""
    if isinstance(exc, ModelLoadError):
        detail = str(exc).replace("pass the path of a .keras file (--weights)",
                                  "point BRATS_UNET_WEIGHTS (the U-Net) or BRATS_CVAE_WEIGHTS (the CVAE) at a "
                                  ".keras file and restart the server")
        return 503, "model_unavailable", redact_paths(detail)
    if isinstance(exc, (CaseError, NiftiError, ValueError)):
        return 422, "bad_input", redact_paths(str(exc))
    if isinstance(exc, MemoryError):  # the CLI's advice
        return 422, "bad_input", ("out of memory while processing the upload; its volumes are too large - "
                                  "resample them to about 1 mm (BraTS: 240 x 240 x 155).")
    return 500, "internal_error", redact_paths(f"{type(exc).__name__}: {exc}; see the server log.")
