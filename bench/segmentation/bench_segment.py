"""Benchmark of U-Net segmentation on CPU (not a test).

Measures, on one full BraTS case:

1. ``python -m core.segment`` end to end (fresh subprocess each run: imports, loading, preprocessing,
   prediction, postprocessing, writing) on ``--backend`` (``BRATS_INFERENCE_BACKEND``; ``auto`` runs the ONNX
   export where it matches the ``.keras`` file): median wall time of ``--runs`` runs and the child's peak RSS
   (``os.wait4`` rusage ``ru_maxrss``).
2. The forward pass on the brain-cropped volume, in process, on each backend (ONNX Runtime and Keras/TensorFlow,
   float32): model load time (ONNX Runtime: session creation; TensorFlow: import + load), FLOPs counted
   analytically from the convolution layers (2 x kernel volume x C_in x C_out per output voxel; transposed convs per
   input voxel), median forward time, achieved GFLOP/s and its share of the CPU's float32 peak (cores x clock x 32
   FLOP/cycle: two 8-wide FMA units, AVX2; ``--peak-gflops`` overrides).
3. Warm per-case time: ``load_case`` + ``core.segmentation.pipeline.segment`` + the label map's bytes with the model
   already loaded (what an API worker or a batch actor pays per case), median of ``--runs``, and the steps of the
   last run (``segment_without_forward``: what preprocessing and postprocessing cost).
4. With ``--batch-root DIR``: ``python -m serve.batch DIR`` (local Ray, one actor with all cores) in a subprocess,
   cases per minute of its wall time (Ray start-up and model loading included).
5. The same input through a same-size peer: MONAI ``BasicUNet`` on PyTorch CPU with matched features
   (16, 32, 64, 128 at the four shared levels; BasicUNet always has a fifth, 16x-down level, given 2x the
   deepest width as in MONAI's defaults), instance norm, transposed-conv upsampling; FLOPs counted the
   same way, so the result is reported as a time ratio and a GFLOP/s ratio. Needs
   ``pip install -r bench/requirements-bench.txt`` (skipped with a note when torch/monai are missing).

Usage::

    python bench/segmentation/bench_segment.py [--case DIR] [--weights weights/unet.keras] [--runs 3]
        [--backend auto|onnx|tensorflow] [--batch-root DIR] [--out bench/results/segmentation/segment.json] [--no-peer]
        [--cli-only]  (only step 1, e.g. once per backend for a paired comparison)

Writes JSON and prints a markdown table. Every runtime uses all CPU cores (2 here); the machine's load average at the
start and the end is recorded (the machine is shared: a busy neighbour slows every number).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
DEFAULT_CASE = ROOT.parent / "shared" / "data" / "brats-real" / "BraTS-GLI-demo-0001"
PEER_MULTIPLE = 16  # BasicUNet down-samples 4 times


def run_cli(case: Path, weights: Path, out: Path, backend: str = "auto") -> tuple[float, float]:
    """One ``python -m core.segment`` subprocess on ``backend``: (wall seconds, peak RSS in MB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BRATS_INFERENCE_BACKEND": backend}
    start = time.perf_counter()
    command = [sys.executable, "-m", "core.segment", str(case), "-o", str(out), "--weights", str(weights)]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)  # rusage of this child only
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"core.segment failed ({proc.returncode}):\n{tail}")
    return wall, usage.ru_maxrss / 1024.0  # ru_maxrss is in KiB on Linux


