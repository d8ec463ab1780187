"""Segmentation in worker processes that hold the U-Net, so a running job can be stopped at once.

``core.segmentation.pipeline.segment`` reports progress only between stages (one whole-volume forward pass is a
single call of up to tens of seconds), so a job in a thread cannot be cancelled in time. Each
:class:`ProcessWorker` is a ``spawn``-ed child that loads the U-Net once (and hashes its file), then runs the jobs
sent to it on a pipe: it reads the stored upload of a job folder, segments it through
:func:`serve.jobs.segment_upload` and writes the results into the folder atomically. Cancelling a running job
kills the child (SIGTERM, then SIGKILL) - its worker is free within a second and a fresh child loads the model in
the background. A child exits by itself when the server dies (it watches its parent), and ignores SIGINT (Ctrl-C
in the server's terminal is the server's to handle).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serve.contract import error_for
from serve.store import write_atomic
from serve.uploads import stored_files

log = logging.getLogger("serve.runner")
RESULT_SEG, RESULT_PROB, RESULT_SUMMARY = "seg.nii.gz", "prob.nii.gz", "summary.json"
Progress = Callable[[float, str], None]


class JobCancelled(Exception):
    """The job was cancelled (``DELETE /jobs/{id}`` or a synchronous request's timeout)."""


class JobFailed(Exception):
    """A job ended with an error: ``status``, ``error`` kind, ``detail`` (the API's error body)."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def run_stored_job(folder: Path, params: dict[str, Any], model: Any, model_info: dict[str, str],
                   progress: Progress | None = None) -> dict[str, Any]:
    """Segment the upload stored in ``folder/inputs`` and write ``folder/result``; returns the summary."""
    from serve.jobs import segment_upload

    uploads = {name: path.read_bytes() for name, path in stored_files(folder / "inputs").items()}
    result = segment_upload(uploads, model, labels=params.get("labels", "2020"), tta=bool(params.get("tta")),
                            force=bool(params.get("force")), probabilities=bool(params.get("probabilities")),
                            progress=progress)
    out = folder / "result"
    write_atomic(out / RESULT_SEG, result.nii_gz)
    if result.prob_nii_gz is not None:
        write_atomic(out / RESULT_PROB, result.prob_nii_gz)
    summary = {**result.summary(), "model": model_info}
    write_atomic(out / RESULT_SUMMARY, json.dumps(summary).encode())
    return summary


def _watch_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(3)  # the server is gone: no orphan keeps the model in memory

    threading.Thread(target=watch, daemon=True, name="watch-parent").start()


def _child(conn: Any, weights: str, parent: int) -> None:
    """The worker process: load the U-Net, then run jobs from ``conn`` until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_parent(parent)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from core.io.weights import file_sha256
        from core.segmentation.inference import load_model

        start = time.perf_counter()
        model = load_model(weights, warm=True)  # a worker serves many jobs: auto picks the faster forward
        info = {"name": Path(weights).name, "sha256": file_sha256(weights)}
        conn.send(("ready", {**info, "load_seconds": round(time.perf_counter() - start, 2)}))
    except Exception as exc:
        conn.send(("failed", error_for(exc)))
        return
    while True:
        try:
            folder, params = conn.recv()
        except (EOFError, OSError):
            return
        try:
            summary = run_stored_job(Path(folder), params, model, info,
                                     progress=lambda f, m: conn.send(("progress", f, m)))
            conn.send(("done", summary))
        except Exception as exc:
            if error_for(exc)[0] == 500:
                logging.getLogger("serve.runner").exception("job in %s failed", folder)
            conn.send(("error", error_for(exc)))


class ProcessWorker:
    """One child process holding the U-Net; :meth:`run` sends it a job folder and waits (cancellable)."""

    def __init__(self, weights: Callable[[], Path]) -> None:
        self._weights = weights
        self._proc: Any = None
        self._conn: Any = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self.state = "stopped"  # stopped | loading | ready | failed
        self.info: dict[str, Any] | None = None
        self.error: tuple[int, str, str] | None = None
        self.closed = False  # set when the server shuts down: no new child

    def start(self) -> None:
        """Spawn the child; it loads the model in the background (:attr:`state` ``loading`` -> ``ready``)."""
        if self.closed:
            return
        ctx = mp.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(child_conn, str(self._weights()), os.getpid()), daemon=True,
                           name="brats-api-unet")
        with self._lock:
            self._ready.clear()
            self.state, self.info, self.error = "loading", None, None
            proc.start()
            child_conn.close()
            self._proc, self._conn = proc, parent_conn
        threading.Thread(target=self._await_load, args=(proc, parent_conn), daemon=True).start()

    def _await_load(self, proc: Any, conn: Any) -> None:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            proc.join(2)
            message = ("failed", (503, "model_unavailable", "the U-Net worker process exited while loading the model "
                                  f"(exit code {proc.exitcode}); see the server log."))
        with self._lock:
            if self._proc is not proc:
                return
            if message[0] == "ready":
                self.state, self.info = "ready", message[1]
                log.info("U-Net %s loaded in %.1f s (pid %d)", self.info["name"], self.info["load_seconds"], proc.pid)
            else:
                self.state, self.error = "failed", tuple(message[1])
                log.error("%s", self.error[2])
            self._ready.set()

    def stop(self) -> None:
        """Terminate the child (SIGTERM, SIGKILL after 3 s) and reap it."""
        with self._lock:
            proc, conn = self._proc, self._conn
            self._proc = self._conn = None
            self.state = "stopped"
            self._ready.set()
        if proc is not None:
            if proc.is_alive():
                proc.terminate()
                proc.join(3)
                if proc.is_alive():
                    proc.kill()
            proc.join(3)
        if conn is not None:
            conn.close()

    def _wait_ready(self, cancelled: threading.Event) -> None:
        if self.closed:
            raise JobCancelled
        if self.state in ("stopped", "failed"):
            self.stop()
            self.start()  # a failed load is not remembered: fixing the file fixes the server
        while not self._ready.wait(0.1):
            if cancelled.is_set():
                raise JobCancelled
        if self.state != "ready":
            raise JobFailed(*(self.error or (503, "model_unavailable", "the U-Net worker stopped")))

    def run(self, folder: Path, params: dict[str, Any], progress: Progress, cancelled: threading.Event
            ) -> dict[str, Any]:
        """Run the job stored in ``folder``; returns its summary.

        Raises:
            JobCancelled: ``cancelled`` was set (the child is killed and a new one started).
            JobFailed: the job's error, or the child died (e.g. killed by the out-of-memory killer).
        """
        self._wait_ready(cancelled)
        proc, conn = self._proc, self._conn
        conn.send((str(folder), params))
        while True:
            if cancelled.is_set():
                self.stop()
                self.start()
                raise JobCancelled
            if conn.poll(0.1):
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    message = None
                if message is None:
                    break
                if message[0] == "progress":
                    progress(message[1], message[2])
                elif message[0] == "done":
                    return message[1]
                else:
                    raise JobFailed(*message[1])
            elif not proc.is_alive():
                break
        proc.join(1)
        code = proc.exitcode
        self.stop()
        why = " (killed: most likely out of memory)" if code == -signal.SIGKILL else ""
        raise JobFailed(500, "worker_died", f"the segmentation worker process died with exit code {code}{why}; "
                        "see the server log, or send a smaller case.")


