"""Benchmark of the REST API (not a test): N concurrent clients against a running ``serve.api``.

Starts ``python -m serve.api`` on a free loopback port (the U-Net preloaded), sends one warm-up request,
then ``--clients`` threads each POST ``--requests`` times the same case to ``/segment`` (and one ``/generate``
with the case's seg as the mask at the end, unless ``--no-generate``). Reports p50/p95/mean
latency, throughput (requests per minute), errors (any non-200 answer; must be 0: the queue holds every
client, ``--queue`` = clients), the server's start-up time and its peak RSS (sampled every 0.2 s, the
server process and its children: the U-Net lives in a worker process). ``--oversized N`` then sends N concurrent
junk bodies of ``--oversized-mb`` MB each (chunked, no Content-Length: refused while they arrive) and records the
server's RSS growth, the answers and the largest size of the jobs folder meanwhile (issue 37's 3 x 600 MB).

Usage::

    python -m core.phantom /tmp/bench_cases --count 4 --seed 5 --naming 2023
    python bench/serve/bench_serve.py --case /tmp/bench_cases/<one case> [--clients 4] [--requests 3]
                                [--weights weights/unet.keras] [--out bench/results/serve/serve.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx2 as httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.server import free_port, stop_process  # noqa: E402


class PeakRss:
    """Samples the RSS of a process and its children in a thread; ``peak_mb`` after :meth:`stop`."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.process = psutil.Process(pid)
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.process, *self.process.children(recursive=True)]
                rss = sum(p.memory_info().rss for p in procs if p.is_running())
                self.peak_mb = max(self.peak_mb, rss / 2**20)
            except psutil.Error:
                pass
            self._stop.wait(every)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


def weights_info(path: Path) -> dict:
    """Which weights were measured: sha256 prefix and the model card's step and date."""
    from core.io.weights import file_sha256, load_model_card

    card = load_model_card(path) or {}
    return {"weights_sha256": file_sha256(path)[:16],
            "weights_step": card.get("step"), "weights_created": card.get("created")}


