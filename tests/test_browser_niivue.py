"""The NiiVue viewer/editor end to end in headless Chromium with software WebGL2 (SwiftShader).

load demo → Viewer (wheel scrolls slices in the browser) → Segment (a background run) → Edit mask:
quick strokes 100 ms apart, each must land exactly once → Ctrl+Z / Ctrl+Y → reload the page: the
session comes back from the server (case, prediction, edits) → Generate → download and check.

Skipped when ``/usr/bin/chromium`` is absent. Models are tiny stand-ins built here (an always-"edema"
U-Net, an untrained CVAE): the test is about the app's plumbing, not the models.
Set ``BRATS_SCREENSHOTS=DIR`` to save a screenshot of every step into DIR.
"""

from __future__ import annotations

import gzip
import re
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bench.server import (
    CHROMIUM,
    always_edema_unet,
    chromium_page,
    goto_page,
    niivue_frame,
    optional_screenshot,
    streamlit_server,
    wait_until_idle,
)
from core.io.labels import CLASS_NAMES
from core.synthesis.anatomy import BRATS_AFFINE
from core.synthesis.demo import demo_case
from core.viewer.niivue import voxel_to_ras_flat

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)")
playwright = pytest.importorskip("playwright.sync_api")

STROKES = 8
SHAPE = (240, 240, 155)


def _shot(page, name: str) -> None:
    optional_screenshot(page, f"niivue_{name}")


def viewer_frame(page):
    """The NiiVue component's frame (there is one per page)."""
    return niivue_frame(page, 60)


def wait_ready(page, timeout_ms: int = 120_000):
    """Wait until the component has shown its volume and labels; returns its frame."""
    frame = viewer_frame(page)
    frame.wait_for_function("() => document.body.dataset.ready === '1'", timeout=timeout_ms)
    return frame


def wait_synced(frame, rev: int, timeout_ms: int = 60_000) -> None:
    """Wait until Python acknowledged revision ``rev`` and the browser holds no unsent edit."""
    try:
        frame.wait_for_function(
            f"() => window.bratsViewer.acked >= {rev} && window.bratsViewer.pending.length === 0", timeout=timeout_ms)
    except playwright.Error as exc:
        state = frame.evaluate("() => JSON.stringify({acked: window.bratsViewer.acked, rev: window.bratsViewer.rev, "
                               "pending: window.bratsViewer.pending.map(e => [e.rev, e.op]), "
                               "focus: document.activeElement && document.activeElement.id, "
                               "hasFocus: document.hasFocus()})")
        raise AssertionError(f"revision {rev} not acknowledged: {state}") from exc


def bitmap_voxels(frame, label: int) -> np.ndarray:
    """Flat RAS indices of the browser's drawing layer holding ``label``."""
    indices = frame.evaluate(
        f"() => {{ const b = window.bratsViewer.nv.drawBitmap; const out = []; "
        f"for (let i = 0; i < b.length; i++) if (b[i] === {label}) out.push(i); return out }}")
    return np.asarray(indices, dtype=np.int64)


def _check_readout(frame, modality: str) -> None:
    """The status read-out names the case's voxel under the crosshair, the shown modality and the label there."""
    text = frame.locator("#status").inner_text()
    match = re.search(r"voxel (\d+), (\d+), (\d+) · (\S+) (-?[\d.e+]+) · (\w+)", text)
    assert match, text
    mm = frame.evaluate("() => { const nv = window.bratsViewer.nv; "
                        "return Array.from(nv.frac2mm(nv.scene.crosshairPos)).slice(0, 3) }")
    expected = np.rint(np.linalg.inv(BRATS_AFFINE) @ np.append(mm, 1.0))[:3].astype(int)
    voxel = tuple(int(v) for v in match.groups()[:3])
    assert voxel == tuple(expected.tolist()), (text, mm)
    case = demo_case()
    assert match.group(4) == modality
    channel = ("T1", "T1ce", "T2", "FLAIR").index(modality)
    tolerance = 0.01 * float(np.ptp(case.image[channel]))  # 8-bit display volumes: 1/255 of the range
    assert float(match.group(5)) == pytest.approx(float(case.image[channel][voxel]), abs=tolerance)
    assert match.group(6) == CLASS_NAMES[int(case.seg[voxel])]


