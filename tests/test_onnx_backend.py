"""The ONNX export of the U-Net and the backend choice (issue 40): the exported graph computes what Keras computes,
a stale export is never used, and the CLI on the ONNX path does not import TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from core.io.case import save_case  # noqa: E402
from core.io.weights import ModelLoadError  # noqa: E402
from core.segmentation import backend, export_onnx, unet  # noqa: E402
from core.segmentation.inference import segment_case  # noqa: E402
from core.segmentation.onnx_unet import OnnxUNet  # noqa: E402
from tests.test_inference import toy_case  # noqa: E402

import keras  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _tiny(regions: bool, norm: str = "instance", seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = unet.build_unet(base_filters=8 if norm == "group" else 4, depth=3, norm=norm, regions=regions)
    # random norm affines, so a swapped gamma/beta or a wrong grouping shows
    for layer in model.layers:
        if isinstance(layer, keras.layers.GroupNormalization):
            layer.set_weights([np.random.default_rng(1).uniform(0.5, 1.5, w.shape).astype("float32")
                               for w in layer.get_weights()])
    return model


@pytest.mark.parametrize("regions, norm", [(True, "instance"), (False, "group")])
def test_exported_graph_computes_what_keras_computes(regions, norm):
    import onnxruntime as ort

    model = _tiny(regions, norm)
    proto = export_onnx.keras_to_onnx(model, {"regions": str(int(regions)), "size_multiple": "4"})
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).standard_normal((1, 12, 16, 8, 4)).astype(np.float32)  # anisotropic, not a cube
    got = session.run(None, {export_onnx.INPUT_NAME: x})[0]
    expected = np.asarray(model.predict_on_batch(x))
    assert got.shape == expected.shape == (1, 12, 16, 8, 3 if regions else 4)
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_exporter_names_an_unsupported_layer():
    inputs = keras.Input((None, None, None, 4))
    model = keras.Model(inputs, keras.layers.Conv3D(2, 3, padding="same", activation="relu", name="fused")(inputs))
    with pytest.raises(ValueError, match="'fused'"):
        export_onnx.keras_to_onnx(model)


@pytest.fixture()
def exported(tmp_path) -> tuple[Path, Path]:
    keras_path = tmp_path / "tiny.keras"
    _tiny(regions=True).save(keras_path)
    onnx_path = tmp_path / "tiny.onnx"
    card = export_onnx.export(keras_path, onnx_path, check_size=16)
    assert card["check"]["max_abs_diff_vs_keras_float32"] < 1e-4
    return keras_path, onnx_path


def test_auto_uses_a_matching_export_and_it_segments_like_keras(exported, monkeypatch):
    keras_path, onnx_path = exported
    monkeypatch.delenv(backend.BACKEND_ENV, raising=False)
    monkeypatch.delenv("BRATS_INFERENCE_PRECISION", raising=False)
    model = backend.load_unet(keras_path)
    assert isinstance(model, OnnxUNet) and model.regions and model.size_multiple == 4
    case = toy_case((21, 26, 17))
    onnx_result = segment_case(case, model)
    keras_result = segment_case(case, backend.load_unet(keras_path, "tensorflow"))
    np.testing.assert_array_equal(onnx_result.labels, keras_result.labels)
    np.testing.assert_allclose(onnx_result.probabilities, keras_result.probabilities, atol=1e-4)


def test_auto_keeps_tensorflow_for_a_warm_process_unless_onnx_is_asked_for(exported, monkeypatch):
    """The app, the API's workers and batch actors keep the model: auto gives them TensorFlow (faster forward here)."""
    keras_path, _ = exported
    monkeypatch.delenv(backend.BACKEND_ENV, raising=False)
    monkeypatch.delenv("BRATS_INFERENCE_PRECISION", raising=False)
    assert backend.choose_onnx(keras_path, warm=True) is None
    assert backend.choose_onnx(keras_path) is not None  # the one-shot CLI
    assert isinstance(backend.load_unet(keras_path, "onnx", warm=True), OnnxUNet)  # asked for explicitly


def test_the_app_gets_onnx_for_its_memory_even_warm(exported, monkeypatch):
    """A shared server (low_memory) takes ONNX Runtime, whose arena it can empty; an explicit backend still wins."""
    keras_path, _ = exported
    monkeypatch.delenv(backend.BACKEND_ENV, raising=False)
    monkeypatch.delenv("BRATS_INFERENCE_PRECISION", raising=False)
    assert backend.choose_onnx(keras_path, warm=True, low_memory=True) is not None
    assert isinstance(backend.load_unet(keras_path, warm=True, low_memory=True), OnnxUNet)
    monkeypatch.setenv(backend.BACKEND_ENV, "tensorflow")
    assert backend.choose_onnx(keras_path, warm=True, low_memory=True) is None


