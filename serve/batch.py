"""Segment every case folder under a root with Ray Data: an actor pool, the U-Net loaded once per actor.

Usage::

    python -m serve.batch ROOT -o OUT [--address ray://HOST:10001|auto] [--workers N] [--cpus-per-worker C]
                          [--weights P] [--tta] [--labels 2020|2023] [--probabilities] [--verbose]

Writes ``OUT/<case>_seg.nii.gz`` (uint8, the case's affine and header) and ``OUT/results.csv`` (one row per
case: volumes in mL, Dice/HD95 where the case folder holds a reference seg, or the error); with
``--probabilities`` also ``OUT/<case>_prob.nii.gz``, the WT/TC/ET probabilities as ``core.segment --probabilities``
writes them. Resumable: a case whose ``<case>_seg.nii.gz`` (and, with ``--probabilities``, ``<case>_prob.nii.gz``)
exists is skipped (files appear atomically, after their CSV row); failed cases are tried again on the next run.
One bad case never stops the run; the exit status is 1 when any case failed.

Without ``--address`` a local Ray of its own starts on this machine (never a cluster that happens to run here; its
temporary folder is removed at the end); with one, the same command runs on a cluster (an address that does not
answer fails within 25 s with a message; a cluster with token authentication, the default from Ray 2.59/2.61,
needs ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` - from ``ray get-auth-token`` on the head - in the driver's
environment too). The ``core`` and ``serve`` packages travel with the job (Ray ``py_modules``), the weights as
bytes, and every worker reads the case folders at the same path (shared storage). Label maps come back to the
driver, so ``OUT`` only needs to exist where the command runs. Ctrl-C or SIGTERM stops the run cleanly: the rows
finished so far are written, no partial file is left, Ray is shut down; the exit status is then 130.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.io.case import NIFTI_SUFFIXES, CaseError
from core.io.labels import CONVENTIONS, REGIONS
from core.io.nifti import NiftiError

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "results.csv"
SEG_SUFFIX = "_seg.nii.gz"
PROB_SUFFIX = "_prob.nii.gz"
CSV_FIELDS: tuple[str, ...] = (
    "case", "status", "seconds", *(f"{r}_ml" for r in REGIONS), *(f"dice_{r}" for r in REGIONS),
    *(f"hd95_{r}" for r in REGIONS), "seg_file", "worker", "error", "warnings",
)
CODE_PACKAGES: tuple[str, ...] = ("core", "serve")  # what a cluster worker imports (shipped with the job)
CONNECT_TIMEOUT_S = 10.0  # a cluster address must accept a TCP connection within this ...
INIT_TIMEOUT_S = 15.0  # ... and ray.init finish within this: a bad address fails in under 30 s
TOKEN_HINT = ("if the cluster uses token authentication (RAY_AUTH_MODE=token; the default for new clusters from "
              "Ray 2.59/2.61), export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<the output of `ray get-auth-token` "
              "on the head> here too")


# ------------------------------------------------------------------------------------------ planning


def _has_nifti(folder: Path) -> bool:
    return any(p.is_file() and p.name.lower().endswith(NIFTI_SUFFIXES) for p in folder.iterdir())


def find_cases(root: str | os.PathLike) -> list[Path]:
    """``root`` itself when it holds NIfTI files, else its sub-folders that do (sorted by name).

    A folder counts as a case when it holds any ``.nii``/``.nii.gz`` file, so a folder with a missing or
    misnamed modality is reported as a failed case instead of being passed over.
    """
    root = Path(root)
    if not root.is_dir():
        raise CaseError(f"{root}: not a folder; pass the folder that holds the case folders.")
    if _has_nifti(root):
        return [root]
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _has_nifti(p)),
                  key=lambda p: p.name)


def seg_path(out: Path, case: str) -> Path:
    """Where the label map of ``case`` goes."""
    return out / f"{case}{SEG_SUFFIX}"


def prob_path(out: Path, case: str) -> Path:
    """Where the region probabilities of ``case`` go (``--probabilities``)."""
    return out / f"{case}{PROB_SUFFIX}"


def plan(root: str | os.PathLike, out: str | os.PathLike,
         probabilities: bool = False) -> tuple[list[Path], list[Path]]:
    """``(to do, already done)``: a case is done when its ``<case>_seg.nii.gz`` exists in ``out`` (and, with
    ``probabilities``, its ``<case>_prob.nii.gz``)."""
    out = Path(out)
    todo, done = [], []
    for folder in find_cases(root):
        finished = seg_path(out, folder.name).is_file() and (
            not probabilities or prob_path(out, folder.name).is_file())
        (done if finished else todo).append(folder)
    return todo, done


# ------------------------------------------------------------------------------------------ one case


def _number(value: float) -> str:
    return "" if value is None or not np.isfinite(value) else f"{value:.4f}"


def segment_one(folder: str | os.PathLike, model: Any, *, tta: bool = False, labels: str = "2020",
                force: bool = False, probabilities: bool = False) -> dict[str, Any]:
    """Segment one case folder as ``python -m core.segment`` does (checks, ``--force``); never raises.

    Returns:
        A CSV row (``CSV_FIELDS`` as strings) plus ``"seg"``: the ``.nii.gz`` bytes (``b""`` on failure), and
        ``"prob"``: those of the region probabilities (``b""`` unless ``probabilities``).
    """
    from core.io.case import load_case
    from core.segmentation.pipeline import SegmentOptions, segment

    folder = Path(folder)
    row: dict[str, Any] = {k: "" for k in CSV_FIELDS}
    row.update(case=folder.name, worker=f"{os.uname().nodename}:{os.getpid()}", seg=b"", prob=b"")
    start = time.perf_counter()
    try:
        options = SegmentOptions(tta=tta, probabilities=probabilities, labels=labels, force=force)
        result = segment(load_case(folder), model, options)
        row["warnings"] = " | ".join(" ".join(w.split()) for w in result.warnings)
        row["seg"] = result.label_map_bytes()
        if probabilities:
            row["prob"] = result.probabilities_bytes()
        for region, ml in result.volumes_ml.items():
            row[f"{region}_ml"] = f"{ml:.3f}"
        for region, values in (result.metrics or {}).items():
            row[f"dice_{region}"] = _number(values["dice"])
            row[f"hd95_{region}"] = _number(values["hd95"])
        row.update(status="ok", seg_file=seg_path(Path("."), folder.name).name)
    except (CaseError, NiftiError, ValueError) as exc:
        row.update(status="error", error=str(exc), seg=b"", prob=b"")
    except Exception as exc:  # keep the run going; the message says what broke
        row.update(status="error", error=f"{type(exc).__name__}: {exc}", seg=b"", prob=b"")
    row["seconds"] = f"{time.perf_counter() - start:.2f}"
    return row


class SegmentWorker:
    """Ray Data actor: loads the U-Net once (from bytes), then segments one case folder per call."""

    def __init__(self, model_ref: list, tta: bool, labels: str, threads: int, force: bool = False,
                 probabilities: bool = False) -> None:
        """``model_ref``: ``[ObjectRef of {file name: bytes}]``, the ``.keras`` file and any ONNX export with its card
        (in a list so Ray passes the reference, not a copy); ``core.segmentation.backend`` picks the runtime."""
        import tempfile

        import ray

        from core.segmentation.backend import choose_onnx
        from core.segmentation.onnx_unet import OnnxUNet

        with tempfile.TemporaryDirectory(prefix="brats_batch_") as tmp:  # the loaders read paths
            for name, data in ray.get(model_ref[0]).items():
                (Path(tmp) / name).write_bytes(data)
            path = Path(tmp) / "unet.keras"
            onnx_path = choose_onnx(path, warm=True)  # an actor keeps its model: auto means TensorFlow
            if onnx_path is not None:  # ONNX Runtime: TensorFlow is never imported
                self.model = OnnxUNet(onnx_path, threads=max(1, threads))
            else:
                import tensorflow as tf

                tf.config.threading.set_intra_op_parallelism_threads(max(1, threads))
                tf.config.threading.set_inter_op_parallelism_threads(1)
                from core.segmentation.keras_unet import load_keras_unet

                self.model = load_keras_unet(path)
        self.tta, self.labels, self.force, self.probabilities = tta, labels, force, probabilities

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [segment_one(str(p), self.model, tta=self.tta, labels=self.labels, force=self.force,
                            probabilities=self.probabilities) for p in batch["path"]]
        return {key: np.array([r[key] for r in rows], dtype=object) for key in (*CSV_FIELDS, "seg", "prob")}


# ------------------------------------------------------------------------------------------ results


def read_results(path: Path) -> dict[str, dict[str, str]]:
    """Rows of an existing ``results.csv`` by case (the last row of a case wins)."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["case"]: {k: row.get(k, "") or "" for k in CSV_FIELDS} for row in csv.DictReader(f)
                if row.get("case")}