def _components(flat: np.ndarray) -> int:
    """Number of separate pieces (strokes) among RAS flat indices."""
    mask = np.zeros(SHAPE[0] * SHAPE[1] * SHAPE[2], bool)
    mask[flat] = True
    return int(ndimage.label(mask.reshape(SHAPE, order="F"), structure=np.ones((3, 3, 3)))[1])


_ET_COUNT_JS = ("([n, fewer]) => { const b = window.bratsViewer.nv.drawBitmap; let c = 0; for (const v of b) "
                "if (v === 3) c++; return fewer ? c < n : c === n }")


def _undo_redo_last_stroke(page, frame, rev: int, et_voxels: int, at_once: bool) -> None:
    """Ctrl+Z takes the last stroke back, Ctrl+Y brings it back.

    ``rev``: the last revision Python acknowledged; ``et_voxels``: the ET voxels with every stroke. ``at_once``:
    the stroke was drawn in this page, so the browser shows the undo and redo itself and Python confirms them
    without sending a labels file (no whole-layer upload); else (after a reload) the labels file shows them.
    """
    frame.locator("#status").click()  # the keyboard focus into the viewer (a button may hold it)
    before = frame.evaluate("() => [document.body.dataset.labelsToken, window.bratsViewer.uploads.full]")
    page.keyboard.press("Control+z")
    frame.wait_for_function(_ET_COUNT_JS, arg=[et_voxels, True], timeout=60_000)
    wait_synced(frame, rev + 1)
    assert _components(bitmap_voxels(frame, 3)) == STROKES - 1
    page.keyboard.press("Control+y")
    frame.wait_for_function(_ET_COUNT_JS, arg=[et_voxels, False], timeout=60_000)
    wait_synced(frame, rev + 2)
    page.wait_for_timeout(2500)  # a labels file Python would send comes with its acknowledgement
    after = frame.evaluate("() => [document.body.dataset.labelsToken, window.bratsViewer.uploads.full]")
    assert (after == before) == at_once, (before, after)
    frame.wait_for_function(_ET_COUNT_JS, arg=[et_voxels, False], timeout=10_000)


def _download(page, name: str, target: Path) -> Path:
    """Click a download button and save the file.

    One second click if the first gives nothing in 60 s: Streamlit drops a download button's deferred data
    (``data=callable``) when a script run that ends meanwhile no longer references it, and the click then fetches
    nothing (no message): 2 of 4 clicks right after Generate with the viewer bundle of 6892e8e as well. The viewer's
    own reports (cursor, ready) no longer rerun the whole page (it is an ``st.fragment``): no click right after a
    viewer click failed (0 of 40 in bench/app/bench_downloads.py, 2 of 32 before); other whole-page runs can still
    race a click.
    """
    wait_until_idle(page)
    for attempt in (1, 2):
        try:
            with page.expect_download(timeout=60_000 * attempt) as info:
                page.get_by_role("button", name=name).click()
            break
        except playwright.TimeoutError:
            if attempt == 2:
                raise
            wait_until_idle(page)
    info.value.save_as(target)
    return target


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    always_edema_unet(folder / "unet.keras")
    from core.synthesis.cvae import build_cvae
    from core.synthesis.vaegan import build_insertion_model

    build_cvae(4, 2, 2).save(folder / "cvae.keras")
    build_insertion_model(base_filters=4, latent_channels=2, seed=0).save(folder / "insertion.keras")
    env = {"BRATS_UNET_WEIGHTS": str(folder / "unet.keras"), "BRATS_CVAE_WEIGHTS": str(folder / "cvae.keras"),
           "BRATS_INSERTION_WEIGHTS": str(folder / "insertion.keras"), "BRATS_SESSION_DIR": str(folder / "sessions")}
    with streamlit_server(env) as running:
        yield running