def keras_conv_flops(model, spatial: tuple[int, int, int]) -> int:
    """Analytic FLOPs (2 per multiply-add) of all convolutions of a Keras model for one input of ``spatial``."""
    import keras

    fixed = keras.models.clone_model(model, input_tensors=keras.Input(shape=(*spatial, model.inputs[0].shape[-1])))
    flops = 0
    for layer in fixed.layers:
        if isinstance(layer, keras.layers.Conv3DTranspose):
            voxels = _prod(layer.input.shape[1:4])
        elif isinstance(layer, keras.layers.Conv3D):
            voxels = _prod(layer.output.shape[1:4])
        else:
            continue
        c_in = layer.input.shape[-1]
        flops += 2 * voxels * _prod(layer.kernel_size) * c_in * layer.filters
    return flops


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def median_time(fn, runs: int) -> float:
    """Median seconds of ``fn()`` over ``runs`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_peer(volume, base: int, runs: int) -> dict:
    """MONAI BasicUNet (PyTorch CPU) forward on ``volume`` (X, Y, Z, 4): time and analytic FLOPs."""
    try:
        import torch
        from monai.networks.nets import BasicUNet
    except ImportError as exc:
        return {"skipped": f"{exc}; pip install -r bench/requirements-bench.txt"}
    features = (base, 2 * base, 4 * base, 8 * base, 16 * base, base)
    net = BasicUNet(spatial_dims=3, in_channels=4, out_channels=4, features=features,
                    norm=("instance", {"affine": True}), act=("LeakyReLU", {"negative_slope": 0.01}),
                    upsample="deconv").eval()
    flops = 0

    def count(module, inputs, output):
        nonlocal flops
        x = inputs[0]
        if isinstance(module, torch.nn.ConvTranspose3d):
            voxels = x.shape[2] * x.shape[3] * x.shape[4]
        else:
            voxels = output.shape[2] * output.shape[3] * output.shape[4]
        k = module.kernel_size[0] * module.kernel_size[1] * module.kernel_size[2]
        flops += 2 * voxels * k * module.in_channels * module.out_channels // module.groups

    convs = (torch.nn.Conv3d, torch.nn.ConvTranspose3d)
    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, convs)]
    x = torch.from_numpy(volume).permute(3, 0, 1, 2)[None].contiguous()
    with torch.inference_mode():
        net(x)
        for h in hooks:
            h.remove()
        seconds = median_time(lambda: net(x), runs)
    return {"model": f"monai.networks.nets.BasicUNet(features={features}, instance norm, deconv)",
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "params": int(sum(p.numel() for p in net.parameters())),
            "flops": flops, "forward_s": seconds, "gflops_per_s": flops / seconds / 1e9}


def peak_gflops(cpus: int | None = None, cpuinfo: str | Path = "/proc/cpuinfo") -> float | None:
    """Float32 peak of this CPU: cores x clock (``cpu MHz``) x 32 FLOP/cycle (two 8-wide FMA units, AVX2)."""
    try:
        mhz = next(float(line.split(":")[1]) for line in Path(cpuinfo).read_text().splitlines()
                   if line.startswith("cpu MHz"))
    except (OSError, StopIteration, ValueError):
        return None
    return (cpus or os.cpu_count() or 1) * mhz / 1000.0 * 32


def bench_forward(weights: Path, backend: str, volume, runs: int) -> dict:
    """Load ``weights`` on ``backend`` (timed: TensorFlow's includes its import when this process has not imported it)
    and time its forward pass on ``volume`` (X, Y, Z, 4)."""
    from core.segmentation.inference import load_model

    start = time.perf_counter()
    model = load_model(weights, backend=backend)
    load_s = time.perf_counter() - start
    seconds = median_time(lambda: model.predict_on_batch(volume[None]), runs)
    return {"load_s": round(load_s, 2), "median_s": round(seconds, 2), "model": model}


def with_rates(forward: dict, flops: int, peak: float | None) -> dict:
    """``forward`` (:func:`bench_forward`) without its model, plus GFLOP/s and the share of ``peak``."""
    rate = flops / forward["median_s"] / 1e9
    return {**{k: v for k, v in forward.items() if k != "model"}, "gflops_per_s": round(rate, 1),
            "percent_of_peak": round(100 * rate / peak, 1) if peak else None}


def bench_warm(case_dir: Path, model, runs: int) -> tuple[float, dict[str, float]]:
    """Median seconds per case with the model loaded (load the case, segment it, encode the label map), and the
    steps of the last run: ``load_case``, the pipeline's own timings (``check``, ``segment`` with the forward pass,
    ``probabilities``, ``metrics``: volumes) and ``label_map_bytes``."""
    from core.io.case import load_case
    from core.segmentation.pipeline import SegmentOptions, segment

    steps: dict[str, float] = {}
    predict = model.predict_on_batch

    def timed_predict(batch):
        start = time.perf_counter()
        out = predict(batch)
        steps["forward"] += time.perf_counter() - start
        return out

    def one() -> None:
        steps["forward"] = 0.0
        start = time.perf_counter()
        case = load_case(case_dir)
        loaded = time.perf_counter()
        result = segment(case, model, SegmentOptions(metrics=False))
        encoded = time.perf_counter()
        result.label_map_bytes()
        steps.update(load_case=loaded - start, **result.timings, label_map_bytes=time.perf_counter() - encoded)
        steps["segment_without_forward"] = steps["segment"] - steps["forward"]

    object.__setattr__(model, "predict_on_batch", timed_predict)  # bypasses Keras' attribute tracking
    try:
        seconds = median_time(one, runs)
    finally:
        object.__delattr__(model, "predict_on_batch")
    return seconds, {k: round(v, 2) for k, v in steps.items()}


def bench_batch(root: Path, weights: Path, backend: str) -> dict:
    """``python -m serve.batch ROOT`` into a temporary folder: wall time and cases per minute."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BRATS_INFERENCE_BACKEND": backend}
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "serve.batch", str(root), "-o", out, "--weights", str(weights)],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        done = len(list(Path(out).glob("*_seg.nii.gz")))
    if proc.returncode != 0:
        raise RuntimeError(f"serve.batch failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return {"root": str(root), "cases": done, "wall_s": round(wall, 1), "cases_per_min": round(60 * done / wall, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE)
    parser.add_argument("--weights", type=Path, default=ROOT / "weights" / "unet.keras")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backend", default="auto", choices=("auto", "onnx", "tensorflow"),
                        help="backend of the CLI, warm and batch runs (default: %(default)s)")
    parser.add_argument("--batch-root", type=Path, default=None, help="folder of case folders for serve.batch")
    parser.add_argument("--peak-gflops", type=float, default=None, help="float32 peak (default: from /proc/cpuinfo)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "segmentation" / "segment.json")
    parser.add_argument("--no-peer", action="store_true", help="skip the MONAI/PyTorch comparison")
    parser.add_argument("--cli-only", action="store_true", help="only the end-to-end CLI runs (backend comparisons)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    peak = args.peak_gflops or peak_gflops()

    with tempfile.TemporaryDirectory() as tmp:
        cli = [run_cli(args.case, args.weights, Path(tmp) / "seg.nii.gz", args.backend) for _ in range(args.runs)]
    walls, rss = [w for w, _ in cli], [r for _, r in cli]
    if args.cli_only:
        result = {"case": args.case.name, "backend": args.backend, "cpu_count": os.cpu_count(),
                  "load_average_start_end": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
                  "cli": {"runs_s": [round(w, 2) for w in walls], "median_s": round(statistics.median(walls), 2),
                          "peak_rss_mb": round(max(rss), 1)}}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))
        return 0
    batch = bench_batch(args.batch_root, args.weights, args.backend) if args.batch_root else None

    import numpy as np

    from core.io.case import load_case
    from core.preprocessing.preprocess import prepare_input
    from core.segmentation.backend import choose_onnx
    from core.segmentation.inference import BRAIN_MARGIN
    from core.segmentation.onnx_unet import OnnxUNet

    case = load_case(args.case)
    onnx_path = choose_onnx(args.weights, "auto")
    # ONNX Runtime first: this process has not imported TensorFlow yet, so TensorFlow's load time includes its import
    multiple = OnnxUNet(onnx_path).size_multiple if onnx_path else 8
    volume = np.ascontiguousarray(prepare_input(case.image, multiple=multiple, margin=BRAIN_MARGIN)[0])
    forwards = {"onnx": bench_forward(args.weights, "onnx", volume, args.runs) if onnx_path else
                {"skipped": "no ONNX export matching the weights (python -m core.segmentation.export_onnx)"},
                "tensorflow": bench_forward(args.weights, "tensorflow", volume, args.runs)}
    import keras

    keras_model = forwards["tensorflow"]["model"]
    spatial = volume.shape[:3]
    flops = keras_conv_flops(keras_model, spatial)
    chosen = "onnx" if args.backend != "tensorflow" and "model" in forwards["onnx"] else "tensorflow"
    warm, warm_steps = bench_warm(args.case, forwards[chosen]["model"], args.runs)
    model = forwards[chosen]["model"]
    # Same-shape comparison: ours (chosen backend) and the peer on the volume padded for BasicUNet's 4 down-samplings.
    peer_volume, _, _ = prepare_input(case.image, multiple=PEER_MULTIPLE, margin=BRAIN_MARGIN)
    peer_volume = np.ascontiguousarray(peer_volume)
    ours_same = median_time(lambda: model.predict_on_batch(peer_volume[None]), args.runs)
    ours_same_flops = keras_conv_flops(keras_model, peer_volume.shape[:3])
    base = int(min(layer.filters for layer in keras_model.layers if isinstance(layer, keras.layers.Conv3D)
                   and layer.name.startswith("enc0")))
    peer = {"skipped": "--no-peer"} if args.no_peer else bench_peer(peer_volume, base, args.runs)

    result = {
        "case": args.case.name,
        "weights": str(args.weights.relative_to(ROOT) if args.weights.is_relative_to(ROOT) else args.weights),
        "weights_mb": round(args.weights.stat().st_size / 1e6, 2),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "peak_gflops_fp32": round(peak, 1) if peak else None,
        "load_average_start_end": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "backend": args.backend,
        "backend_used": chosen,
        "tf_onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "cli": {"runs_s": [round(w, 2) for w in walls], "median_s": round(statistics.median(walls), 2),
                "peak_rss_mb": round(max(rss), 1)},
        "forward": {"input_shape": list(spatial), "params": int(keras_model.count_params()),
                    "gflops": round(flops / 1e9, 1),
                    **{b: with_rates(f, flops, peak) if "model" in f else f for b, f in forwards.items()}},
        "warm_per_case_s": round(warm, 2),
        "warm_steps_s": warm_steps,
        "batch": batch,
        "peer_comparison": {"input_shape": list(peer_volume.shape[:3]), "ours_backend": chosen,
                            "ours_s": round(ours_same, 2), "ours_gflops": round(ours_same_flops / 1e9, 1),
                            "ours_gflops_per_s": round(ours_same_flops / ours_same / 1e9, 1), "peer": peer},
    }
    if "forward_s" in peer:
        result["peer_comparison"]["time_ratio_ours_over_peer"] = round(ours_same / peer["forward_s"], 2)
        result["peer_comparison"]["gflops_per_s_ratio_ours_over_peer"] = round(
            (ours_same_flops / ours_same / 1e9) / peer["gflops_per_s"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    rows = [
        "| measure | value |", "|---|---|",
        f"| `core.segment` end to end ({args.backend}), median of {args.runs} | {result['cli']['median_s']} s |",
        f"| peak RSS (child) | {result['cli']['peak_rss_mb']:.0f} MB |",
        f"| forward input | {' x '.join(map(str, spatial))}, {result['forward']['gflops']} GFLOP |",
    ]
    for backend, f in result["forward"].items():
        if isinstance(f, dict) and "median_s" in f:
            rows.append(f"| forward {backend} (load {f['load_s']} s) | {f['median_s']} s = {f['gflops_per_s']} GFLOP/s"
                        f" = {f['percent_of_peak']} % of {result['peak_gflops_fp32']} GFLOP/s peak |")
    rows.append(f"| warm per case ({chosen}) | {result['warm_per_case_s']} s; last run's steps "
                f"{result['warm_steps_s']} |")
    if batch:
        rows.append(f"| serve.batch, {batch['cases']} cases | {batch['wall_s']} s = {batch['cases_per_min']} "
                    "cases/min |")
    pc = result["peer_comparison"]
    if "forward_s" in peer:
        rows += [
            f"| same input {' x '.join(map(str, pc['input_shape']))}: ours ({chosen}) | {pc['ours_s']} s, "
            f"{pc['ours_gflops']} GFLOP, {pc['ours_gflops_per_s']} GFLOP/s |",
            f"| MONAI BasicUNet (torch {peer['torch']}) | {peer['forward_s']:.2f} s, {peer['flops'] / 1e9:.1f} GFLOP, "
            f"{peer['gflops_per_s']:.1f} GFLOP/s |",
            f"| ratio ours / peer | time {pc['time_ratio_ours_over_peer']}, GFLOP/s "
            f"{pc['gflops_per_s_ratio_ours_over_peer']} |",
        ]
    else:
        rows.append(f"| peer | skipped: {peer['skipped']} |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