def write_results(path: Path, rows: Iterable[dict[str, str]]) -> None:
    """Write ``rows`` sorted by case, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["case"]))
    tmp.replace(path)


def _append_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def _store(out: Path, row: dict[str, Any]) -> None:
    """Write the label map and any probability map (atomically, after their CSV row) and append the row.

    The label map is renamed into place last: its presence is what marks the case done (:func:`plan`).
    """
    files = [(prob_path(out, row["case"]), row.pop("prob", b"")), (seg_path(out, row["case"]), row.pop("seg", b""))]
    parts = [(target, target.with_name(target.name + ".part"), data) for target, data in files if data]
    ok = row["status"] == "ok"
    if ok:
        for _, part, data in parts:
            part.write_bytes(data)
    _append_row(out / RESULTS, row)
    if ok:
        for target, part, _ in parts:
            part.replace(target)


# ------------------------------------------------------------------------------------------ the run


class BatchError(RuntimeError):
    """The run cannot start (no Ray to connect to); the message says what to do."""


@dataclass
class BatchSummary:
    """What a run did."""

    done: int = 0
    failed: list[str] = field(default_factory=list)
    skipped: int = 0
    seconds: float = 0.0
    workers: int = 0

    @property
    def cases_per_minute(self) -> float:
        """Cases segmented (or failed) per minute of wall time."""
        n = self.done + len(self.failed)
        return 60.0 * n / self.seconds if self.seconds > 0 else 0.0


def _weights_bytes(weights: str | os.PathLike | None) -> tuple[Path, dict[str, bytes]]:
    """The U-Net file and what the workers need of it: ``{"unet.keras": ..., }`` plus ``unet.onnx`` and its card
    when ``core.segmentation.backend`` would run that export."""
    from core.io.weights import ModelLoadError, weights_path
    from core.segmentation.backend import card_path, onnx_export

    path = Path(weights) if weights else weights_path("unet")[0]
    if not path.is_file():
        raise ModelLoadError(f"U-Net weights not found: {path}. Train them with `python -m train.unet` "
                             "or pass the path of a .keras file (--weights).")
    files = {"unet.keras": path.read_bytes()}
    onnx_path, _ = onnx_export(path)
    if onnx_path is not None:
        files["unet.onnx"] = onnx_path.read_bytes()
        files["unet.onnx.json"] = card_path(onnx_path).read_bytes()
    return path, files


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail fast unless ``host:port`` / ``ray://host:port`` accepts a TCP connection within ``timeout`` s.

    ``auto`` (and any address without a port) is left to Ray. Without this, a wrong address makes ``ray.init``
    retry for minutes.

    Raises:
        BatchError: the address does not answer; the message names it and the fix.
    """
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BatchError(f"cannot reach the Ray cluster at {address}: {exc or 'timed out'} (after at most "
                         f"{timeout:g} s); check the host and port (Ray Client: ray://HEAD:10001 from "
                         "`ray start --head`; on the head: --address auto) and any firewall between, or leave "
                         "--address out to run here.") from exc