def test_niivue_view_segment_edit_reload_generate(server, tmp_path):
    with chromium_page(webgl=True) as page:
        page.goto(server.url)
        page.get_by_role("heading", name="Load a case").wait_for(timeout=60_000)
        assert "sid=" in page.url  # the session id that finds the saved work after a reload
        page.get_by_role("button", name="Load the demo case").click()
        page.locator("[data-testid=stAlertContentSuccess]").wait_for(timeout=120_000)

        # Viewer: the wheel scrolls slices in the browser (no server round trip)
        goto_page(page, "Viewer")
        frame = wait_ready(page)
        _shot(page, "1_viewer")
        assert page.get_by_role("combobox", name="Overlay").input_value() == "Reference"  # the demo's reference
        _check_readout(frame, "FLAIR")
        frame.get_by_role("button", name="T1", exact=True).click()  # the read-out follows a modality switch
        frame.wait_for_function("() => document.getElementById('status').textContent.includes(' T1 ')",
                                timeout=60_000)
        _check_readout(frame, "T1")
        # label visibility is the browser's: a colour-table change, kept for every page
        frame.locator('button.eye[data-label="3"]').click()
        frame.wait_for_function("() => document.body.dataset.visible === '1,2' && "
                                "window.bratsViewer.nv.drawLut.lut[15] === 0", timeout=30_000)
        frame.locator('button.eye[data-label="3"]').click()
        frame.wait_for_function("() => document.body.dataset.visible === '1,2,3' && "
                                "window.bratsViewer.nv.drawLut.lut[15] === 255", timeout=30_000)
        before = frame.evaluate("() => Array.from(window.bratsViewer.nv.scene.crosshairPos)")
        box = frame.locator("#gl").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.75)  # the axial tile
        for _ in range(5):
            page.mouse.wheel(0, 100)
            page.wait_for_timeout(50)
        after = frame.evaluate("() => Array.from(window.bratsViewer.nv.scene.crosshairPos)")
        assert after != before

        # Segment: a background run; its result is shown when it ends
        goto_page(page, "Segment")
        page.get_by_role("button", name="Segment", exact=True).click()
        page.get_by_text("Segmented with unet.keras").wait_for(timeout=180_000)
        # the overlay follows the new result (the shared viewer setting was "Reference")
        playwright.expect(page.get_by_role("combobox", name="Overlay")).to_have_value("Prediction", timeout=60_000)
        # the prediction's uncertainty: a toggle in the viewer bar adds it as an overlay in the browser
        frame = wait_ready(page)
        frame.get_by_role("button", name="Uncertainty", exact=True).click()
        frame.wait_for_function("() => document.body.dataset.uncertainty === '1' && "
                                "window.bratsViewer.nv.volumes.length === 2 && "
                                "document.getElementById('status').textContent.includes(' · uncertainty ')",
                                timeout=120_000)

        # Edit mask: quick strokes, each applied exactly once
        goto_page(page, "Edit mask")
        page.get_by_role("button", name="Start editing").click()
        frame = wait_ready(page)
        canvas = frame.locator("#gl")
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # hovering focuses the canvas
        page.keyboard.press("a")  # axial view
        page.keyboard.press("3")  # ET
        page.wait_for_timeout(300)
        x0, y0 = box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.2
        for stroke in range(STROKES):
            y = y0 + stroke * box["height"] * 0.07
            page.mouse.move(x0, y)
            page.mouse.down()
            for step in range(1, 8):
                page.mouse.move(x0 + step * box["width"] * 0.03, y)
            page.mouse.up()
            page.wait_for_timeout(100)
        wait_synced(frame, STROKES)
        page.get_by_text(f"{STROKES} strokes received").wait_for(timeout=60_000)
        et_browser = bitmap_voxels(frame, 3)
        assert _components(et_browser) == STROKES  # every stroke is there
        _shot(page, "2_edit")

        target = _download(page, "Download the edited mask (.nii.gz)", tmp_path / "edited.nii.gz")
        image = nib.Nifti1Image.from_bytes(gzip.decompress(target.read_bytes()))
        assert image.shape == SHAPE and np.allclose(image.affine, BRATS_AFFINE)
        labels = np.asarray(image.dataobj)
        et_server = voxel_to_ras_flat(np.nonzero(labels == 3), SHAPE, BRATS_AFFINE)
        np.testing.assert_array_equal(np.sort(et_server), np.sort(et_browser))  # Python holds what was drawn

        # Undo / redo by key: the last stroke goes and comes back
        _undo_redo_last_stroke(page, frame, STROKES, int(et_browser.size), at_once=True)
        page.get_by_text(f"{STROKES} strokes received · 2 undo/redo").wait_for(timeout=60_000)

        # Reload: the case, the prediction and every edit come back from the server
        page.reload()
        page.get_by_text("Restored your session").wait_for(timeout=120_000)
        frame = wait_ready(page)
        restored = bitmap_voxels(frame, 3)
        np.testing.assert_array_equal(np.sort(restored), np.sort(et_browser))
        assert "U-Net prediction" in page.locator("[data-testid=stSidebar]").inner_text()
        _shot(page, "3_reloaded")
        # the undo history came back with the mask: Ctrl+Z takes the last stroke back, Ctrl+Y redoes it
        _undo_redo_last_stroke(page, frame, int(frame.evaluate("() => window.bratsViewer.acked")), int(et_browser.size),
                               at_once=False)

        # Generate from the edited mask, download the zip
        goto_page(page, "Generate", "Generate synthetic MRI")
        page.get_by_test_id("stRadioGroup").get_by_text("New brain", exact=True).click()  # CVAE (default: insertion)
        page.get_by_role("button", name="Generate", exact=True).click()
        page.get_by_text("Generated 2 sample(s)").wait_for(timeout=180_000)
        # the samples are in the same NiiVue viewer, with the mask they were generated from as its labels
        frame = _wait_sample_shown(page, "")
        assert frame.evaluate("() => window.bratsViewer.args.volumes.map((v) => v.name).join()") == "T1,T1ce,T2,FLAIR"
        np.testing.assert_array_equal(np.sort(bitmap_voxels(frame, 3)), np.sort(et_browser))
        _shot(page, "4_generate")
        target = _download(page, "Download all 2 samples (.zip)", tmp_path / "samples.zip")

        # Into this case: the viewer bar offers the host's own volumes beside the sample's (a flip in the browser)
        page.get_by_test_id("stRadioGroup").get_by_text("Into this case", exact=True).click()
        page.get_by_role("button", name="Render into this case", exact=True).click()
        page.get_by_text("Sample set (2 in this session").wait_for(timeout=180_000)
        frame = _wait_sample_shown(page, "Sample:")
        assert "Host" in frame.locator("#bar").inner_text()
        host_fetches = ("() => { const urls = window.bratsViewer.args.volumes.filter((v) => v.group === 'Host')"
                        ".map((v) => v.url); return performance.getEntriesByType('resource')"
                        ".filter((e) => urls.some((u) => e.name.endsWith(u))).length }")
        assert frame.evaluate(host_fetches) == 0  # the host's volumes are fetched only when picked
        before = _canvas_pixels(frame)
        frame.locator('button[title^="Show Host FLAIR"]').click()
        frame.wait_for_function("() => document.body.dataset.modality === 'Host:FLAIR' && "
                                "document.getElementById('status').textContent.includes(' Host FLAIR ')",
                                timeout=120_000)
        page.wait_for_timeout(300)
        assert (np.abs(_canvas_pixels(frame) - before) > 10).mean() > 0.001  # the host's own tumour, not the sample's
        assert frame.evaluate(host_fetches) == 1  # its FLAIR only
        _shot(page, "5_generate_host")
    with zipfile.ZipFile(target) as zf:
        names = zf.namelist()
        assert len({n.split("/")[0] for n in names}) == 2
        seg_name = next(n for n in names if "seg" in n)
        seg = nib.Nifti1Image.from_bytes(gzip.decompress(zf.read(seg_name)))
    assert seg.shape == SHAPE
    assert np.array_equal(np.asarray(seg.dataobj) > 0, labels > 0)  # generated from the edited mask


