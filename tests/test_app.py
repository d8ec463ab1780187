"""Every page of the Streamlit app through ``streamlit.testing.v1.AppTest`` (no browser).

Models are tiny networks built here and injected with ``BRATS_UNET_WEIGHTS`` /
``BRATS_CVAE_WEIGHTS``. Custom components (click-to-move images, the drawing canvas) are
opaque to AppTest: they are covered by tests/test_render.py, tests/test_mask_edit.py and the
browser test.
"""

from __future__ import annotations

import gzip
import io
import json
import zipfile

import nibabel as nib
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app import actions, persistence
from app import state as app_state
from core.io.case import load_case_from_zip
from core.io.labels import from_internal
from core.io.nifti import nifti_bytes
from core.segmentation.metrics import volumes_ml
from tests.conftest import ROOT

APP = str(ROOT / "streamlit_app.py")
PAGES = ("pages/load.py", "pages/viewer.py", "pages/segment.py", "pages/edit_mask.py", "pages/generate.py")
TINY_SHAPE = (32, 32, 16)
TINY_AFFINE = np.array([[-1.0, 0, 0, 31.0], [0, -1.0, 0, 31.0], [0, 0, 1.0, -8.0], [0, 0, 0, 1]])
MODALITY_FILES = ("t1", "t1ce", "t2", "flair")


def _tiny_case_files(name: str = "Tiny_001") -> dict[str, bytes]:
    """A 32x32x16 BraTS-2020-named case: an ellipsoid brain with a labelled blob (2020 labels)."""
    rng = np.random.default_rng(7)
    grid = np.indices(TINY_SHAPE).astype(float)
    centre = np.array(TINY_SHAPE, float)[:, None, None, None] / 2
    r = np.sqrt((((grid - centre) / (centre * 0.8)) ** 2).sum(axis=0))
    brain = r < 1
    labels = np.zeros(TINY_SHAPE, np.uint8)
    labels[r < 0.55] = 2
    labels[r < 0.35] = 3
    labels[r < 0.15] = 1
    files = {}
    for i, modality in enumerate(MODALITY_FILES):
        image = (rng.normal(300 + 50 * i, 20, TINY_SHAPE) + 200 * (labels == 3)) * brain
        files[f"{name}_{modality}.nii.gz"] = nifti_bytes(image.astype(np.float32), TINY_AFFINE)
    files[f"{name}_seg.nii.gz"] = nifti_bytes(from_internal(labels, "2020"), TINY_AFFINE)
    return files


def _upload(at: AppTest, files: dict[str, bytes]) -> AppTest:
    at.file_uploader(key="upload_files").set_value([(n, d, "application/octet-stream") for n, d in files.items()])
    at.run()
    return at.button(key="load_upload").click().run()


