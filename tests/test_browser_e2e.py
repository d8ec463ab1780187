"""End to end in a real headless browser with the classic (PNG) viewer: load, segment, overlay, paint, download.

The NiiVue (WebGL) path has its own test (tests/test_browser_niivue.py); here ``BRATS_VIEWER=classic``
forces the fallback that browsers without WebGL2 get.

Runs ``streamlit run`` on 127.0.0.1 (free port) and drives Debian's Chromium with Playwright.
Skipped when ``/usr/bin/chromium`` is absent (CI's ``.ci/run`` installs it). The U-Net is a tiny
network built here whose head always answers "edema", so its overlay is certain to show.

Set ``BRATS_SCREENSHOTS=DIR`` to save a screenshot of every step into DIR.
"""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bench.server import (
    CHROMIUM,
    always_edema_unet,
    chromium_page,
    goto_page,
    optional_screenshot,
    streamlit_server,
    wait_until_idle,
)
from core.synthesis.anatomy import BRATS_AFFINE

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)")
playwright = pytest.importorskip("playwright.sync_api")

ED_GREEN = (60, 200, 80)


def _shot(page, name: str) -> None:
    optional_screenshot(page, f"e2e_{name}")


def _green_fraction(png: bytes) -> float:
    """Fraction of pixels tinted by the ED overlay colour (green well above red and blue)."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    green = (rgb[..., 1] - rgb[..., 0] > 40) & (rgb[..., 1] - rgb[..., 2] > 40)
    return float(green.mean())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    weights = tmp_path_factory.mktemp("weights") / "unet.keras"
    always_edema_unet(weights)
    env = {"BRATS_UNET_WEIGHTS": str(weights), "BRATS_CVAE_WEIGHTS": str(weights.parent / "no_cvae.keras"),
           "BRATS_VIEWER": "classic",  # this test covers the PNG viewer and canvas editor (the fallback)
           "BRATS_SESSION_DIR": str(weights.parent / "sessions")}
    with streamlit_server(env) as running:
        yield running


def test_demo_segment_overlay_paint_download(server, tmp_path):
    with chromium_page() as page:
        page.goto(server.url)
        page.get_by_role("heading", name="Load a case").wait_for(timeout=60_000)
        page.get_by_role("button", name="Load the demo case").click()
        page.locator("[data-testid=stAlertContentSuccess]").wait_for(timeout=120_000)
        _shot(page, "1_load")

        goto_page(page, "Segment")
        page.get_by_role("button", name="Segment", exact=True).click()
        page.get_by_text("Segmented with unet.keras").wait_for(timeout=180_000)
        _shot(page, "2_segment")

        goto_page(page, "Viewer")
        readout = page.get_by_text("Cursor voxel")
        readout.wait_for(timeout=60_000)
        assert "Prediction: ED" in readout.inner_text()  # the cursor starts inside the prediction
        frame = page.frame_locator('iframe[title="streamlit_image_coordinates.streamlit_image_coordinates"]').first
        image = frame.locator("img")
        image.wait_for(timeout=90_000)  # generous: the machine may be busy (3D surfaces render in the same run)
        page.wait_for_function(
            "() => [...document.querySelectorAll('iframe')].some(f => { try { const i = "
            "f.contentDocument.querySelector('img'); return i && i.complete && i.naturalWidth > 0 } "
            "catch (e) { return false } })", timeout=30_000)
        assert _green_fraction(image.screenshot()) > 0.05  # the ED overlay is on screen
        _shot(page, "3_viewer")
        # a click on the axial image moves the cursor there (BraTS axial: screen col = x, row = y)
        z = readout.inner_text().split("(")[1].split(")")[0].split(", ")[2]
        box = image.bounding_box()
        page.mouse.click(box["x"] + 0.25 * box["width"], box["y"] + 0.75 * box["height"])
        page.get_by_text(f"Cursor voxel (60, 180, {z})").wait_for(timeout=30_000)

        goto_page(page, "Edit mask")
        page.get_by_role("button", name="Start editing").click()
        canvas = page.locator("canvas.upper-canvas")
        canvas.wait_for(timeout=60_000)
        # the canvas library's own toolbar (undo / trash / edit that never touched the mask) is hidden
        toolbar = page.locator(".dc-toolbar")
        assert toolbar.count() >= 1 and not toolbar.first.is_visible()
        page.locator("[data-testid=stRadio]").filter(has_text="Brush label").get_by_text("ET").click()
        wait_until_idle(page)  # the canvas of the run that knows the ET brush (a fixed 1.5 s lost the race under load)
        canvas = page.locator("canvas.upper-canvas")
        box = canvas.bounding_box()
        slider = page.locator("[data-testid=stSlider]").filter(has_text="Axial slice")
        slice_index = int(slider.locator("[data-testid=stSliderThumbValue]").inner_text())
        x0, y0 = box["x"] + 100, box["y"] + 100  # canvas pixels (100, 100) .. (195, 157)
        page.mouse.move(x0, y0)
        page.mouse.down()
        for step in range(1, 20):
            page.mouse.move(x0 + 5 * step, y0 + 3 * step)
        page.mouse.up()
        page.get_by_text("1 / 30 undo steps").wait_for(timeout=60_000)
        wait_until_idle(page)
        _shot(page, "4_edit")

        with page.expect_download(timeout=120_000) as download_info:
            page.get_by_role("button", name="Download the edited mask (.nii.gz)").click()
        target = tmp_path / "edited.nii.gz"
        download_info.value.save_as(target)

    image = nib.Nifti1Image.from_bytes(gzip.decompress(target.read_bytes()))
    assert image.shape == (240, 240, 155)
    assert np.allclose(image.affine, BRATS_AFFINE)
    labels = np.asarray(image.dataobj)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3}  # 2023 values by default
    et = np.argwhere(labels == 3)
    assert len(et) > 0, np.unique(labels, return_counts=True)  # the stroke
    # Axial canvas of 600 px for 240 voxels: the stroke covers voxels x = 40..78, y = 40..63 (+ brush radius)
    # on the shown slice; BraTS axial display has screen col = x and screen row = y.
    assert set(et[:, 2].tolist()) == {slice_index}
    assert et[:, 0].min() >= 36 and et[:, 0].max() <= 82
    assert et[:, 1].min() >= 36 and et[:, 1].max() <= 67