def _init_within(seconds: float, **kwargs: Any) -> None:
    """``ray.init(**kwargs)`` that gives up after ``seconds`` (Ray retries a silent peer for minutes)."""
    import ray

    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            ray.init(**kwargs)
            outcome.append(None)
        except BaseException as exc:  # handed to the caller
            outcome.append(exc)

    thread = threading.Thread(target=connect, daemon=True, name="ray-connect")
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise ConnectionError(f"no answer from the Ray cluster within {seconds:g} s; {TOKEN_HINT}")
    if outcome[0] is not None:
        raise outcome[0]


def _start_ray(address: str | None, cpus: int | None, verbose: bool) -> str | None:
    """Start a local Ray of our own (returns its temporary folder) or connect to ``address`` (returns ``None``)."""
    import ray
    import ray.data

    env = {"TF_CPP_MIN_LOG_LEVEL": "2"}
    if address is None:  # this machine, a Ray of our own: the workers import the code from here
        runtime_env = {"env_vars": {**env, "PYTHONPATH": str(ROOT)}}
        temp = tempfile.mkdtemp(prefix="brats-ray-")  # short: Ray's socket paths must fit in 107 characters
        try:
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=verbose,
                     runtime_env=runtime_env, logging_level=logging.INFO if verbose else logging.WARNING,
                     _temp_dir=temp)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        return temp
    check_address(address)
    runtime_env = {"env_vars": env, "py_modules": [str(ROOT / name) for name in CODE_PACKAGES]}
    _init_within(INIT_TIMEOUT_S, address=address, log_to_driver=verbose, runtime_env=runtime_env,
                 logging_level=logging.INFO if verbose else logging.WARNING)
    return None