def _nifti(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


def _fresh_sidebar(state: app_state.Studio) -> str:
    """Sidebar markdown of a new session holding ``state`` (AppTest drops the sidebar of an
    ``st.navigation`` app after its first run, so each check needs a first run)."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["studio"] = state
    at.run()
    return " ".join(m.value for m in at.sidebar.markdown)


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """Folder with a tiny U-Net (``unet.keras``) and its model card."""
    from core.segmentation.unet import build_unet

    folder = tmp_path_factory.mktemp("weights")
    build_unet(base_filters=4, depth=2).save(folder / "unet.keras")
    card = {"data": "nothing (test)", "step": 3, "validation": {"cases": "none", "dice": {"WT": 0.5, "ET": 0.25}}}
    (folder / "unet.json").write_text(json.dumps(card))
    return folder


@pytest.fixture
def app(monkeypatch, model_dir, tmp_path) -> AppTest:
    monkeypatch.setenv("BRATS_UNET_WEIGHTS", str(model_dir / "unet.keras"))
    monkeypatch.setenv("BRATS_CVAE_WEIGHTS", str(tmp_path / "missing_cvae.keras"))
    monkeypatch.setenv("BRATS_INSERTION_WEIGHTS", str(tmp_path / "missing_insertion.keras"))
    monkeypatch.setenv("BRATS_SESSION_DIR", str(tmp_path / "sessions"))
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception
    return at


@pytest.fixture
def tiny_app(app) -> AppTest:
    """The app with the tiny uploaded case loaded."""
    _upload(app, _tiny_case_files())
    assert not _errors(app) and not app.exception
    return app


def test_pages_render_without_a_case(app):
    # (AppTest drops the sidebar of an st.navigation app after the first run: checked first)
    sidebar = " ".join(m.value for m in app.sidebar.markdown)
    captions = " ".join(c.value for c in app.sidebar.caption)
    assert "unet.keras" in sidebar and "Trained on nothing (test)" in captions
    assert "validation Dice WT 0.500, ET 0.250" in captions
    assert any("missing_cvae.keras" in w.value and "do not exist" in w.value for w in app.sidebar.warning)
    for page in PAGES[1:]:
        app.switch_page(page).run()
        assert not app.exception, page
        assert any("No case loaded" in i.value for i in app.info), page


def test_demo_case_loads_and_every_viewer_layout_renders(app):
    app.button(key="load_demo").click().run()
    assert not app.exception and not _errors(app)
    state = app.session_state["studio"]
    assert state.case.shape == (240, 240, 155) and state.case.seg is not None
    assert state.case.name in _fresh_sidebar(state)
    assert any("Loaded" in s.value for s in app.success)

    app.switch_page("pages/viewer.py").run()
    assert not app.exception
    readout = [c.value for c in app.caption if c.value.startswith("Cursor voxel")]
    assert readout and "Reference: " in readout[0]
    expected = volumes_ml(state.case.seg, state.case.spacing)
    table = app.dataframe[0].value
    assert table.index.name == "volume (mL)"  # the table's header carries the unit
    regions = ("WT", "TC", "ET")
    assert np.allclose([table.loc[r, "Reference"] for r in regions], [expected[r] for r in regions])
    # moving the axial slider moves the shared cursor (z)
    app.slider(key="view_slice_axial").set_value(10).run()
    assert app.session_state["view_cursor"][2] == 10
    assert state.cursor[2] == 10  # the one cursor every page starts from
    for layout in ("4 modalities",):
        app.radio(key="view_layout").set_value(layout).run()
        assert not app.exception, layout
    app.radio(key="view_wmode").set_value("Manual").run()
    assert not app.exception


def test_uploads_load_and_a_bad_upload_keeps_the_case(app, tmp_path):
    files = _tiny_case_files()
    _upload(app, files)
    state = app.session_state["studio"]
    assert not _errors(app) and state.case.name == "Tiny_001" and state.case.shape == TINY_SHAPE
    assert np.allclose(state.case.affine, TINY_AFFINE)
    refusal = [w.value for w in app.warning if "not a whole-brain volume" in w.value]  # loaded, but a crop: said
    assert refusal and "Segment refuses this case unless you tick *Segment anyway*" in refusal[0]

    broken = dict(files)
    broken["Tiny_001_t2.nii.gz"] = b"not a nifti at all"
    _upload(app, broken)
    errors = _errors(app)
    assert errors and "Tiny_001_t2.nii.gz" in errors[0]
    assert app.session_state["studio"].case.name == "Tiny_001"  # the previous case stays

    names_2023 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}
    renamed = {f"BraTS-GLI-00007-000-{names_2023[k.split('_')[-1].split('.')[0]]}.nii.gz": v for k, v in files.items()}
    _upload(app, renamed)
    assert not _errors(app) and app.session_state["studio"].case.name == "BraTS-GLI-00007-000"

    missing = {k: v for k, v in files.items() if "_flair" not in k}
    _upload(app, missing)
    assert _errors(app) and "flair" in _errors(app)[0].lower()

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"Zipped_002/{name}", data)
    _upload(app, {"Zipped_002.zip": buffer.getvalue()})
    assert not _errors(app) and app.session_state["studio"].case.name == "Zipped_002"

    app.text_input(key="load_path").input("/no/such/folder").run()
    app.button(key="load_folder").click().run()
    assert any("no such folder" in e for e in _errors(app))
    assert not app.exception

    folder = tmp_path / "Folder_003"  # Enter in the path box opens the folder (no button click)
    folder.mkdir()
    for name, data in _tiny_case_files("Folder_003").items():
        (folder / name).write_bytes(data)
    app.text_input(key="load_path").input(str(folder)).run()
    assert not _errors(app) and app.session_state["studio"].case.name == "Folder_003"


def test_segment_with_tiny_unet_and_download(tiny_app):
    app = tiny_app
    app.switch_page("pages/segment.py").run()
    assert not app.exception
    app.toggle(key="seg_tta").set_value(False)
    # the tiny case is a 32 mm crop: refused as `core.segment` refuses it, unless the user ticks "Segment anyway"
    assert any("not a whole-brain volume" in w.value for w in app.warning) and app.button(key="seg_run").disabled
    app.checkbox(key="seg_force").check().run()
    assert not app.button(key="seg_run").disabled
    app.button(key="seg_run").click().run()
    assert not app.exception and not _errors(app)
    state = app.session_state["studio"]
    prediction = state.prediction
    assert prediction is not None and prediction.labels.shape == TINY_SHAPE
    assert set(prediction.metrics) == {"WT", "TC", "ET"}
    assert any("Segmented with unet.keras" in s.value for s in app.success)
    assert "U-Net prediction" in _fresh_sidebar(state)
    assert len(app.dataframe) == 1  # the metrics table
    metrics = app.dataframe[0].value
    assert metrics.index.name == "region" and list(metrics.index) == ["WT", "TC", "ET"] and "Dice" in metrics.columns
    assert app.get("download_button")
    assert app.selectbox(key="seg_convention").value == "2020"  # follows the loaded case (2020 files)
    data = actions.label_download(prediction.labels, state.case, "2020")
    image = _nifti(data)
    assert np.allclose(image.affine, TINY_AFFINE) and image.shape == TINY_SHAPE
    assert np.array_equal(np.asarray(image.dataobj), from_internal(prediction.labels, "2020"))
    # the WT/TC/ET probabilities behind it: the viewer's uncertainty layer and a download on the case grid
    codes = prediction.probability_codes
    assert codes is not None and codes.shape == TINY_SHAPE + (3,) and codes.dtype == np.uint8
    assert (codes[..., 0] >= codes[..., 1]).all() and (codes[..., 1] >= codes[..., 2]).all()  # WT >= TC >= ET
    assert len(app.get("download_button")) == 2  # the labels and the probabilities
    probabilities = _nifti(actions.probability_download(codes, state.case))
    assert np.allclose(probabilities.affine, TINY_AFFINE) and probabilities.shape == TINY_SHAPE + (3,)
    np.testing.assert_allclose(probabilities.get_fdata(), codes / 255.0, atol=1 / 255 + 1e-6)
    reloaded = AppTest.from_file(APP, default_timeout=180)  # a reload: the probabilities come back with the labels
    reloaded.query_params["sid"] = state.sid
    reloaded.run()
    restored = reloaded.session_state["studio"].prediction
    assert np.array_equal(restored.labels, prediction.labels)
    assert np.array_equal(restored.probability_codes, codes)

    # the prediction is now an overlay of the viewer
    app.switch_page("pages/viewer.py").run()
    assert not app.exception
    assert app.selectbox(key="view_layer").value == "Prediction"
    app.radio(key="view_layout").set_value("Side by side").run()
    assert not app.exception


def test_overlay_follows_the_newest_result_unless_the_user_picks(tiny_app):
    app = tiny_app
    app.switch_page("pages/segment.py").run()
    app.toggle(key="seg_tta").set_value(False)
    app.checkbox(key="seg_force").check().run()  # the tiny case is a crop
    app.button(key="seg_run").click().run()
    assert not app.exception
    assert app.selectbox(key="seg_layer").value == "Prediction"
    app.selectbox(key="seg_layer").set_value("Reference").run()
    app.toggle(key="seg_tta").set_value(False).run()
    assert app.selectbox(key="seg_layer").value == "Reference"  # the user's pick stays between results
    first = app.session_state["studio"].prediction.key
    app.button(key="seg_run").click().run()  # same page, widget state kept: a new result must move it
    assert app.session_state["studio"].prediction.key != first
    assert app.selectbox(key="seg_layer").value == "Prediction"
    app.switch_page("pages/viewer.py").run()
    assert not app.exception and app.selectbox(key="view_layer").value == "Prediction"


def test_segment_page_explains_missing_weights(tiny_app, monkeypatch, tmp_path):
    monkeypatch.setenv("BRATS_UNET_WEIGHTS", str(tmp_path / "nothing.keras"))
    tiny_app.switch_page("pages/segment.py").run()
    assert any("nothing.keras" in w.value and "do not exist" in w.value for w in tiny_app.warning)
    assert tiny_app.button(key="seg_run").disabled


def test_uploaded_model_is_loaded_safely_and_bad_one_reports(tiny_app, model_dir):
    app = tiny_app
    app.switch_page("pages/segment.py").run()
    app.radio(key="seg_model_source").set_value("Upload a .keras file").run()
    app.file_uploader(key="seg_upload").set_value(("broken.keras", b"PK\x03\x04 nonsense", "application/zip"))
    app.checkbox(key="seg_force").check().run()  # the tiny case is a crop
    app.run()
    app.button(key="seg_run").click().run()
    errors = [e for e in _errors(app) if "Segmentation failed" in e]
    assert errors and "broken.keras" in errors[0]  # the user's file name ...
    assert "brats_upload_" not in errors[0] and "/tmp" not in errors[0]  # ... never the server's temporary file
    assert app.session_state["studio"].prediction is None

    good = (model_dir / "unet.keras").read_bytes()
    app.file_uploader(key="seg_upload").set_value(("mine.keras", good, "application/zip"))
    app.run()
    app.button(key="seg_run").click().run()
    assert not _errors(app) and app.session_state["studio"].prediction.model_name == "mine.keras"


def test_edit_mask_tools_and_download(tiny_app):
    app = tiny_app
    app.switch_page("pages/edit_mask.py").run()
    assert not app.exception
    app.selectbox(key="edit_start").set_value("Reference").run()
    app.button(key="edit_start_button").click().run()
    state = app.session_state["studio"]
    reference = state.case.seg
    assert np.array_equal(state.editor.labels, reference)
    index = app.slider(key="edit_slice").value
    app.button(key="edit_clear").click().run()
    assert not state.editor.labels[:, :, index].any() and state.editor.labels.sum() < reference.sum()
    app.button(key="edit_copy_next").click().run()
    assert app.slider(key="edit_slice").value == index + 1
    assert not state.editor.labels[:, :, index + 1].any()
    app.button(key="edit_undo").click().run()
    app.button(key="edit_undo").click().run()
    assert np.array_equal(state.editor.labels, reference)
    app.button(key="edit_redo").click().run()
    assert not state.editor.labels[:, :, index].any()
    # switching planes keeps the 3D point: the coronal slice goes through the same voxel
    x, y, z = app.session_state["edit_cursor"]
    assert z == index + 1
    app.radio(key="edit_plane").set_value("coronal").run()
    assert app.slider(key="edit_slice").value == y
    assert not app.exception

    image = _nifti(actions.label_download(state.editor.labels, state.case, "2023"))
    assert np.allclose(image.affine, TINY_AFFINE)
    assert np.array_equal(np.asarray(image.dataobj), state.editor.labels)  # 2023 values = internal

    app.switch_page("pages/viewer.py").run()
    assert app.selectbox(key="view_layer").value == "Edited mask"


def test_work_survives_a_reload_and_another_case(tiny_app, monkeypatch):
    """A new browser session with the same ?sid= gets the case and edits back; loading another case keeps them."""
    app = tiny_app
    state = app.session_state["studio"]
    sid = state.sid
    assert app.query_params.get("sid") == sid
    app.switch_page("pages/edit_mask.py").run()
    app.selectbox(key="edit_start").set_value("Reference").run()
    app.button(key="edit_start_button").click().run()
    assert any("Dice vs reference" in list(d.value.index) for d in app.dataframe)  # edited mask vs reference
    app.button(key="edit_clear").click().run()  # an edit (saved on the server at once)
    edited = state.editor.labels.copy()
    assert not np.array_equal(edited, state.case.seg)

    reloaded = AppTest.from_file(APP, default_timeout=180)
    reloaded.query_params["sid"] = sid
    reloaded.run()
    assert not reloaded.exception
    restored = reloaded.session_state["studio"]
    assert restored.case.name == state.case.name and restored.editor is not None
    assert np.array_equal(restored.editor.labels, edited)
    assert any("Restored your session" in i.value for i in reloaded.info)
    assert restored.editor.can_undo  # the undo history came back too: Undo takes back the clear
    reloaded.switch_page("pages/edit_mask.py").run()
    reloaded.button(key="edit_undo").click().run()
    assert np.array_equal(reloaded.session_state["studio"].editor.labels, state.case.seg)
    reloaded.button(key="edit_redo").click().run()
    reloaded.switch_page("pages/load.py").run()

    reloaded.button(key="load_demo").click().run()  # another case: the tiny one is kept
    assert reloaded.session_state["studio"].case.name != state.case.name
    assert any("are saved" in i.value for i in reloaded.info)
    switch = [b for b in reloaded.button if b.key and b.key.startswith("switch_")]
    assert len(switch) == 1
    switch[0].click().run()
    back = reloaded.session_state["studio"]
    assert back.case.name == state.case.name and np.array_equal(back.editor.labels, edited)


def test_generate_page_explains_missing_weights(tiny_app):
    tiny_app.switch_page("pages/generate.py").run()
    assert not tiny_app.exception
    assert any("missing_insertion.keras" in w.value for w in tiny_app.warning)  # default: into this case
    assert tiny_app.button(key="gen_run").disabled
    tiny_app.radio(key="gen_mode").set_value(app_state.NEW_BRAIN).run()
    assert any("missing_cvae.keras" in w.value for w in tiny_app.warning)
    assert tiny_app.button(key="gen_run").disabled


def test_cases_zip_round_trips(tiny_app):
    case = tiny_app.session_state["studio"].case
    data = actions.cases_zip([case], "2023")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == sorted(
            f"Tiny_001/Tiny_001-{s}.nii.gz" for s in ("t1n", "t1c", "t2w", "t2f", "seg"))
    loaded = load_case_from_zip(data)
    assert np.allclose(loaded.affine, case.affine) and np.array_equal(loaded.seg, case.seg)
    assert np.allclose(loaded.image, case.image)


@pytest.fixture(scope="module")
def tiny_cvae_path(model_dir):
    """A tiny CVAE on the 32x32x16 grid of the tiny case."""
    from core.synthesis.cvae import CvaeGrid, build_cvae

    path = model_dir / "cvae.keras"
    build_cvae(4, 2, 2, grid=CvaeGrid(TINY_SHAPE, 2)).save(path)
    return path


def test_generate_with_tiny_cvae_fidelity_and_zip(tiny_app, tiny_cvae_path, monkeypatch):
    monkeypatch.setenv("BRATS_CVAE_WEIGHTS", str(tiny_cvae_path))
    app = tiny_app
    app.switch_page("pages/generate.py").run()
    app.radio(key="gen_mode").set_value(app_state.NEW_BRAIN).run()
    assert not app.exception and not app.warning
    assert app.selectbox(key="gen_mask").value == "Reference"
    app.number_input(key="gen_n").set_value(2)
    app.number_input(key="gen_seed").set_value(3)
    app.button(key="gen_run").click().run()
    assert not app.exception and not _errors(app)
    state = app.session_state["studio"]
    samples = state.samples
    assert len(samples.cases) == 2 and samples.seed == 3
    for sample in samples.cases:
        assert sample.shape == TINY_SHAPE and np.array_equal(sample.seg, state.case.seg)
        assert np.allclose(sample.affine, TINY_AFFINE)
    assert not np.allclose(samples.cases[0].image, samples.cases[1].image)  # two different draws
    assert app.radio(key="gen_sample").value == 0

    app.radio(key="gen_sample").set_value(1).run()
    app.button(key="gen_fidelity").click().run()
    assert not _errors(app) and set(samples.fidelity) == {1}
    assert set(samples.fidelity[1]) == {"WT", "TC", "ET"}

    data = actions.cases_zip(samples.cases, "2020")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        folders = sorted({name.split("/")[0] for name in zf.namelist()})
    assert folders == sorted(c.name for c in samples.cases)
    loaded = load_case_from_zip(_only_folder(data, folders[0]))
    assert np.allclose(loaded.affine, TINY_AFFINE) and np.array_equal(loaded.seg, state.case.seg)

    # a second run keeps the first set in the session's history (on the server); the user can go back, or remove
    app.number_input(key="gen_seed").set_value(4)
    app.button(key="gen_run").click().run()
    assert not app.exception and not _errors(app)
    assert state.samples.seed == 4 and state.samples.key != samples.key
    assert len(app.selectbox(key="gen_set").options) == 2 and app.selectbox(key="gen_set").value == state.samples.key
    app.selectbox(key="gen_set").set_value(samples.key).run()
    shown = app.session_state["studio"].samples
    assert shown.seed == 3 and set(shown.fidelity) == {1}  # read back from the session store, with its fidelity
    np.testing.assert_allclose(shown.cases[1].image, samples.cases[1].image, rtol=1e-3, atol=1e-3)  # float16
    app.button(key="gen_remove").click().run()
    assert app.session_state["studio"].samples.seed == 4  # the newest remaining set
    assert [h["seed"] for h in persistence.sample_history(state)] == [4]
    app.button(key="gen_remove").click().run()
    assert app.session_state["studio"].samples is None and not persistence.sample_history(state)


def _only_folder(data: bytes, folder: str) -> bytes:
    """The zip restricted to one case folder."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            if name.startswith(folder + "/"):
                dst.writestr(name, src.read(name))
    return out.getvalue()