def _wait_sample_shown(page, prefix: str):
    """The Generate page's viewer once it shows a sample (volume names starting with ``prefix``) and its mask."""
    frame = viewer_frame(page)
    frame.wait_for_function(
        "(prefix) => { const args = window.bratsViewer.args || {};"
        " const names = (args.volumes || []).map((v) => v.name);"
        " return document.body.dataset.ready === '1' && names.length > 0 && names.every((n) => n.startsWith(prefix)"
        " || n.startsWith('Host:')) && names.includes(document.body.dataset.modality) && "
        "document.body.dataset.labelsToken === args.labels_token }", arg=prefix, timeout=180_000)
    return frame


def _draw_et_strokes(page, frame, column: float, first: int, count: int) -> None:
    """``count`` separate ET strokes on the axial view, rows ``first`` .. at horizontal position ``column``."""
    box = frame.locator("#gl").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # hovering focuses the canvas
    page.keyboard.press("a")
    page.keyboard.press("3")
    page.wait_for_timeout(200)
    for row in range(first, first + count):
        x0, y = box["x"] + box["width"] * column, box["y"] + box["height"] * (0.15 + 0.07 * row)
        page.mouse.move(x0, y)
        page.mouse.down()
        for step in range(1, 6):
            page.mouse.move(x0 + step * box["width"] * 0.02, y)
        page.mouse.up()


