"""Same labels from the ONNX export as from the Keras/TensorFlow model on the real validation cases (issue 40).

Usage::

    .venv/bin/python bench/segmentation/bench_onnx_parity.py [--weights weights/unet.keras]
        [--cases train/splits/brats-real-validation.txt] [--root ../shared/data/brats-real]
        [--out bench/results/segmentation/onnx_parity.json]

Each case is segmented by ``core.segmentation.pipeline.segment`` (the CLI's steps: postprocessing on, no TTA) once
with the Keras model (``backend="tensorflow"``) and once with the ONNX export on ONNX Runtime; the report gives, per
case, the Dice of each region (WT, TC, ET) between the two label maps, the fraction of voxels with different labels,
the largest probability difference, each backend's Dice against the reference segmentation and its segmentation time.
Target: Dice >= 0.999 on every case.

Both run in float32 and round differently: a float64 check (``norm_error``) puts the output of two instance-norm layers
of each runtime beside a float64 recomputation from the same convolution output on the first case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from core.io.case import load_case  # noqa: E402
from core.io.weights import file_sha256  # noqa: E402
from core.preprocessing.preprocess import prepare_input  # noqa: E402
from core.segmentation.inference import BRAIN_MARGIN, load_model  # noqa: E402
from core.segmentation.metrics import region_dice  # noqa: E402
from core.segmentation.pipeline import SegmentOptions, segment  # noqa: E402
from train.common import read_case_ids  # noqa: E402

TARGET_DICE = 0.999
NORM_LAYERS = (("enc0_conv1", "enc0_norm1"), ("dec0_conv2", "dec0_norm2"))  # first and last norm of the U-Net


def norm_error(keras_model, volume: np.ndarray) -> dict[str, dict[str, float]]:
    """Largest error of TensorFlow's and ONNX Runtime's instance norm against float64, on the same conv output."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    import keras

    report = {}
    for conv, norm in NORM_LAYERS:
        sub = keras.Model(keras_model.inputs, [keras_model.get_layer(conv).output, keras_model.get_layer(norm).output])
        conv_out, tf_out = (np.asarray(v) for v in sub.predict_on_batch(volume[None]))
        gamma, beta = (np.asarray(w, np.float64) for w in keras_model.get_layer(norm).get_weights())
        epsilon = keras_model.get_layer(norm).epsilon
        c64 = conv_out.astype(np.float64)
        mean = c64.mean(axis=(0, 1, 2, 3), keepdims=True)
        variance = ((c64 - mean) ** 2).mean(axis=(0, 1, 2, 3), keepdims=True)
        exact = (c64 - mean) / np.sqrt(variance + epsilon) * gamma + beta
        channels = conv_out.shape[-1]
        graph = helper.make_graph(
            [helper.make_node("InstanceNormalization", ["x", "gamma", "beta"], ["y"], epsilon=epsilon)], "norm",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, None, None, None])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, None, None, None])],
            [numpy_helper.from_array(gamma.astype(np.float32), "gamma"),
             numpy_helper.from_array(beta.astype(np.float32), "beta")])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        ort_out = session.run(None, {"x": np.ascontiguousarray(np.moveaxis(conv_out, -1, 1))})[0]
        report[norm] = {"tensorflow": float(np.abs(tf_out - exact).max()),
                        "onnxruntime": float(np.abs(np.moveaxis(ort_out, 1, -1) - exact).max())}
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and write the JSON report; exit 1 when a case misses :data:`TARGET_DICE`."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--weights", type=Path, default=ROOT / "weights" / "unet.keras")
    parser.add_argument("--cases", type=Path, default=ROOT / "train" / "splits" / "brats-real-validation.txt")
    parser.add_argument("--root", type=Path, default=ROOT.parent / "shared" / "data" / "brats-real")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "segmentation" / "onnx_parity.json")
    args = parser.parse_args(argv)
    models = {name: load_model(args.weights, backend=name) for name in ("tensorflow", "onnx")}
    options = SegmentOptions(metrics=False)
    rows = []
    norms = None
    for case_id in read_case_ids(str(args.cases)):
        case = load_case(args.root / case_id)
        if norms is None:
            volume = prepare_input(np.asarray(case.image), multiple=models["onnx"].size_multiple,
                                   margin=BRAIN_MARGIN)[0]
            norms = {"case": case_id, "max_abs_error_vs_float64": norm_error(models["tensorflow"], volume)}
            print(json.dumps(norms), flush=True)
        results, seconds = {}, {}
        for name, model in models.items():
            start = time.perf_counter()
            results[name] = segment(case, model, options)
            seconds[name] = round(time.perf_counter() - start, 2)
        tf, onnx = results["tensorflow"], results["onnx"]
        row = {
            "case": case_id,
            "dice": {r: round(d, 6) for r, d in region_dice(onnx.labels, tf.labels).items()},
            "voxels_differing": int(np.count_nonzero(onnx.labels != tf.labels)),
            "max_probability_diff": float(np.max(np.abs(onnx.class_probabilities - tf.class_probabilities))),
            "dice_vs_reference": None if case.seg is None else {
                name: {r: round(d, 4) for r, d in region_dice(result.labels, case.seg).items()}
                for name, result in results.items()},
            "segment_s": seconds,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    worst = min(min(row["dice"].values()) for row in rows)
    report = {
        "weights": str(args.weights.relative_to(ROOT) if args.weights.is_relative_to(ROOT) else args.weights),
        "weights_sha256": file_sha256(args.weights),
        "onnx_sha256": file_sha256(args.weights.with_suffix(".onnx")),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "options": "core.segmentation.pipeline.segment defaults (postprocess on, no TTA)",
        "target_dice": TARGET_DICE,
        "worst_dice": worst,
        "all_cases_meet_target": worst >= TARGET_DICE,
        "norm_error": norms,
        "cases": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{args.out}: worst Dice {worst:.6f} over {len(rows)} cases (target {TARGET_DICE})")
    return 0 if worst >= TARGET_DICE else 1


if __name__ == "__main__":
    sys.exit(main())
