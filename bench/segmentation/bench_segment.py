"""Benchmark of U-Net segmentation on CPU (not a test).

Measures, on one full BraTS case:

1. ``python -m core.segment`` end to end (fresh subprocess each run: imports, loading, preprocessing,
   prediction, postprocessing, writing): median wall time of ``--runs`` runs and the child's peak RSS
   (``os.wait4`` rusage ``ru_maxrss``).
2. The model's forward pass on the brain-cropped volume, in process: FLOPs counted analytically
   from the convolution layers (2 x kernel volume x C_in x C_out per output voxel; transposed convs
   per input voxel), median forward time and achieved GFLOP/s.
3. The same input through a same-size peer: MONAI ``BasicUNet`` on PyTorch CPU with matched features
   (16, 32, 64, 128 at the four shared levels; BasicUNet always has a fifth, 16x-down level, given 2x the
   deepest width as in MONAI's defaults), instance norm, transposed-conv upsampling; FLOPs counted the
   same way, so the result is reported as a time ratio and a GFLOP/s ratio. Needs
   ``pip install -r bench/requirements-bench.txt`` (skipped with a note when torch/monai are missing).

Usage::

    python bench/segmentation/bench_segment.py [--case DIR] [--weights weights/unet.keras] [--runs 3]
                                  [--out bench/results/segmentation/segment.json] [--no-peer]

Writes JSON and prints a markdown table. Both frameworks use all CPU cores (2 here).
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


def run_cli(case: Path, weights: Path, out: Path) -> tuple[float, float]:
    """One ``python -m core.segment`` subprocess: (wall seconds, peak RSS in MB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE)
    parser.add_argument("--weights", type=Path, default=ROOT / "weights" / "unet.keras")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "segmentation" / "segment.json")
    parser.add_argument("--no-peer", action="store_true", help="skip the MONAI/PyTorch comparison")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cli = [run_cli(args.case, args.weights, Path(tmp) / "seg.nii.gz") for _ in range(args.runs)]
    walls, rss = [w for w, _ in cli], [r for _, r in cli]

    import numpy as np

    from core.io.case import load_case
    from core.preprocessing.preprocess import prepare_input
    from core.segmentation.inference import BRAIN_MARGIN, downsampling_factor, load_model

    import keras

    case = load_case(args.case)
    model = load_model(args.weights)
    volume, _, _ = prepare_input(case.image, multiple=downsampling_factor(model), margin=BRAIN_MARGIN)
    spatial = volume.shape[:3]
    flops = keras_conv_flops(model, spatial)
    forward = median_time(lambda: model.predict_on_batch(volume[None]), args.runs)
    # Same-shape comparison: both models on the volume padded for BasicUNet's 4 down-samplings.
    peer_volume, _, _ = prepare_input(case.image, multiple=PEER_MULTIPLE, margin=BRAIN_MARGIN)
    peer_volume = np.ascontiguousarray(peer_volume)
    ours_same = median_time(lambda: model.predict_on_batch(peer_volume[None]), args.runs)
    ours_same_flops = keras_conv_flops(model, peer_volume.shape[:3])
    base = int(min(layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv3D)
                   and layer.name.startswith("enc0")))
    peer = {"skipped": "--no-peer"} if args.no_peer else bench_peer(peer_volume, base, args.runs)

    result = {
        "case": args.case.name,
        "weights": str(args.weights.relative_to(ROOT) if args.weights.is_relative_to(ROOT) else args.weights),
        "weights_mb": round(args.weights.stat().st_size / 1e6, 2),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "backend": keras.backend.backend(),
        "tf_onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "cli": {"runs_s": [round(w, 2) for w in walls], "median_s": round(statistics.median(walls), 2),
                "peak_rss_mb": round(max(rss), 1)},
        "forward": {"input_shape": list(spatial), "params": int(model.count_params()), "gflops": round(flops / 1e9, 1),
                    "median_s": round(forward, 2), "gflops_per_s": round(flops / forward / 1e9, 1)},
        "peer_comparison": {"input_shape": list(peer_volume.shape[:3]),
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
        f"| `core.segment` end to end, median of {args.runs} | {result['cli']['median_s']} s |",
        f"| peak RSS (child) | {result['cli']['peak_rss_mb']:.0f} MB |",
        f"| forward input | {' x '.join(map(str, spatial))} |",
        f"| conv FLOPs | {result['forward']['gflops']} GFLOP |",
        f"| forward (median) | {result['forward']['median_s']} s = {result['forward']['gflops_per_s']} GFLOP/s |",
    ]
    pc = result["peer_comparison"]
    if "forward_s" in peer:
        rows += [
            f"| same input {' x '.join(map(str, pc['input_shape']))}: ours | {pc['ours_s']} s, "
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