def _wait_components(frame, expected: int, timeout_s: float = 60.0) -> int:
    """Wait until the browser's drawing layer holds ``expected`` separate ET strokes; returns the last count."""
    import time

    deadline, found = time.monotonic() + timeout_s, -1
    while time.monotonic() < deadline:
        found = _components(bitmap_voxels(frame, 3))
        if found == expected:
            return found
        time.sleep(0.5)
    return found


def test_two_tabs_on_one_session_lose_no_stroke(server, tmp_path):
    """Tabs A and B edit one session's mask alternately: every confirmed stroke of both is kept and shown in both."""
    rounds = 3
    with chromium_page(webgl=True) as page_a:
        page_a.goto(server.url)
        page_a.get_by_role("button", name="Load the demo case").click()
        page_a.locator("[data-testid=stAlertContentSuccess]").wait_for(timeout=120_000)
        goto_page(page_a, "Edit mask")
        page_a.get_by_role("combobox", name="Start from").click()
        page_a.get_by_role("option", name="Empty", exact=True).click()
        page_a.get_by_role("button", name="Start editing").click()
        frame_a = wait_ready(page_a)
        page_b = page_a.context.new_page()  # a second tab of the same browser, same session URL
        page_b.goto(page_a.url)
        frame_b = wait_ready(page_b)
        for i in range(rounds):  # alternate, each tab waits for its own acknowledgement
            _draw_et_strokes(page_a, frame_a, 0.3, i, 1)
            wait_synced(frame_a, frame_a.evaluate("() => window.bratsViewer.rev"))
            _draw_et_strokes(page_b, frame_b, 0.55, i, 1)
            wait_synced(frame_b, frame_b.evaluate("() => window.bratsViewer.rev"))
        # each tab shows the other's strokes too (it polls the session every 2 s)
        assert _wait_components(frame_a, 2 * rounds) == 2 * rounds
        assert _wait_components(frame_b, 2 * rounds) == 2 * rounds
        page_a.get_by_text(f"{2 * rounds} strokes received").wait_for(timeout=30_000)
        target = _download(page_a, "Download the edited mask (.nii.gz)", tmp_path / "edited.nii.gz")
    labels = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(target.read_bytes())).dataobj)
    pieces, count = ndimage.label(labels == 3, structure=np.ones((3, 3, 3)))
    assert count == 2 * rounds
    sizes = np.bincount(pieces.ravel())[1:]
    assert sizes.min() >= 0.9 * sizes.max(), sizes  # whole strokes: none lost one of its 5 pen moves


# every slice of NiiVue's drawing texture read back from the GPU, against the browser's drawing bitmap
_TEXTURE_VS_BITMAP_JS = """() => { const nv = window.bratsViewer.nv; const gl = nv.gl; const d = nv.back.dims;
  const n = d[1] * d[2]; const px = new Uint8Array(n * 4); const fb = gl.createFramebuffer();
  const previous = gl.getParameter(gl.FRAMEBUFFER_BINDING); gl.bindFramebuffer(gl.FRAMEBUFFER, fb);
  let differ = 0, labelled = 0;
  for (let z = 0; z < d[3]; z++) {
    gl.framebufferTextureLayer(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, nv.drawTexture, 0, z);
    gl.readPixels(0, 0, d[1], d[2], gl.RGBA, gl.UNSIGNED_BYTE, px);
    for (let i = 0; i < n; i++) {
      const v = nv.drawBitmap[z * n + i]; if (v) labelled++; if (px[4 * i] !== v) differ++ } }
  gl.bindFramebuffer(gl.FRAMEBUFFER, previous); gl.deleteFramebuffer(fb);
  return {differ, labelled} }"""
# where the 4-up view's 3D pane is, once every redraw asked for is on screen, and the render cache's state
_RENDER_PANE_JS = """async () => { const viewer = window.bratsViewer; await viewer.pacing.idle();
  const pane = viewer.nv.screenSlices.find((s) => s.axCorSag === 4).leftTopWidthHeight.map(Math.round);
  return {pane, stale: viewer.renderCache.stale(), stats: {...viewer.renderCache.stats}} }"""