def case_files(case: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart ``files`` entries: every NIfTI file of the case folder but the seg."""
    files = [p for p in sorted(case.iterdir()) if p.name.endswith((".nii.gz", ".nii")) and "seg" not in p.name]
    return [("files", (p.name, p.read_bytes(), "application/gzip")) for p in files]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) without numpy."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def folder_mb(folder: Path) -> float:
    """Bytes of the files under ``folder`` in MB (0 when it vanished meanwhile)."""
    total = 0
    # os.walk skips a sub-folder removed while it walks (onerror ignores it); Path.rglob raised FileNotFoundError
    for parent, _, names in os.walk(folder, onerror=lambda _error: None):
        for name in names:
            try:
                total += os.stat(os.path.join(parent, name)).st_size
            except OSError:  # removed meanwhile
                pass
    return total / 1e6


def oversized_uploads(url: str, pid: int, jobs: Path, count: int, size_mb: int) -> dict:
    """``count`` concurrent chunked junk uploads of ``size_mb`` MB: server RSS growth, answers, jobs-folder peak."""
    answers: list = []

    def upload() -> None:
        def body():
            for _ in range(size_mb):
                yield b"\0" * (1 << 20)

        try:
            with httpx.Client(timeout=600) as http:
                r = http.post(f"{url}/jobs", content=body(),
                              headers={"content-type": "multipart/form-data; boundary=b"})
                answers.append(r.status_code)
        except httpx.HTTPError as exc:
            answers.append(type(exc).__name__)

    server = psutil.Process(pid)
    before = server.memory_info().rss
    peak, disk = before, 0.0
    threads = [threading.Thread(target=upload) for _ in range(count)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, server.memory_info().rss)
        disk = max(disk, folder_mb(jobs))
        time.sleep(0.05)
    return {"uploads": count, "mb_each": size_mb, "answers": answers, "seconds": round(time.perf_counter() - start, 2),
            "server_rss_growth_mb": round((peak - before) / 2**20, 1), "jobs_dir_peak_mb": round(disk, 1)}


def run(case: Path, clients: int, requests: int, weights: Path, timeout: float, with_generate: bool = True,
        oversized: int = 0, oversized_mb: int = 600) -> dict:
    """Start the server, load it with ``clients`` x ``requests`` requests, stop it; the measurements."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BRATS_UNET_WEIGHTS": str(weights)}
    env.pop("BRATS_API_KEY", None)
    jobs = Path(tempfile.mkdtemp(prefix="bench_api_jobs_"))
    command = [sys.executable, "-m", "serve.api", "--port", str(port), "--workers", "1",
               "--queue", str(clients), "--timeout", str(timeout), "--jobs-dir", str(jobs)]
    files = case_files(case)
    upload_mb = sum(len(f[1][1]) for f in files) / 1e6
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        memory = PeakRss(server.pid)
        try:
            with httpx.Client(base_url=url, timeout=timeout) as http:
                while True:
                    try:
                        health = http.get("/health")
                        if health.status_code == 200 and "unet" in health.json()["models_loaded"]:
                            break
                    except httpx.TransportError:
                        pass
                    if server.poll() is not None or time.perf_counter() - start > 300:
                        log.seek(0)
                        raise RuntimeError(f"server did not start:\n{log.read().decode(errors='replace')[-3000:]}")
                    time.sleep(0.2)
                startup = time.perf_counter() - start
                t0 = time.perf_counter()
                warm = http.post("/segment", files=files)
                warmup_s = time.perf_counter() - t0
                if warm.status_code != 200:
                    raise RuntimeError(f"warm-up request failed: {warm.status_code} {warm.text[:500]}")
                volumes = json.loads(warm.headers["X-Volumes-ML"])
            latencies: list[float] = []
            errors: list[str] = []
            lock = threading.Lock()

            def client() -> None:
                with httpx.Client(base_url=url, timeout=timeout) as http:
                    for _ in range(requests):
                        t = time.perf_counter()
                        try:
                            r = http.post("/segment", files=files)
                            ok, what = r.status_code == 200, f"{r.status_code} {r.text[:200]}"
                        except httpx.HTTPError as exc:
                            ok, what = False, repr(exc)
                        with lock:
                            (latencies if ok else errors).append(time.perf_counter() - t if ok else what)

            threads = [threading.Thread(target=client) for _ in range(clients)]
            t_all = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t_all
            generate = None
            seg = [p for p in sorted(case.iterdir()) if "seg" in p.name.lower()]
            if with_generate and seg:  # one /generate (CVAE, template brain) with the case's own mask
                with httpx.Client(base_url=url, timeout=timeout) as http:
                    t = time.perf_counter()
                    r = http.post("/generate", files=[("mask", (seg[0].name, seg[0].read_bytes(), "application/gzip"))],
                                  params={"samples": 1, "seed": 0})
                    generate = {"status": r.status_code, "seconds": round(time.perf_counter() - t, 2),
                                "zip_mb": round(len(r.content) / 1e6, 1)}
                    if r.status_code != 200:
                        errors.append(f"generate {r.status_code} {r.text[:200]}")
            junk = oversized_uploads(url, server.pid, jobs, oversized, oversized_mb) if oversized else None
        finally:
            stop_process(server, timeout=60)
            peak = memory.stop()
            shutil.rmtree(jobs, ignore_errors=True)
    return {
        "clients": clients, "requests_per_client": requests, "upload_mb": round(upload_mb, 1),
        "server_startup_s": round(startup, 2), "warmup_request_s": round(warmup_s, 2),
        "latency_s": {"p50": round(percentile(latencies, 50), 2), "p95": round(percentile(latencies, 95), 2),
                      "mean": round(statistics.fmean(latencies), 2), "min": round(min(latencies), 2),
                      "max": round(max(latencies), 2)} if latencies else None,
        "wall_s": round(wall, 2), "throughput_per_min": round(60.0 * len(latencies) / wall, 2),
        "ok": len(latencies), "errors": len(errors), "error_samples": errors[:3],
        "server_peak_rss_mb": round(peak, 1), "volumes_ml": volumes, "generate_one_sample": generate,
        "oversized_uploads": junk,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", type=Path, required=True, help="case folder uploaded by every request")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=3, help="requests per client")
    p.add_argument("--weights", type=Path, default=ROOT / "weights" / "unet.keras")
    p.add_argument("--timeout", type=float, default=900.0, help="per-request timeout (server and client)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve" / "serve.json")
    p.add_argument("--no-generate", action="store_true", help="skip the one /generate request at the end")
    p.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    p.add_argument("--oversized", type=int, default=0, help="then N concurrent junk uploads past the limit")
    p.add_argument("--oversized-mb", type=int, default=600, help="size of each junk upload (MB)")
    args = p.parse_args()
    load_start = os.getloadavg()[0]
    result = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "case": args.case.name,
              "weights": os.path.relpath(args.weights, ROOT), **weights_info(args.weights), "cpu_count": os.cpu_count(),
              "machine": platform.machine(), "note": args.note,
              **run(args.case, args.clients, args.requests, args.weights, args.timeout, not args.no_generate,
                    args.oversized, args.oversized_mb),
              "loadavg_1min": {"start": load_start, "end": os.getloadavg()[0]}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    lat = result["latency_s"] or {}
    print("| clients x requests | p50 s | p95 s | throughput /min | errors | server peak RSS |\n"
          "|---|---|---|---|---|---|\n"
          f"| {args.clients} x {args.requests} | {lat.get('p50')} | {lat.get('p95')} | "
          f"{result['throughput_per_min']} | {result['errors']} | {result['server_peak_rss_mb'] / 1024:.2f} GB |")


if __name__ == "__main__":
    main()
