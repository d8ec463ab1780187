"""Screenshots of the NiiVue viewer, editor and Generate page at 1280 px (docs/screenshots/niivue_*.png).

    python -m bench.app.screenshots_niivue [--out docs/screenshots]

Headless Chromium with software WebGL2 (SwiftShader), the shipped weights when present.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.server import ROOT, chromium_page, goto_page, streamlit_server, wait_until_idle


def _ready(page) -> object:
    page.locator('iframe[title="app.viewer.component.brats_niivue"]').wait_for(timeout=180_000)
    frame = next(f for f in reversed(page.frames) if "/component/app.viewer.component" in f.url)
    frame.wait_for_function("() => document.body.dataset.ready === '1'", timeout=180_000)
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, streamlit_server({"BRATS_SESSION_DIR": tmp}, timeout=120) as server:
        with chromium_page(width=1280, height=1000, webgl=True) as page:
            page.goto(server.url)
            page.get_by_role("button", name="Load the demo case").click()
            page.locator("[data-testid=stAlertContentSuccess]").wait_for(timeout=180_000)
            goto_page(page, "Viewer")
            _ready(page)
            wait_until_idle(page)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(args.out / "niivue_viewer.png"))

            goto_page(page, "Edit mask")
            page.get_by_role("button", name="Start editing").click()
            frame = _ready(page)
            box = frame.locator("#gl").bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.8)  # over the axial tile
            page.keyboard.press("3")
            page.keyboard.press("]")
            page.keyboard.press("]")
            x0, y0 = box["x"] + box["width"] * 0.28, box["y"] + box["height"] * 0.22
            page.mouse.move(x0, y0)
            page.mouse.down()
            page.mouse.move(x0 + 40, y0 + 25, steps=8)
            page.mouse.up()
            frame.wait_for_function("() => window.bratsViewer.acked >= 1 && !window.bratsViewer.pending.length",
                                    timeout=120_000)
            wait_until_idle(page)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(args.out / "niivue_edit.png"))

            # Generate: one sample rendered into the case, in the same viewer (Sample / Host in its bar)
            goto_page(page, "Generate", "Generate synthetic MRI")
            page.get_by_role("spinbutton", name="Samples").fill("1")
            page.get_by_role("spinbutton", name="Samples").press("Enter")
            wait_until_idle(page)
            page.get_by_role("button", name="Render into this case", exact=True).click()
            page.get_by_text("Generated 1 sample(s)").wait_for(timeout=600_000)
            frame = _ready(page)
            frame.wait_for_function("() => (document.body.dataset.modality || '').startsWith('Sample:')",
                                    timeout=180_000)
            wait_until_idle(page)
            page.wait_for_timeout(1000)
            page.locator('iframe[title="app.viewer.component.brats_niivue"]').scroll_into_view_if_needed()
            page.screenshot(path=str(args.out / "niivue_generate.png"))
    print(f"wrote niivue_viewer.png, niivue_edit.png and niivue_generate.png in {args.out}")


if __name__ == "__main__":
    main()
