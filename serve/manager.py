"""The API's segmentation jobs: accepted on disk, run through the work queue in worker processes, cancellable.

:class:`JobManager` ties :class:`serve.store.JobStore` (the job folders), :class:`serve.work.WorkQueue`
(admission: 429 when every slot is taken) and :class:`serve.runner.SegmentPool` (the U-Net processes) together.
Asynchronous jobs (``POST /jobs``) and the synchronous routes (``/segment``, ``/segment.json``: a job awaited in
the request, cancelled at its timeout, removed once answered) take the same path. On start-up
:meth:`JobManager.recover` runs again the jobs a crashed server had accepted.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

from serve.runner import JobCancelled, JobFailed, SegmentPool
from serve.store import FINISHED, JobStore
from serve.work import WorkQueue

log = logging.getLogger("serve.jobs")


class JobManager:
    """Accept, run, cancel, await and expire segmentation jobs."""

    def __init__(self, store: JobStore, queue: WorkQueue, pool: SegmentPool) -> None:
        self.store, self.queue, self.pool = store, queue, pool
        self._live: dict[str, tuple[Future, threading.Event]] = {}
        self._lock = threading.Lock()
        self.closing = False

    def accept(self, job_id: str, *, reserved: bool = True, force: bool = False) -> None:
        """Queue a job whose upload is stored (it holds the slot :meth:`WorkQueue.reserve` took)."""
        self.store.update(job_id, status="queued", queued_at=time.time())
        cancel = threading.Event()
        with self._lock:
            future = self.queue.submit(lambda: self._execute(job_id, cancel), reserved=reserved, force=force)
            self._live[job_id] = (future, cancel)
        future.add_done_callback(lambda f: self._finished(job_id, f))
        log.info("job %s queued", job_id)

    def recover(self) -> list[str]:
        """Run again the jobs a previous server accepted (queued or running when it stopped); returns their ids."""
        rerun, removed = self.store.recoverable()
        for job_id in rerun:
            self.accept(job_id, reserved=False, force=True)
        if rerun or removed:
            log.info("recovered %d job(s) from %s; removed %d unfinished upload(s)", len(rerun), self.store.root,
                     len(removed))
        return rerun

    def _finished(self, job_id: str, future: Future) -> None:
        with self._lock:
            self._live.pop(job_id, None)
        if future.cancelled():  # cancelled while it waited for a worker
            self._set_cancelled(job_id)

    def _set_cancelled(self, job_id: str) -> None:
        try:
            if self.closing:  # stopped by a server shutdown, not by its client: it runs again at the next start
                self.store.update(job_id, status="queued", message="interrupted by a server shutdown")
            else:
                self.store.update(job_id, status="cancelled", finished_at=time.time(), message="cancelled")
        except KeyError:
            pass

    def shutdown(self) -> None:
        """Stop every job (accepted ones stay queued on disk for the next start) and the worker processes."""
        self.closing = True
        self.pool.close()
        with self._lock:
            live = list(self._live.values())
        for future, event in live:
            event.set()
            future.cancel()
        self.queue.shutdown()
        self.pool.shutdown()

    def _execute(self, job_id: str, cancel: threading.Event) -> None:
        if cancel.is_set():
            self._set_cancelled(job_id)
            return
        state = self.store.get(job_id)
        self.store.update(job_id, status="running", started_at=time.time(), attempts=state["attempts"] + 1,
                          message="starting")

        def progress(fraction: float, message: str) -> None:
            self.store.update(job_id, progress=round(float(fraction), 3), message=message)

        try:
            summary = self.pool.run(self.store.folder(job_id), state["params"], progress, cancel)
        except JobCancelled:
            self._set_cancelled(job_id)
            log.info("job %s cancelled", job_id)
        except JobFailed as exc:
            self.store.update(job_id, status="failed", finished_at=time.time(), message=exc.error,
                              error={"error": exc.error, "detail": exc.detail, "status": exc.status})
            log.info("job %s failed: %s", job_id, exc.detail)
        except Exception as exc:  # a bug in the manager itself
            log.exception("job %s failed", job_id)
            self.store.update(job_id, status="failed", finished_at=time.time(), message="internal_error",
                              error={"error": "internal_error", "detail": f"{type(exc).__name__}: {exc}; see the "
                                     "server log.", "status": 500})
        else:
            self.store.update(job_id, status="done", finished_at=time.time(), progress=1.0, message="done",
                              result=summary)
            log.info("job %s done in %.1f s", job_id, summary.get("seconds", 0.0))

    def cancel(self, job_id: str) -> bool:
        """Ask a queued or running job to stop; ``False`` when it was not live (finished or unknown)."""
        with self._lock:
            live = self._live.get(job_id)
        if live is None:
            return False
        future, event = live
        event.set()
        future.cancel()  # succeeds only while it waits; a running job's worker process is killed by the runner
        return True

    async def wait(self, job_id: str, timeout: float | None) -> dict[str, Any]:
        """Await the job's end (at most ``timeout`` s: ``TimeoutError``); returns its state."""
        with self._lock:
            live = self._live.get(job_id)
        if live is not None:
            done, _ = await asyncio.wait({asyncio.wrap_future(live[0])}, timeout=timeout)
            if not done:
                raise TimeoutError(job_id)
        return self.store.get(job_id)

    def expire(self, ttl_s: float) -> list[str]:
        """Remove finished jobs older than ``ttl_s`` (never a live one)."""
        with self._lock:
            live = set(self._live)
        gone = []
        for job_id in self.store.ids():
            if job_id in live:
                continue
            try:
                state = self.store.get(job_id)
            except KeyError:
                continue
            if state["status"] in FINISHED and (state.get("finished_at") or time.time()) + ttl_s < time.time():
                self.store.delete(job_id)
                gone.append(job_id)
        return gone
