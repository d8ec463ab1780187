"""Multipart uploads streamed to disk with per-file and per-request limits checked while reading.

FastAPI's ``UploadFile`` parameters receive the whole body (memory, then the temp folder) before the route runs.
:func:`receive_files` instead parses the body chunk by chunk as it arrives (``python_multipart``'s streaming parser)
and writes every file part straight into a folder; a part or a body past its limit stops the upload at once with
:class:`UploadError` (413), so an oversized upload never costs more than one chunk of memory and the limit on disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

MAX_FIELD_BYTES = 64 * 1024  # a non-file form field (parameters belong in the query string)
SAFE_FILE = re.compile(r"[^A-Za-z0-9._-]+")


class UploadError(Exception):
    """An upload refused while it was read: ``status``, ``error`` kind and a message naming the fix."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


@dataclass
class Uploaded:
    """What :func:`receive_files` stored: ``{form field: [file names]}`` and the bytes received."""

    files: dict[str, list[str]] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    total_bytes: int = 0


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.3g} MB"


class _Writer:
    """The parser callbacks: one part at a time, file parts written to ``folder/<field>/<name>``."""

    def __init__(self, folder: Path, fields: tuple[str, ...], max_file: int, max_total: int) -> None:
        self.folder, self.allowed, self.max_file, self.max_total = folder, fields, max_file, max_total
        self.result = Uploaded()
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[str, bytes] = {}
        self._name = ""
        self._file_name: str | None = None
        self._out: BinaryIO | None = None
        self._value = bytearray()
        self._size = 0

    def on_part_begin(self) -> None:
        self._headers, self._size, self._value = {}, 0, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        raw = options.get(b"filename")
        self._file_name = None
        if raw is None:
            return
        if self._name not in self.allowed:
            raise UploadError(422, "bad_input", f"unexpected form field '{self._name}': send the files as form "
                              f"field(s) {', '.join(repr(f) for f in self.allowed)}.")
        name = raw.decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
        if not name:
            raise UploadError(422, "bad_input", f"an upload in form field '{self._name}' has no file name; send "
                              "it as a file with its name (e.g. curl -F 'files=@X_t1.nii.gz').")
        names = self.result.files.setdefault(self._name, [])
        if name in names:
            raise UploadError(422, "bad_input", f"{name}: sent twice; send each file once.")
        names.append(name)
        self._file_name = name
        target = self.folder / self._name / f"{len(names):02d}_{SAFE_FILE.sub('_', name)[-120:]}"
        target.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(target, "wb")  # noqa: SIM115 - closed in on_part_end / close()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        self._size += n
        if self._file_name is None:
            if self._size > MAX_FIELD_BYTES:
                raise UploadError(413, "upload_too_large", f"form field '{self._name}' is larger than "
                                  f"{MAX_FIELD_BYTES // 1024} kB; send parameters in the query string.")
            self._value += data[start:end]
            return
        if self._size > self.max_file:
            raise UploadError(413, "upload_too_large", f"{self._file_name} is larger than the {_mb(self.max_file)} "
                              "per-file limit; send .nii.gz rather than .nii, or raise the limit (--max-file-mb / "
                              "BRATS_API_MAX_FILE_MB).")
        assert self._out is not None
        self._out.write(data[start:end])

    def on_part_end(self) -> None:
        if self._file_name is None:
            self.result.fields[self._name] = self._value.decode("utf-8", "replace")
        self.close()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def stored_files(folder: Path, form_field: str = "files") -> dict[str, Path]:
    """``{original file name: path}`` of what :func:`receive_files` stored for ``form_field``, in upload order."""
    out: dict[str, Path] = {}
    sub = folder / form_field
    if sub.is_dir():
        for path in sorted(sub.iterdir()):
            out[path.name.split("_", 1)[1]] = path
    return out


async def receive_files(request: Request, folder: Path, *, fields: tuple[str, ...] = ("files",),
                        max_file_bytes: int, max_total_bytes: int, help_text: str) -> Uploaded:
    """Stream a ``multipart/form-data`` body into ``folder`` (file parts only), checking limits as it arrives.

    Stored names keep the order and a sanitised copy of each file name; :func:`stored_files` maps them back
    to the names sent (which the case checks and messages use).

    Raises:
        UploadError: 413 past a limit (the rest of the body is read and discarded, so the client gets the
            answer instead of a reset connection), 422 for a body that is not multipart or a file without name,
            400 when the client went away.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UploadError(422, "invalid_request", f"the request body is not a multipart form; {help_text}.")
    folder.mkdir(parents=True, exist_ok=True)
    writer = _Writer(folder, fields, max_file_bytes, max_total_bytes)
    callbacks = {name: getattr(writer, name) for name in (
        "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
        "on_part_data", "on_part_end")}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    stream = request.stream()
    try:
        async for chunk in stream:
            writer.result.total_bytes += len(chunk)
            if writer.result.total_bytes > max_total_bytes:
                raise UploadError(413, "upload_too_large", f"the request body is larger than the "
                                  f"{_mb(max_total_bytes)} upload limit; send one case at a time (.nii.gz rather "
                                  "than .nii) or raise the limit (--max-upload-mb / BRATS_API_MAX_UPLOAD_MB).")
            try:
                parser.write(chunk)
            except UploadError:
                raise
            except Exception as exc:  # python_multipart.MultipartParseError and friends
                raise UploadError(422, "invalid_request",
                                  f"the request body is not a readable multipart form ({exc}); {help_text}.") from exc
        parser.finalize()
    except UploadError:
        writer.close()
        try:
            async for _ in stream:  # drain (bounded by the Guard's body limit), keeping nothing
                pass
        except (ClientDisconnect, RuntimeError):
            pass
        raise
    except ClientDisconnect as exc:
        writer.close()
        raise UploadError(400, "client_disconnected", "the client closed the connection during the upload.") from exc
    writer.close()
    return writer.result