def _pane_pixels(frame) -> tuple[np.ndarray, dict]:
    """The screen's pixels of the 3D pane (a screenshot: what the compositor shows) and the render cache's state."""
    state = frame.evaluate(_RENDER_PANE_JS)
    x, y, w, h = state["pane"]
    return _canvas_pixels(frame)[y:y + h, x:x + w], state


# one redraw as during an interaction (the 3D pane's last picture), then the pane as above
_QUICK_REDRAW_JS = "() => { window.bratsViewer.renderCache.defer(); window.bratsViewer.nv.drawScene() }"


_EAGER_GRADIENT_JS = ("() => { const nv = window.bratsViewer.nv; nv.gradientGL(nv.back.hdr); "
                      "window.bratsViewer.renderCache.settle(); nv.drawScene() }")


def test_strokes_upload_their_box_and_the_3d_pane_waits(server):
    """A pen move uploads only the voxels it touched, and the GPU's drawing layer still equals the drawing; while
    the user works, the 4-up view's 3D pane shows its last picture pixel for pixel and is rendered once they pause."""
    with chromium_page(webgl=True) as page:
        page.goto(server.url)
        page.get_by_role("button", name="Load the demo case").click()
        page.locator("[data-testid=stAlertContentSuccess]").wait_for(timeout=120_000)
        goto_page(page, "Edit mask")
        page.get_by_role("button", name="Start editing").click()  # from the reference: labels on every slice
        frame = wait_ready(page)
        frame.wait_for_function("() => document.body.dataset.warm === '4'", timeout=180_000)
        before = frame.evaluate("() => ({...window.bratsViewer.uploads})")
        _draw_et_strokes(page, frame, 0.3, 0, 3)  # axial view, 3 strokes
        wait_synced(frame, frame.evaluate("() => window.bratsViewer.rev"))
        uploads = frame.evaluate("() => ({...window.bratsViewer.uploads})")
        assert uploads["boxes"] - before["boxes"] >= 3 * 5 and uploads["full"] == before["full"]  # one per pen step
        texture = frame.evaluate(_TEXTURE_VS_BITMAP_JS)
        assert texture["labelled"] > 1000 and texture["differ"] == 0, texture

        page.keyboard.press("m")  # 4-up with the 3D pane
        frame.evaluate("() => window.bratsViewer.renderCache.settle()")
        shown, rendered = _pane_pixels(frame)
        assert not rendered["stale"] and shown.std() > 5  # a ray-cast picture
        # the gradient texture is built only when a 3D pane first needs it (build.mjs): it was, and building it
        # afresh now gives the same picture. (Weak on its own: with the viewer's render settings the picture did not
        # change either with the gradient texture deleted, session 28.)
        assert rendered["stats"]["gradients"] >= 1
        frame.evaluate(_EAGER_GRADIENT_JS)
        eager, rendered = _pane_pixels(frame)
        assert not rendered["stale"] and np.abs(eager.astype(int) - shown.astype(int)).max() <= 2
        shown = eager
        frame.evaluate(_QUICK_REDRAW_JS)
        again, quick = _pane_pixels(frame)
        assert quick["stale"] and quick["stats"]["reused"] == rendered["stats"]["reused"] + 1
        assert quick["stats"]["rendered"] == rendered["stats"]["rendered"]  # no ray casting
        assert np.abs(again - shown).max() <= 2  # the same picture, in the same place
        frame.wait_for_function("() => !window.bratsViewer.renderCache.stale()", timeout=30_000)  # after the pause
        assert frame.evaluate(_RENDER_PANE_JS)["stats"]["rendered"] == rendered["stats"]["rendered"] + 1


_COUNT_VALUES_JS = """() => { window.__componentValues = 0; window.addEventListener('message', (e) => {
  if (e.data && e.data.type === 'streamlit:setComponentValue') window.__componentValues += 1 }) }"""


def _canvas_pixels(frame) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    return np.asarray(Image.open(BytesIO(frame.locator("#gl").screenshot())).convert("L"), dtype=np.int16)


