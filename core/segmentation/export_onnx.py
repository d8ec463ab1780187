"""Export a U-Net ``.keras`` file to ONNX, so inference can run on ONNX Runtime without importing TensorFlow.

Usage (regenerates ``weights/unet.onnx`` and its card ``weights/unet.onnx.json`` from ``weights/unet.keras``)::

    python -m core.segmentation.export_onnx [--weights weights/unet.keras] [--out weights/unet.onnx]

The ``.keras`` file stays the training artefact and the source of truth: the card records its SHA-256, and
``core.segmentation.backend`` uses the ONNX file only while that hash matches (else it falls back to TensorFlow with a
warning). This is a development tool: it needs Keras/TensorFlow and the ``onnx`` package; running the exported file
needs ``onnxruntime`` only.

The graph is built directly from the functional model's layers and weights with ``onnx.helper`` (tf2onnx 1.17 does not
support TensorFlow 2.21 / protobuf 7). It covers the layers ``core.segmentation.unet.build_unet`` wires: ``Conv3D``,
``Conv3DTranspose``, ``GroupNormalization`` (instance or group norm), ``LeakyReLU``, ``MaxPooling3D``, ``Concatenate``,
the softmax / sigmoid head. The ONNX model keeps the Keras interface: channel-last ``(N, X, Y, Z, 4)`` in,
``(N, X, Y, Z, K)`` out (transposes at both ends; channel-first inside, as ONNX Runtime's kernels want). Weights are
float32 whatever the saved mixed-precision policy (they are stored in float32 either way).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core.io.weights import ModelLoadError, file_sha256
from core.segmentation.backend import EXPORT_COMMAND, card_path

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "probabilities"


def _history(arg: Any) -> Iterator[str]:
    """Names of the layers whose outputs a serialised ``inbound_nodes`` argument refers to, in order."""
    if isinstance(arg, dict):
        if arg.get("class_name") == "__keras_tensor__":
            yield arg["config"]["keras_history"][0]
        else:
            for value in arg.values():
                yield from _history(value)
    elif isinstance(arg, list | tuple):
        for value in arg:
            yield from _history(value)


def _inputs_of(layer_config: dict) -> list[str]:
    """The layer names feeding a layer of a functional model's config (single call site)."""
    nodes = layer_config.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise ValueError(f"layer {layer_config['name']!r} is called {len(nodes)} times; "
                         "shared layers are not supported")
    return [name for node in nodes for name in _history(node.get("args", []))]


class _Graph:
    """Nodes and initialisers of the ONNX graph being built."""

    def __init__(self) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


def _conv_kernel(kernel: np.ndarray) -> np.ndarray:
    """Keras ``(kx, ky, kz, a, b)`` kernel -> ONNX ``(b, a, kx, ky, kz)``.

    Conv: a = in, b = out channels; ConvTranspose: a = out, b = in (ONNX wants in first for it).
    """
    return np.transpose(kernel.astype(np.float32), (4, 3, 0, 1, 2))


