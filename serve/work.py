"""Bounded work queue and once-loaded models for the REST API.

The API never runs a model on the event loop: every job goes to a small thread pool through a
:class:`WorkQueue` that holds at most ``workers + max_waiting`` jobs, uploads still arriving included
(:meth:`WorkQueue.reserve` takes a slot before the body is read). A job that does not fit is refused
at once (:class:`QueueFull`, the API answers 429 with ``Retry-After``) instead of piling up. Segmentation jobs
(``serve.manager``) run in worker processes and are cancelled by killing them; a :meth:`WorkQueue.run` job that
does not finish in time is abandoned (:class:`JobTimeout`): cancelled if it has not started, otherwise it finishes
in the background and keeps its slot until then (the CVAE's ``/generate``).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
DEFAULT_JOB_SECONDS = 15.0  # Retry-After estimate before any job has finished (one shipped-model segmentation)
MODEL_KINDS: tuple[str, ...] = ("unet", "cvae")


class QueueFull(RuntimeError):
    """Every slot of the work queue is taken; ``retry_after`` is a wait estimate in seconds."""

    def __init__(self, retry_after: int, capacity: int) -> None:
        super().__init__(f"the server is busy: all {capacity} job slots are taken; retry in about {retry_after} s")
        self.retry_after = retry_after


class JobTimeout(RuntimeError):
    """A job did not finish within its time limit."""


class WorkQueue:
    """A thread pool that accepts at most ``workers + max_waiting`` jobs at a time.

    Args:
        workers: jobs that run at once (model runs are CPU-bound: 1 is right for a few cores).
        max_waiting: jobs that may wait for a worker; more are refused with :class:`QueueFull`.
    """

    def __init__(self, workers: int = 1, max_waiting: int = 4) -> None:
        if workers < 1 or max_waiting < 0:
            raise ValueError(f"workers must be >= 1 and max_waiting >= 0, got {workers} and {max_waiting}")
        self.workers = workers
        self.max_waiting = max_waiting
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="brats-api-job")
        self._lock = threading.Lock()
        self._pending = 0  # accepted and not yet finished (running + waiting + reserved for uploads)
        self._reserved = 0  # slots held by requests whose upload is still arriving
        self._running = 0
        self._durations: deque[float] = deque(maxlen=20)
        self.completed = 0
        self.refused = 0

    @property
    def capacity(self) -> int:
        """Jobs accepted at once (running + waiting)."""
        return self.workers + self.max_waiting

    def stats(self) -> dict[str, int]:
        """Counts for ``/health``: running, waiting, capacity, completed, refused."""
        with self._lock:
            return {"running": self._running, "waiting": self._pending - self._running - self._reserved,
                    "uploading": self._reserved, "workers": self.workers,
                    "max_waiting": self.max_waiting, "completed": self.completed, "refused": self.refused}

    def full(self) -> bool:
        """True when a job submitted now would be refused."""
        with self._lock:
            return self._pending >= self.capacity

    def refuse(self) -> int:
        """Count a request refused before submitting (the API's early check); returns :meth:`retry_after`."""
        with self._lock:
            self.refused += 1
            return self.retry_after()

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: mean job time x queued jobs / workers (1..600)."""
        mean = sum(self._durations) / len(self._durations) if self._durations else DEFAULT_JOB_SECONDS
        return int(min(600, max(1, math.ceil(mean * max(1, self._pending) / self.workers))))

    def reserve(self) -> None:
        """Hold a slot for a request whose upload is about to be read; :class:`QueueFull` when none is free.

        Pass ``reserved=True`` to :meth:`submit` to use it, or :meth:`unreserve` when the upload fails.
        """
        with self._lock:
            if self._pending >= self.capacity:
                self.refused += 1
                raise QueueFull(self.retry_after(), self.capacity)
            self._pending += 1
            self._reserved += 1

    def unreserve(self) -> None:
        """Give back a slot taken by :meth:`reserve` (the upload failed)."""
        with self._lock:
            self._pending -= 1
            self._reserved -= 1

    def submit(self, fn: Callable[[], T], *, reserved: bool = False, force: bool = False) -> Future[T]:
        """Queue ``fn`` or raise :class:`QueueFull` at once when every slot is taken.

        Args:
            reserved: use the slot a :meth:`reserve` took.
            force: accept even past the capacity (jobs accepted before a server restart).
        """
        with self._lock:
            if reserved:
                self._reserved -= 1
            else:
                if self._pending >= self.capacity and not force:
                    self.refused += 1
                    raise QueueFull(self.retry_after(), self.capacity)
                self._pending += 1
        try:
            future = self._pool.submit(self._timed, fn)
        except RuntimeError:  # pool shut down
            self._release(None)
            raise
        future.add_done_callback(self._release)  # runs on completion *and* on cancellation
        return future

    async def run(self, fn: Callable[[], T], timeout: float, *, reserved: bool = False) -> T:
        """Run ``fn`` in the pool and await it; :class:`JobTimeout` after ``timeout`` seconds."""
        future = self.submit(fn, reserved=reserved)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError as exc:
            future.cancel()  # only succeeds while it waits; a running job keeps its slot until it ends
            raise JobTimeout(f"the job did not finish within {timeout:g} s") from exc

    def shutdown(self) -> None:
        """Stop accepting jobs, drop waiting ones and wait for the running ones."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _timed(self, fn: Callable[[], T]) -> T:
        with self._lock:
            self._running += 1
        start = time.perf_counter()
        try:
            return fn()
        finally:
            with self._lock:
                self._running -= 1
                self._durations.append(time.perf_counter() - start)
                self.completed += 1

    def _release(self, _future: Future | None) -> None:
        with self._lock:
            self._pending -= 1


class ModelStore:
    """The CVAE, loaded once (on first use or at start-up) and then kept, in the server process.

    The U-Net is not here: it runs in ``serve.runner``'s worker processes, so a cancel can stop it.

    Paths come from ``core.io.weights.weights_path`` (``BRATS_UNET_WEIGHTS`` / ``BRATS_CVAE_WEIGHTS`` override
    the shipped files). A failed load is not remembered: the next request tries again, so fixing the file
    fixes the server.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, Any] = {}
        self.load_seconds: dict[str, float] = {}

    def loaded(self) -> list[str]:
        """Kinds already in memory."""
        return sorted(self._models)

    def get(self, kind: str) -> Any:
        """The model of ``kind`` (``"cvae"``), loading it on first use.

        Raises:
            ModelLoadError: the weights file is missing, corrupt or the wrong model (message names the file).
            ValueError: any other kind (the U-Net is ``serve.runner.SegmentPool``'s).
        """
        if kind != "cvae":
            raise ValueError(f"model kind {kind!r}: this store holds the CVAE; the U-Net runs in serve.runner's "
                             "worker processes")
        with self._lock:
            if kind not in self._models:
                from core.io.weights import weights_path
                from core.synthesis.generate import load_cvae

                path, _ = weights_path(kind)
                start = time.perf_counter()
                self._models[kind] = load_cvae(path)
                self.load_seconds[kind] = time.perf_counter() - start
            return self._models[kind]
