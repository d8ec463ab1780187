"""The API's jobs on disk: one folder per job id, its state in ``state.json`` written atomically.

Layout of ``<jobs dir>/<id>/``: ``state.json`` (status, parameters, progress, timings, error, result summary),
``inputs/files/…`` (the upload, stored before the job is accepted) and ``result/`` (``seg.nii.gz``,
``prob.nii.gz`` when asked, ``summary.json``). Every write goes to a temporary file then ``os.replace``, so a
crash (even ``kill -9``) leaves either the old or the new state, never a torn one; a server restarted on the
same folder serves finished results and runs queued/running jobs again (:meth:`JobStore.recoverable`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

STATUSES: tuple[str, ...] = ("receiving", "queued", "running", "done", "failed", "cancelled")
FINISHED: frozenset[str] = frozenset({"done", "failed", "cancelled"})
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace`` (never a partial file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


class JobStore:
    """Job folders under ``root``; every state change goes through :meth:`update` (thread-safe)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def folder(self, job_id: str) -> Path:
        """The folder of ``job_id``; ``KeyError`` for an id that is not one of ours (no path tricks)."""
        if not JOB_ID.match(job_id):
            raise KeyError(job_id)
        return self.root / job_id

    def create(self, kind: str, params: dict[str, Any], sync: bool = False) -> str:
        """A new job in state ``receiving`` (its upload not yet stored); returns its id."""
        job_id = uuid.uuid4().hex
        folder = self.folder(job_id)
        (folder / "inputs").mkdir(parents=True)
        (folder / "result").mkdir()
        state = {"id": job_id, "kind": kind, "status": "receiving", "sync": sync, "params": params,
                 "progress": 0.0, "message": "", "created_at": time.time(), "queued_at": None, "started_at": None,
                 "finished_at": None, "attempts": 0, "error": None, "result": None}
        write_atomic(folder / "state.json", json.dumps(state).encode())
        return job_id

    def get(self, job_id: str) -> dict[str, Any]:
        """The state of ``job_id``; ``KeyError`` when unknown or expired."""
        try:
            return json.loads((self.folder(job_id) / "state.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise KeyError(job_id) from exc

    def update(self, job_id: str, **changes: Any) -> dict[str, Any]:
        """Apply ``changes`` to the state and write it atomically; returns the new state."""
        with self._lock:
            state = self.get(job_id)
            state.update(changes)
            write_atomic(self.folder(job_id) / "state.json", json.dumps(state).encode())
            return state

    def delete(self, job_id: str) -> None:
        """Remove the job's folder (no error when already gone)."""
        with self._lock:
            shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def ids(self) -> list[str]:
        """Ids of every job folder, oldest first."""
        found = [p for p in self.root.iterdir() if p.is_dir() and JOB_ID.match(p.name)]
        return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime)]

    def recoverable(self) -> tuple[list[str], list[str]]:
        """After a restart: ``(ids to run again, ids removed)``.

        Accepted asynchronous jobs that were queued or running run again; a job still ``receiving`` (its upload
        cut by the crash), a synchronous job (its client is gone with the connection) and the ``uploads`` folder
        of ``/generate`` are removed.
        """
        rerun, removed = [], []
        shutil.rmtree(self.root / "uploads", ignore_errors=True)  # /generate uploads cut by the crash
        for job_id in self.ids():
            try:
                state = self.get(job_id)
            except KeyError:
                self.delete(job_id)
                removed.append(job_id)
                continue
            if state["status"] in FINISHED:
                continue
            if state["status"] == "receiving" or state.get("sync"):
                self.delete(job_id)
                removed.append(job_id)
            else:
                self.update(job_id, status="queued", progress=0.0, message="requeued after a server restart")
                rerun.append(job_id)
        return rerun, removed