def test_the_pipeline_releases_onnx_memory_after_each_case(exported, monkeypatch):
    from core.segmentation.pipeline import SegmentOptions, segment

    keras_path, _ = exported
    monkeypatch.delenv(backend.BACKEND_ENV, raising=False)
    model = backend.load_unet(keras_path, warm=True, low_memory=True)
    released = []
    real_release = model.release_memory
    monkeypatch.setattr(model, "release_memory", lambda: released.append(real_release()))
    case = toy_case((21, 26, 17))
    first = segment(case, model, SegmentOptions(force=True, metrics=False))
    assert len(released) == 1  # the arena-shrinking pass ran (ONNX Runtime accepted the run option)
    again = segment(case, model, SegmentOptions(force=True, metrics=False))
    assert len(released) == 2
    np.testing.assert_array_equal(first.labels, again.labels)  # the next case after a release is the same


def test_a_stale_export_falls_back_to_tensorflow_with_a_warning(exported, monkeypatch):
    keras_path, onnx_path = exported
    monkeypatch.delenv(backend.BACKEND_ENV, raising=False)
    _tiny(regions=True, seed=5).save(keras_path)  # retrained: the card's SHA-256 no longer matches
    warnings: list[str] = []
    model = backend.load_unet(keras_path, warn=warnings.append)
    assert isinstance(model, keras.Model)
    assert len(warnings) == 1 and "SHA-256" in warnings[0] and "export_onnx" in warnings[0]
    with pytest.raises(ModelLoadError, match="another version"):
        backend.load_unet(keras_path, "onnx")


def test_a_tampered_export_and_a_missing_card_are_not_used(exported):
    keras_path, onnx_path = exported
    card = backend.card_path(onnx_path)
    data = json.loads(card.read_text())
    card.write_text(json.dumps({**data, "onnx_sha256": "0" * 64}))
    assert backend.onnx_export(keras_path)[0] is None
    card.unlink()
    path, reason = backend.onnx_export(keras_path)
    assert path is None and str(card) in reason


def test_backend_choice_is_validated_and_tensorflow_can_be_forced(exported, monkeypatch):
    keras_path, _ = exported
    monkeypatch.setenv(backend.BACKEND_ENV, "tensorflow")
    assert isinstance(backend.load_unet(keras_path), keras.Model)
    monkeypatch.setenv(backend.BACKEND_ENV, "torch")
    with pytest.raises(ValueError, match=backend.BACKEND_ENV):
        backend.load_unet(keras_path)
    monkeypatch.delenv(backend.BACKEND_ENV)
    monkeypatch.setenv("BRATS_INFERENCE_PRECISION", "mixed_bfloat16")  # the export is float32 only
    assert isinstance(backend.load_unet(keras_path), keras.Model)
    monkeypatch.delenv("BRATS_INFERENCE_PRECISION")
    (keras_path.parent / "other.keras").write_bytes(keras_path.read_bytes())  # no export beside it: no warning
    with pytest.raises(ModelLoadError, match="no ONNX export"):
        backend.load_unet(keras_path.parent / "other.keras", "onnx")


def test_cli_on_the_onnx_path_does_not_import_tensorflow(exported, tmp_path):
    keras_path, _ = exported
    folder = save_case(toy_case((21, 26, 17), seed=3, name="toy-case"), tmp_path / "in", naming="2020")
    out = tmp_path / "seg.nii.gz"
    script = ("import sys; from core.segment import main; code = main(sys.argv[1:]); "
              "loaded = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules); "
              "print('LOADED', loaded); sys.exit(code or (3 if loaded else 0))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), backend.BACKEND_ENV: "auto"}
    env.pop("BRATS_INFERENCE_PRECISION", None)
    proc = subprocess.run([sys.executable, "-c", script, str(folder), "-o", str(out), "--weights", str(keras_path),
                           "--force"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LOADED []" in proc.stdout and out.is_file()


def test_the_shipped_export_matches_the_shipped_keras_file():
    from core.segmentation.inference import default_unet_path

    keras_path = default_unet_path()
    if not backend.onnx_path_for(keras_path).is_file():
        pytest.skip("no shipped ONNX export")
    path, reason = backend.onnx_export(keras_path)
    assert path is not None, reason


def test_batch_ships_the_export_with_the_weights_only_while_it_matches(exported):
    from serve.batch import _weights_bytes

    keras_path, onnx_path = exported
    _, files = _weights_bytes(keras_path)
    assert set(files) == {"unet.keras", "unet.onnx", "unet.onnx.json"}
    assert files["unet.onnx"] == onnx_path.read_bytes()
    _tiny(regions=True, seed=7).save(keras_path)  # retrained: the workers get the .keras file alone
    assert set(_weights_bytes(keras_path)[1]) == {"unet.keras"}
