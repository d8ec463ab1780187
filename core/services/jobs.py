"""Long runs (segmentation, generation) in background threads that outlive a page or a browser reload.

A :class:`Job` runs a function in a daemon thread; the function reports progress through
``job.progress(fraction, message)``, which raises :class:`JobCancelled` once :meth:`Job.cancel`
was called, so a cancel takes effect at the next progress report. The :class:`JobRegistry` keys
jobs by ``(session id, kind)``: the page that started a run can be left, reloaded or reopened and
still finds it, and the result is collected once (:meth:`JobRegistry.collect`). No streamlit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"


class JobCancelled(Exception):
    """Raised inside a job's function by ``progress`` after a cancel request."""


@dataclass
class Job:
    """One background run and what the pages show of it."""

    sid: str
    kind: str
    case_id: str
    label: str
    fraction: float = 0.0
    message: str = "starting…"
    status: str = RUNNING
    result: Any = None
    error: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None
    collected: bool = False
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def running(self) -> bool:
        """Whether the job has not finished yet."""
        return self.status == RUNNING

    @property
    def elapsed(self) -> float:
        """Seconds since the start (until the end once finished)."""
        return (self.finished or time.time()) - self.started

    def progress(self, fraction: float, message: str) -> None:
        """Progress callback for the job's function; raises :class:`JobCancelled` after a cancel."""
        if self._cancel.is_set():
            raise JobCancelled()
        self.fraction = float(min(max(fraction, 0.0), 1.0))
        self.message = message

    def cancel(self) -> None:
        """Ask the job to stop at its next progress report."""
        self._cancel.set()
        if self.running:
            self.message = "cancelling…"

    @property
    def cancel_requested(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job finishes (or ``timeout`` s); returns whether it finished."""
        deadline = None if timeout is None else time.time() + timeout
        while self.running:
            if deadline is not None and time.time() >= deadline:
                return False
            time.sleep(0.05)
        return True


class JobRegistry:
    """The server's jobs, at most one running per ``(session id, kind)``."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, str], Job] = {}
        self._lock = threading.Lock()

    def start(self, sid: str, kind: str, case_id: str, label: str, function: Callable[[Job], Any]) -> Job:
        """Run ``function(job)`` in a background thread; its return value becomes ``job.result``.

        Raises:
            RuntimeError: a job of this kind is already running for the session.
        """
        with self._lock:
            current = self._jobs.get((sid, kind))
            if current is not None and current.running:
                raise RuntimeError(f"a {kind} run is already going on ({current.label})")
            job = Job(sid, kind, case_id, label)
            self._jobs[(sid, kind)] = job

        def run() -> None:
            try:
                job.result = function(job)
                job.fraction, job.status = 1.0, DONE
            except JobCancelled:
                job.status = CANCELLED
            except Exception as exc:  # reported to the user by the page that collects it
                job.error = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
                job.status = FAILED
            finally:
                job.finished = time.time()

        threading.Thread(target=run, name=f"brats-{kind}-{sid[:6]}", daemon=True).start()
        return job

    def get(self, sid: str, kind: str) -> Job | None:
        """The session's latest job of a kind (running or finished), if any."""
        return self._jobs.get((sid, kind))

    def running(self, sid: str) -> list[Job]:
        """The session's running jobs."""
        return [job for (s, _), job in list(self._jobs.items()) if s == sid and job.running]

    def forget(self, sid: str) -> None:
        """Cancel the session's running jobs and drop all its jobs with their results (nothing is collected)."""
        with self._lock:
            for key in [key for key in self._jobs if key[0] == sid]:
                self._jobs.pop(key).cancel()

    def busy_sessions(self) -> set[str]:
        """Session ids with a job running now (their saved work must not be cleaned up)."""
        return {s for (s, _), job in list(self._jobs.items()) if job.running}

    def collect(self, sid: str) -> list[Job]:
        """The session's finished jobs not collected yet (each is returned once)."""
        out = []
        with self._lock:
            for (s, _), job in self._jobs.items():
                if s == sid and not job.running and not job.collected:
                    job.collected = True
                    out.append(job)
        return out