def run_batch(root: str | os.PathLike, out: str | os.PathLike, *, address: str | None = None,
              workers: int | None = None, cpus_per_worker: int | None = None, weights: str | os.PathLike | None = None,
              tta: bool = False, labels: str = "2020", force: bool = False, probabilities: bool = False,
              progress: bool = True, verbose: bool = False) -> BatchSummary:
    """Segment the pending cases under ``root`` into ``out`` on Ray (see the module docstring).

    Uses the Ray session already running in this process if there is one (and leaves it running);
    otherwise starts one (local, or at ``address``) and shuts it down at the end.

    Args:
        workers: actors (model copies); default 1 locally, cluster CPUs // ``cpus_per_worker`` on a cluster.
        cpus_per_worker: CPUs per actor (ONNX Runtime's or TensorFlow's thread count); default all local
            CPUs // workers, 2 on a cluster.

    Raises:
        CaseError: ``root`` is not a folder. ModelLoadError: no weights file. BatchError: no Ray to connect to.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo, done = plan(root, out, probabilities)
    summary = BatchSummary(skipped=len(done))
    if not todo:
        return summary
    _, model_bytes = _weights_bytes(weights)
    import ray
    import ray.data

    own = not ray.is_initialized()
    ray_temp = None
    if own:
        local_cpus = None if address else (workers or 1) * (cpus_per_worker or 0) or None
        try:
            ray_temp = _start_ray(address, local_cpus, verbose)
        except BatchError:
            raise
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            hint = f"; {TOKEN_HINT}" if address and TOKEN_HINT not in str(exc) else ""
            raise BatchError(f"cannot start or reach {where}: {exc}; start the cluster with `ray start --head` "
                             "(then --address auto), check the address, or leave --address out to run "
                             f"here{hint}.") from exc
    results = out / RESULTS
    previous = read_results(results)
    new_rows: dict[str, dict[str, str]] = {}
    try:
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        if workers is None:
            workers = 1 if (address is None and own) else max(1, cluster_cpus // (cpus_per_worker or 2))
        workers = min(workers, len(todo))
        cpus_per_worker = cpus_per_worker or max(1, cluster_cpus // workers)
        summary.workers = workers
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = verbose
        ctx.print_on_execution_start = verbose
        logging.getLogger("ray.data").setLevel(logging.INFO if verbose else logging.WARNING)
        model_ref = ray.put(model_bytes)  # one copy in the object store, fetched once per actor
        items = [{"case": p.name, "path": str(p.resolve())} for p in todo]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            SegmentWorker, batch_size=1, batch_format="numpy", num_cpus=cpus_per_worker,
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs={"model_ref": [model_ref], "tta": tta, "labels": labels,
                                   "threads": cpus_per_worker, "force": force, "probabilities": probabilities})
        with tqdm(total=len(todo), unit="case", desc="segment", file=sys.stderr, disable=not progress) as bar:
            for raw in dataset.iter_rows():
                row = {k: (v.decode() if isinstance(v, bytes) and k not in ("seg", "prob") else v)
                       for k, v in raw.items()}
                row = {k: ("" if v is None else v) for k, v in row.items()}
                _store(out, row)
                new_rows[row["case"]] = row
                if row["status"] == "ok":
                    summary.done += 1
                else:
                    summary.failed.append(row["case"])
                    bar.write(f"failed: {row['case']}: {row['error']}")
                bar.set_postfix_str(f"{row['case']} {row['status']}, {len(summary.failed)} failed")
                bar.update(1)
    except Exception as exc:  # a worker crashed (e.g. out of memory): record the unfinished cases, keep the rest
        for folder in todo:
            if folder.name not in new_rows:
                row = {k: "" for k in CSV_FIELDS}
                row.update(case=folder.name, status="error", error=f"batch stopped: {type(exc).__name__}: {exc}")
                new_rows[folder.name] = row
                summary.failed.append(folder.name)
    finally:
        write_results(results, {**previous, **new_rows}.values())
        for part in out.glob("*.part"):  # a write cut by Ctrl-C: never left behind as a result
            part.unlink(missing_ok=True)
        if own:
            ray.shutdown()
        if ray_temp:
            shutil.rmtree(ray_temp, ignore_errors=True)
    summary.seconds = time.perf_counter() - start
    return summary


# ------------------------------------------------------------------------------------------ CLI


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``python -m serve.batch``."""
    p = argparse.ArgumentParser(prog="python -m serve.batch",
                                description="Segment every case folder under ROOT on Ray (resumable).")
    p.add_argument("root", type=Path, help="folder of case folders (or one case folder)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder (<case>_seg.nii.gz, results.csv)")
    p.add_argument("--address", default=None,
                   help="Ray cluster: 'auto' (this node's cluster) or ray://HEAD:10001; default: a local Ray")
    p.add_argument("--workers", type=int, default=None, help="actors, each with its own model copy")
    p.add_argument("--cpus-per-worker", type=int, default=None, help="CPUs (TensorFlow threads) per actor")
    p.add_argument("--weights", type=Path, default=None, help="U-Net .keras file (default: the shipped one)")
    p.add_argument("--tta", action="store_true", help="mirror test-time augmentation (8x slower)")
    p.add_argument("--labels", choices=CONVENTIONS, default="2020", help="label values written (default %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="segment even cases that fail the plausibility checks (as core.segment --force)")
    p.add_argument("--probabilities", action="store_true",
                   help="also write <case>_prob.nii.gz: WT/TC/ET probabilities (as core.segment --probabilities)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="Ray's own logs and progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; 0 all cases ok, 1 some failed (see results.csv), 2 bad arguments."""
    from core.io.weights import ModelLoadError

    args = build_parser().parse_args(argv)
    for name in ("workers", "cpus_per_worker"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    previous_term = signal.signal(signal.SIGTERM, _interrupt) if _main_thread() else None
    try:
        summary = run_batch(args.root, args.out, address=args.address, workers=args.workers,
                            cpus_per_worker=args.cpus_per_worker, weights=args.weights, tta=args.tta,
                            labels=args.labels, force=args.force, probabilities=args.probabilities,
                            progress=not args.quiet, verbose=args.verbose)
    except (CaseError, ModelLoadError, BatchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: Ray was shut down and results.csv written by run_batch
        print(f"interrupted: the finished cases are in {args.out / RESULTS}; run the same command again to "
              "resume.", file=sys.stderr)
        return 130
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    failed = f", {len(summary.failed)} failed ({', '.join(summary.failed[:5])}; see {args.out / RESULTS})" \
        if summary.failed else ""
    print(f"{args.out}: segmented {summary.done} case(s){failed}, skipped {summary.skipped} already done, "
          f"{summary.seconds:.1f} s ({summary.cases_per_minute:.2f} cases/min, {summary.workers} worker(s))")
    return 1 if summary.failed else 0


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _interrupt(signum: int, _frame: Any) -> None:
    """SIGTERM ends the run like Ctrl-C: through ``run_batch``'s clean-up (results, Ray shutdown, temp folder)."""
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
