"""A U-Net exported to ONNX (``core.segmentation.export_onnx``), run with ONNX Runtime: no TensorFlow import.

:class:`OnnxUNet` offers what ``core.segmentation.inference`` uses of a Keras U-Net: ``predict_on_batch``, whether it
outputs regions, and the multiple every spatial size must have (both read from the exported file's metadata).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.io.weights import ModelLoadError

THREADS_ENV = "BRATS_INFERENCE_THREADS"  # ONNX Runtime intra-op threads (default: the CPUs this process may use)


def default_threads() -> int:
    """Intra-op threads: ``$BRATS_INFERENCE_THREADS`` or the number of CPUs this process may run on."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{THREADS_ENV}={value!r}: give a positive whole number of threads")
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class OnnxUNet:
    """An exported U-Net in an ONNX Runtime session (CPU, float32, graph optimisation level ALL).

    Attributes:
        path: the ``.onnx`` file.
        regions: the model outputs the three region sigmoids (WT, TC, ET) rather than the class softmax.
        size_multiple: every spatial input size must be a multiple of it.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        """Open ``path`` in an ONNX Runtime session with ``threads`` intra-op threads (default :func:`default_threads`).

        Raises:
            ModelLoadError: the file is missing, not an ONNX model, or lacks the exporter's metadata (the message
                names the file and the command that writes it).
        """
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # missing file, not a protobuf, unsupported opset, ...
            raise ModelLoadError(f"cannot load the ONNX U-Net {self.path}: {type(exc).__name__}: {exc}. Re-export it "
                                 "with `python -m core.segmentation.export_onnx`.") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if "regions" not in meta or "size_multiple" not in meta:
            raise ModelLoadError(f"{self.path} lacks the exporter's metadata (regions, size_multiple); re-export it "
                                 "with `python -m core.segmentation.export_onnx`.")
        self.regions = meta["regions"] == "1"
        self.size_multiple = int(meta["size_multiple"])
        self.source_sha256 = meta.get("source_sha256", "")
        self._input = self.session.get_inputs()[0].name

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        """Model outputs ``(N, X, Y, Z, K)`` of a float32 channel-last batch ``(N, X, Y, Z, 4)`` (like Keras)."""
        return self.session.run(None, {self._input: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def release_memory(self) -> None:
        """Give the memory of the last forward passes back to the system (ONNX Runtime's arena shrinkage).

        The CPU arena keeps what the largest pass needed (~1.7 GB for a BraTS case) for the next one. A process
        that keeps the model for many cases calls this after each case: one minimal pass with the run option
        ``memory.enable_memory_arena_shrinkage`` frees every arena region left unused (~2 GB → ~0.3 GB RSS after a
        case, measured), at the cost of re-allocating on the next case.
        """
        import onnxruntime as ort

        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        size = self.size_multiple
        self.session.run(None, {self._input: np.zeros((1, size, size, size, 4), np.float32)}, options)

    def __repr__(self) -> str:
        return f"OnnxUNet({str(self.path)!r}, regions={self.regions}, size_multiple={self.size_multiple})"