def _same_pads(kernel_size: tuple[int, ...], strides: tuple[int, ...]) -> list[int]:
    if any(s != 1 for s in strides):
        raise ValueError("padding='same' is supported only with stride 1")
    lo = [(k - 1) // 2 for k in kernel_size]
    hi = [k - 1 - p for k, p in zip(kernel_size, lo, strict=True)]
    return lo + hi


def _convert(graph: _Graph, layer: Any, cls: str, config: dict, inputs: list[str]) -> str:
    """Add the ONNX nodes of one Keras layer (channel-first tensors); returns the output name."""
    name, x = layer.name, inputs[0] if inputs else ""
    weights = [np.asarray(w, dtype=np.float32) for w in layer.get_weights()]
    if cls in ("Conv3D", "Conv3DTranspose"):
        dilation = tuple(config.get("dilation_rate", (1, 1, 1)))
        if config.get("data_format", "channels_last") != "channels_last" or dilation != (1, 1, 1):
            raise ValueError(f"layer {name!r}: only channels_last, undilated convolutions are supported")
        if config.get("activation", "linear") != "linear" or config.get("groups", 1) != 1:
            raise ValueError(f"layer {name!r}: fused activations and grouped convolutions are not supported")
        kernel_size, strides = tuple(config["kernel_size"]), tuple(config["strides"])
        args = [x, graph.const(f"{name}/kernel", _conv_kernel(weights[0]))]
        if config["use_bias"]:
            args.append(graph.const(f"{name}/bias", weights[1]))
        if cls == "Conv3D":
            pads = _same_pads(kernel_size, strides) if config["padding"] == "same" else [0] * 6
            return graph.node("Conv", args, name, kernel_shape=list(kernel_size), strides=list(strides), pads=pads)
        if config["padding"] != "valid" or kernel_size != strides:
            raise ValueError(f"layer {name!r}: only transposed convolutions with kernel == stride and padding='valid'")
        return graph.node("ConvTranspose", args, name, kernel_shape=list(kernel_size), strides=list(strides))
    if cls == "GroupNormalization":
        return _group_norm(graph, name, config, weights, x)
    if cls == "LeakyReLU":
        return graph.node("LeakyRelu", [x], name, alpha=float(config["negative_slope"]))
    if cls == "MaxPooling3D":
        pool, strides = list(config["pool_size"]), list(config["strides"] or config["pool_size"])
        if config["padding"] != "valid":
            raise ValueError(f"layer {name!r}: only padding='valid' pooling is supported")
        return graph.node("MaxPool", [x], name, kernel_shape=pool, strides=strides)
    if cls == "Concatenate":
        if config["axis"] not in (-1, 4):
            raise ValueError(f"layer {name!r}: only channel concatenation is supported")
        return graph.node("Concat", inputs, name, axis=1)
    if cls == "Softmax" or (cls == "Activation" and config["activation"] == "softmax"):
        return graph.node("Softmax", [x], name, axis=1)
    if cls == "Activation" and config["activation"] in ("sigmoid", "linear"):
        return graph.node("Sigmoid" if config["activation"] == "sigmoid" else "Identity", [x], name)
    raise ValueError(f"layer {name!r} ({cls}) is not supported by the ONNX exporter; supported: the layers of "
                     "core.segmentation.unet.build_unet")


def _group_norm(graph: _Graph, name: str, config: dict, weights: list[np.ndarray], x: str) -> str:
    """GroupNormalization of channel-first ``x``: InstanceNormalization on ``(N, G, -1)``, then the channel affine.

    With ``groups == channels`` (instance norm, the shipped U-Net) it is one InstanceNormalization with the layer's
    gamma and beta.
    """
    if config.get("axis", -1) not in (-1, 4):
        raise ValueError(f"layer {name!r}: only channel-last group normalisation is supported")
    channels = (weights[0] if config["scale"] else weights[-1]).shape[0] if weights else None
    if channels is None:
        raise ValueError(f"layer {name!r}: a GroupNormalization without scale and centre is not supported")
    gamma = weights[0] if config["scale"] else np.ones(channels, np.float32)
    beta = weights[-1] if config["center"] else np.zeros(channels, np.float32)
    groups, eps = int(config["groups"]), float(config["epsilon"])
    if groups == channels:
        return graph.node("InstanceNormalization", [x, graph.const(f"{name}/gamma", gamma),
                                                    graph.const(f"{name}/beta", beta)], name, epsilon=eps)
    grouped = graph.node("Reshape", [x, graph.const(f"{name}/grouped_shape", np.array([0, groups, -1], np.int64))],
                         f"{name}/grouped")
    normed = graph.node("InstanceNormalization", [grouped, graph.const(f"{name}/ones", np.ones(groups, np.float32)),
                                                  graph.const(f"{name}/zeros", np.zeros(groups, np.float32))],
                        f"{name}/normed", epsilon=eps)
    shape = graph.node("Shape", [x], f"{name}/shape")
    back = graph.node("Reshape", [normed, shape], f"{name}/ungrouped")
    scaled = graph.node("Mul", [back, graph.const(f"{name}/gamma", gamma.reshape(channels, 1, 1, 1))], f"{name}/scaled")
    return graph.node("Add", [scaled, graph.const(f"{name}/beta", beta.reshape(channels, 1, 1, 1))], name)


def _single_end(ends: Any) -> str | None:
    """The layer name of a functional config's ``input_layers`` / ``output_layers`` if it names one tensor."""
    if isinstance(ends, list) and len(ends) == 3 and isinstance(ends[0], str):
        return ends[0]  # Keras 3 stores a single end flat: ["image", 0, 0]
    if isinstance(ends, list) and len(ends) == 1 and isinstance(ends[0], list):
        return ends[0][0]
    return None


def keras_to_onnx(model: Any, metadata: dict[str, str] | None = None) -> Any:
    """The ``onnx.ModelProto`` of a functional U-Net (channel-last interface, float32).

    Args:
        model: a functional ``keras.Model`` built from the supported layers (``core.segmentation.unet.build_unet``).
        metadata: string key/values stored in the model's ``metadata_props``.

    Raises:
        ValueError: a layer or setting the exporter does not support (the message names the layer).
    """
    import onnx
    from onnx import TensorProto, helper

    config = model.get_config()
    ends = [_single_end(config.get(key)) for key in ("input_layers", "output_layers")]
    if None in ends:
        raise ValueError("only functional models with one input and one output can be exported")
    input_layer, output_layer = ends
    graph = _Graph()
    outputs = {input_layer: graph.node("Transpose", [INPUT_NAME], "image_channel_first", perm=[0, 4, 1, 2, 3])}
    for layer_config in config["layers"]:
        cls, name = layer_config["class_name"], layer_config["name"]
        if name == input_layer:
            continue
        if cls in ("Functional", "Model", "Sequential"):
            raise ValueError(f"layer {name!r} is a nested model (an ensemble?); export its members one by one")
        inputs = [outputs[source] for source in _inputs_of(layer_config)]
        outputs[name] = _convert(graph, model.get_layer(name), cls, layer_config["config"], inputs)
    last = outputs[output_layer]
    graph.node("Transpose", [last], OUTPUT_NAME, perm=[0, 2, 3, 4, 1])
    in_channels = int(model.inputs[0].shape[-1])
    out_channels = int(model.outputs[0].shape[-1])
    onnx_graph = helper.make_graph(
        graph.nodes, model.name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", "X", "Y", "Z", in_channels])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", "X", "Y", "Z", out_channels])],
        graph.initializers)
    proto = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="brats-studio core.segmentation.export_onnx")
    proto.ir_version = 8  # readable by any onnxruntime >= 1.14
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(proto)
    return proto