def test_modality_switch_in_the_browser(server):
    """The four modalities are loaded once: a switch exchanges GPU textures in the browser, asks nothing of
    Python and fetches nothing; each modality keeps its own window; the choice is kept across a reload."""
    with chromium_page(webgl=True) as page:
        page.goto(server.url)
        page.get_by_role("button", name="Load the demo case").click()
        page.locator("[data-testid=stAlertContentSuccess]").wait_for(timeout=120_000)
        goto_page(page, "Viewer")
        frame = wait_ready(page)
        frame.wait_for_function("() => document.body.dataset.warm === '4'", timeout=180_000)  # all on the GPU
        assert frame.evaluate("() => window.bratsViewer.textures.size") == 3  # the three not shown
        _check_readout(frame, "FLAIR")
        page.wait_for_timeout(1500)  # the cursor report after the first read-out (800 ms) has gone out
        page.evaluate(_COUNT_VALUES_JS)  # values the component sends to Python (each would rerun the script)
        fetched = frame.evaluate("() => performance.getEntriesByType('resource').length")
        flair = frame.evaluate("() => { window.__flairTexture = window.bratsViewer.nv.volumeTexture; "
                               "return window.bratsViewer.nv.volumes[0].cal_max }")
        before = _canvas_pixels(frame)
        frame.get_by_role("button", name="T1", exact=True).click()
        frame.wait_for_function("() => document.body.dataset.modality === 'T1' && "
                                "document.getElementById('status').textContent.includes(' T1 ')", timeout=10_000)
        _check_readout(frame, "T1")  # the read-out's intensity is T1's at the crosshair
        assert frame.evaluate("() => window.bratsViewer.nv.volumes[0].name") == "T1.nii.gz"
        assert frame.evaluate("() => window.bratsViewer.nv.volumeTexture !== window.__flairTexture && "
                              "[...window.bratsViewer.textures.values()].some((t) => t.vol === window.__flairTexture)")
        page.wait_for_timeout(300)
        assert np.abs(_canvas_pixels(frame) - before).mean() > 2  # the screen shows another image
        assert frame.evaluate("() => performance.getEntriesByType('resource').length") == fetched  # nothing fetched
        assert page.evaluate("() => window.__componentValues") == 0  # no value to Python: no rerun
        # window / level per modality: a right-drag sets T1's window; FLAIR keeps its own for when it comes back
        window_js = "() => { const v = window.bratsViewer.nv.volumes[0]; return [v.cal_min, v.cal_max] }"
        t1_window = frame.evaluate(window_js)
        box = frame.locator("#gl").bounding_box()
        x, y = box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.7  # inside the axial tile (4-up)
        page.mouse.move(x, y)
        page.mouse.down(button="right")
        page.mouse.move(x + box["width"] * 0.1, y + box["height"] * 0.08, steps=5)
        page.mouse.up(button="right")
        frame.wait_for_function(f"([lo, hi]) => {{ const w = ({window_js})(); return w[0] !== lo || w[1] !== hi }}",
                                arg=t1_window, timeout=30_000)
        t1_window = frame.evaluate(window_js)
        frame.get_by_role("button", name="FLAIR", exact=True).click()
        frame.wait_for_function("() => document.body.dataset.modality === 'FLAIR'", timeout=10_000)
        assert frame.evaluate(window_js)[1] == flair
        frame.get_by_role("button", name="T1", exact=True).click()
        frame.wait_for_function("() => document.body.dataset.modality === 'T1'", timeout=10_000)
        assert frame.evaluate(window_js) == t1_window
        # the choice is the browser's, kept for every page and across a reload
        page.reload()
        frame = wait_ready(page)
        assert frame.evaluate("() => document.body.dataset.modality") == "T1"
        _check_readout(frame, "T1")


def test_png_viewer_without_webgl(server):
    """Without WebGL2 the component says so and the Viewer falls back to the server-rendered images."""
    with chromium_page() as page:  # --disable-gpu: no WebGL
        page.goto(server.url)
        page.get_by_role("button", name="Load the demo case").click()
        page.locator("[data-testid=stAlertContentSuccess]").wait_for(timeout=120_000)
        goto_page(page, "Viewer")
        has_webgl = page.evaluate("() => !!document.createElement('canvas').getContext('webgl2')")
        if has_webgl:
            pytest.skip("this Chromium has WebGL2 even with --disable-gpu")
        page.get_by_text("Cursor voxel").wait_for(timeout=60_000)


def test_bundle_is_modest():
    build = Path(__file__).resolve().parents[1] / "app" / "viewer" / "frontend" / "build"
    total = sum(p.stat().st_size for p in build.iterdir())
    assert (build / "index.html").is_file() and (build / "index.js").is_file()
    assert total < 3_000_000, f"{total / 1e6:.1f} MB"