class SegmentPool:
    """``n`` :class:`ProcessWorker` s; a job takes an idle one (the work queue runs at most ``n`` at once)."""

    def __init__(self, n: int, weights: Callable[[], Path]) -> None:
        self.workers = [ProcessWorker(weights) for _ in range(n)]
        self._idle: queue.Queue[ProcessWorker] = queue.Queue()
        for worker in self.workers:
            self._idle.put(worker)

    def start(self) -> None:
        """Spawn every worker (the models load in the background; see :meth:`readiness`)."""
        for worker in self.workers:
            if worker.state == "stopped":
                worker.start()

    def run(self, folder: Path, params: dict[str, Any], progress: Progress, cancelled: threading.Event
            ) -> dict[str, Any]:
        """:meth:`ProcessWorker.run` on an idle worker."""
        worker = self._idle.get()
        try:
            return worker.run(folder, params, progress, cancelled)
        finally:
            self._idle.put(worker)

    def readiness(self) -> tuple[str, Any]:
        """``("ready", model info)``, ``("loading", None)``, ``("failed", error)`` or ``("stopped", None)``."""
        states = [w.state for w in self.workers]
        for worker in self.workers:
            if worker.state == "ready":
                return "ready", {k: worker.info[k] for k in ("name", "sha256")}
        if "loading" in states:
            return "loading", None
        failed = [w.error for w in self.workers if w.state == "failed"]
        return ("failed", failed[0]) if failed else ("stopped", None)

    def close(self) -> None:
        """Start no new child (the server is shutting down)."""
        for worker in self.workers:
            worker.closed = True

    def shutdown(self) -> None:
        """Stop every child; none is started again."""
        self.close()
        for worker in self.workers:
            worker.stop()