def export(keras_path: str | Path, onnx_path: str | Path, *, check_size: int = 64) -> dict:
    """Export ``keras_path`` to ``onnx_path`` and write its card (:func:`card_path`); returns the card.

    The export is checked on a random ``check_size``-cube input: ONNX Runtime's output must match Keras' float32
    forward to 1e-3 (the card records the largest difference).

    Raises:
        ModelLoadError: the ``.keras`` file does not load as a U-Net, or the exported graph disagrees with Keras.
    """
    import onnxruntime as ort

    from core.segmentation import unet
    from core.segmentation.keras_unet import check_unet_io
    from core.segmentation.precision import with_policy

    keras_path, onnx_path = Path(keras_path), Path(onnx_path)
    from core.io.weights import load_keras_file

    model = load_keras_file(keras_path, "U-Net", "python -m train.unet")
    check_unet_io(model, str(keras_path))
    model = with_policy(model, "float32")
    regions, multiple = unet.is_region_model(model), unet.size_multiple(model)
    source_sha = file_sha256(keras_path)
    proto = keras_to_onnx(model, {"source_sha256": source_sha, "regions": str(int(regions)),
                                  "size_multiple": str(multiple)})
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    onnx_path.write_bytes(proto.SerializeToString())
    rng = np.random.default_rng(0)
    size = max(multiple, check_size // multiple * multiple)
    x = rng.standard_normal((1, size, size, size, int(model.inputs[0].shape[-1]))).astype(np.float32)
    expected = np.asarray(model.predict_on_batch(x))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: x})[0]
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= 1e-3:
        onnx_path.unlink()
        raise ModelLoadError(f"ONNX export of {keras_path} differs from Keras by {diff:.2e} on a random input; "
                             "the file was not written. Report this with the model.")
    card = {
        "source": keras_path.name,
        "source_sha256": source_sha,
        "onnx_sha256": file_sha256(onnx_path),
        "opset": OPSET,
        "regions": regions,
        "size_multiple": multiple,
        "interface": "float32 (N, X, Y, Z, 4) channel-last in, (N, X, Y, Z, K) out, like the Keras model",
        "check": {"input": list(x.shape), "max_abs_diff_vs_keras_float32": diff},
        "command": EXPORT_COMMAND,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    card_path(onnx_path).write_text(json.dumps(card, indent=2) + "\n")
    return card


def main(argv: list[str] | None = None) -> int:
    """CLI: export the shipped (or given) U-Net to ONNX beside it."""
    from core.segmentation.inference import default_unet_path

    parser = argparse.ArgumentParser(prog="python -m core.segmentation.export_onnx",
                                     description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--weights", type=Path, default=default_unet_path(),
                        help="U-Net .keras file (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="ONNX file (default: the weights with .onnx)")
    args = parser.parse_args(argv)
    out = args.out or args.weights.with_suffix(".onnx")
    try:
        card = export(args.weights, out)
    except (ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    check = card["check"]
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB, max |ONNX - Keras| {check['max_abs_diff_vs_keras_float32']:.1e}"
          f" on a random {check['input']} input; card {card_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
