"""Screenshots of every page with the demo case, for the README: ``docs/screenshots/*.png``.

Usage (from the project root; needs ``/usr/bin/chromium``)::

    .venv/bin/python -m bench.app.screenshots [--out docs/screenshots] [--tiny-models]

Uses ``weights/unet.keras`` and ``weights/cvae.keras`` when they exist; a missing model leaves
its page in the "weights missing" state. ``--tiny-models`` fills the gaps with tiny untrained
networks (layout checks only: their outputs are meaningless, do not publish those shots).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.server import ROOT, chromium_page, goto_page, streamlit_server, tiny_models_env, wait_until_idle

WIDTH, HEIGHT = 1500, 1000


def _save(page: object, out: Path, name: str, full_height: int | None = None) -> None:
    wait_until_idle(page)
    if full_height:
        page.set_viewport_size({"width": WIDTH, "height": full_height})
        wait_until_idle(page, settle_ms=800)
    path = out / f"{name}.png"
    page.screenshot(path=str(path))
    if full_height:
        page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def _button_enabled(page: object, name: str) -> bool:
    button = page.get_by_role("button", name=name, exact=True)
    button.first.wait_for(timeout=60_000)  # the page may still be rendering right after a navigation or a click
    wait_until_idle(page)
    return button.first.is_enabled()


def take(out: Path, env: dict[str, str]) -> None:
    """Drive the app through every page and save one screenshot each."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**env, "BRATS_VIEWER": "classic"}  # the PNG viewer's screenshots (bench.app.screenshots_niivue: NiiVue's)
    with streamlit_server(env) as server, chromium_page(WIDTH, HEIGHT) as page:
        page.goto(server.url)
        page.get_by_role("button", name="Load the demo case").click()
        page.locator("[data-testid=stAlertContentSuccess]").wait_for(timeout=300_000)
        _save(page, out, "load")

        goto_page(page, "Viewer")
        page.get_by_text("Cursor voxel").wait_for(timeout=60_000)
        page.locator("[data-testid=stPlotlyChart]").wait_for(timeout=120_000)
        _save(page, out, "viewer", full_height=1700)
        page.get_by_text("4 modalities", exact=True).click()
        _save(page, out, "viewer_modalities", full_height=1500)
        page.get_by_text("3 planes", exact=True).click()

        goto_page(page, "Segment")
        if _button_enabled(page, "Segment"):
            page.get_by_role("button", name="Segment", exact=True).click()
            page.get_by_text("Segmented with").wait_for(timeout=900_000)
        _save(page, out, "segment", full_height=1500)

        goto_page(page, "Edit mask")
        page.get_by_role("button", name="Start editing").click()
        canvas = page.locator("canvas.upper-canvas")
        canvas.wait_for(timeout=60_000)
        wait_until_idle(page)
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + 0.62 * box["width"], box["y"] + 0.40 * box["height"])
        page.mouse.down()
        for step in range(1, 15):
            page.mouse.move(box["x"] + (0.62 + 0.004 * step) * box["width"],
                            box["y"] + (0.40 + 0.006 * step) * box["height"])
        page.mouse.up()
        page.get_by_text("1 / 30 undo steps").wait_for(timeout=60_000)
        wait_until_idle(page, settle_ms=2000)  # the redrawn canvas loads its toolbar icons last
        _save(page, out, "edit_mask", full_height=1300)

        goto_page(page, "Generate", "Generate synthetic MRI")
        page.get_by_test_id("stRadioGroup").get_by_text("New brain", exact=True).click()  # CVAE (default: insertion)
        if _button_enabled(page, "Generate"):
            page.get_by_role("button", name="Generate", exact=True).click()
            page.get_by_text("Generated").first.wait_for(timeout=900_000)
        _save(page, out, "generate", full_height=1400)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--tiny-models", action="store_true", help="tiny untrained models for missing weights")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="brats_shots_") as tmp:
        env = tiny_models_env(Path(tmp)) if args.tiny_models else {}
        take(args.out, env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
