"""Weights paths, env overrides and model cards (core.io.weights never imports TensorFlow)."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from core.io.case import CaseError, load_label_map
from core.io.weights import ModelLoadError, load_model_card, shipped_path, weights_path


def test_env_override_and_default(monkeypatch, tmp_path):
    monkeypatch.delenv("BRATS_UNET_WEIGHTS", raising=False)
    assert weights_path("unet") == (shipped_path("unet"), False)
    monkeypatch.setenv("BRATS_UNET_WEIGHTS", str(tmp_path / "tiny.keras"))
    assert weights_path("unet") == (tmp_path / "tiny.keras", True)
    with pytest.raises(ValueError, match="unknown model kind"):
        shipped_path("gan")


def test_model_card_read_missing_and_corrupt(tmp_path):
    weights = tmp_path / "unet.keras"
    assert load_model_card(weights) is None
    (tmp_path / "unet.json").write_text(json.dumps({"step": 3}))
    assert load_model_card(weights) == {"step": 3}
    (tmp_path / "unet.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="unet.json"):
        load_model_card(weights)


def test_weights_module_does_not_import_tensorflow():
    code = "import sys, core.io.weights; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_load_label_map_converts_and_names_bad_file(tmp_path):
    seg = np.zeros((6, 5, 4), np.uint8)
    seg[1, 1, 1], seg[2, 2, 2] = 4, 2
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(seg, affine), tmp_path / "mask.nii.gz")
    labels, aff, _, convention = load_label_map(tmp_path / "mask.nii.gz")
    assert convention == "2020" and labels[1, 1, 1] == 3 and labels[2, 2, 2] == 2
    np.testing.assert_allclose(aff, affine)
    seg[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(seg, affine), tmp_path / "bad.nii.gz")
    with pytest.raises(CaseError, match="bad.nii.gz"):
        load_label_map(tmp_path / "bad.nii.gz")
