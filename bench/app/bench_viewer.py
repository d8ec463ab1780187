"""Viewer responsiveness: slice-change render time, app start-up, and demo "Segment" to overlay.

Usage (from the project root)::

    .venv/bin/python -m bench.app.bench_viewer [--repeats 200] [--case DIR] [--no-browser]

Measures

1. **slice change (server)**: moving a slider moves the shared cursor, so the three planes are
   re-rendered (``core.viewer.render.render_plane`` + PNG encode, the work behind every cache miss);
   median and 95th percentile over ``--repeats`` random cursor positions. Target <= 50 ms.
2. **home page**: ``streamlit run`` until ``/_stcore/health`` answers, then ``GET /``. Target <= 3 s.
3. **browser** (needs ``/usr/bin/chromium``): a slider step until all three images changed, and
   the demo case's "Segment" click until the prediction overlay is on screen, with
   ``weights/unet.keras`` when it exists, else a tiny untrained U-Net (flagged in the results).
   Target <= 20 s.

Prints a table and writes ``bench/results/app/viewer.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench.server import CHROMIUM, ROOT, chromium_page, goto_page, streamlit_server, tiny_models_env, wait_until_idle
from core.io.case import Case, load_case
from core.synthesis.demo import demo_case
from core.viewer.render import PLANES, DisplayGeometry, auto_window, display_size, png_bytes, render_plane

RESULTS = ROOT / "bench" / "results" / "app" / "viewer.json"
TARGETS = {"slice_change_ms": 50.0, "home_page_s": 3.0, "segment_to_overlay_s": 20.0}
VIEW_PIXELS = 480  # as app.widgets.VIEW_PIXELS


def slice_change_times(case: Case, repeats: int, seed: int = 0) -> np.ndarray:
    """Seconds to render + PNG-encode the three planes at ``repeats`` random cursors (FLAIR + labels)."""
    geometry = DisplayGeometry.from_affine(case.affine)
    volume = case.image[3]
    labels = case.seg if case.seg is not None else np.zeros(case.shape, np.uint8)
    window = auto_window(volume)
    sizes = {}
    for plane in PLANES:
        unit = display_size(plane, case.shape, case.spacing, geometry, 1.0)
        sizes[plane] = display_size(plane, case.shape, case.spacing, geometry, VIEW_PIXELS / max(unit))
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(repeats):
        cursor = tuple(int(rng.integers(0, n)) for n in case.shape)
        start = time.perf_counter()
        for plane in PLANES:
            rgb = render_plane(volume, plane, geometry.slice_index(plane, cursor), geometry, window, labels,
                               cursor=cursor, size=sizes[plane])
            png_bytes(rgb)
        times.append(time.perf_counter() - start)
    return np.asarray(times)


def home_page_seconds() -> tuple[float, float]:
    """(seconds until /_stcore/health is ok, seconds until GET / has returned) after ``streamlit run``."""
    start = time.perf_counter()
    with streamlit_server() as server:
        health = time.perf_counter() - start
        with urllib.request.urlopen(server.url + "/", timeout=10) as response:
            response.read()
        return health, time.perf_counter() - start


def browser_timings(slider_steps: int) -> dict[str, object]:
    """Slider-step round trips and the demo's Segment-to-overlay time in headless Chromium."""
    with tempfile.TemporaryDirectory(prefix="bench_viewer_") as tmp:
        env = tiny_models_env(Path(tmp), kinds=("unet",))
        weights = "tiny untrained U-Net (weights/unet.keras missing)" if env else "weights/unet.keras"
        env["BRATS_VIEWER"] = "classic"  # this bench measures the PNG viewer (bench.app.bench_niivue: the NiiVue one)
        with streamlit_server(env) as server, chromium_page() as page:
            page.goto(server.url)
            page.get_by_role("button", name="Load the demo case").click()
            page.locator("[data-testid=stAlertContentSuccess]").wait_for(timeout=300_000)
            goto_page(page, "Viewer")
            page.get_by_text("Cursor voxel").wait_for(timeout=60_000)
            wait_until_idle(page)
            steps = _slider_steps(page, slider_steps)

            goto_page(page, "Segment")
            start = time.perf_counter()
            page.get_by_role("button", name="Segment", exact=True).click()
            page.get_by_text("Segmented with").wait_for(timeout=600_000)
            page.locator('iframe[title="streamlit_image_coordinates.streamlit_image_coordinates"]').first.wait_for()
            wait_until_idle(page, settle_ms=0)
            segment = time.perf_counter() - start
    return {"slider_step_ms": steps, "segment_to_overlay_s": segment, "segment_weights": weights}


# A fingerprint of every viewer image (its data URL sampled every 13th character), '' while loading.
_IMAGES_JS = """() => [...document.querySelectorAll(
    'iframe[title="streamlit_image_coordinates.streamlit_image_coordinates"]')]
    .map(f => { try { const i = f.contentDocument.querySelector('img'); if (!i.complete) return '';
    let h = 0; for (let k = 0; k < i.src.length; k += 13) h = (h * 31 + i.src.charCodeAt(k)) | 0;
    return i.src.length + ':' + h } catch (e) { return '' } })"""


def _slider_steps(page: object, steps: int) -> list[float]:
    """Milliseconds from an arrow key on the axial slider until all three images show the new cursor."""
    thumb = page.locator("[data-testid=stSlider]").filter(has_text="Axial slice").get_by_role("slider")
    times = []
    for _ in range(steps):
        before = page.evaluate(_IMAGES_JS)
        thumb.focus()
        start = time.perf_counter()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            f"(before) => {{ const now = ({_IMAGES_JS})(); return now.length === before.length && "
            "now.every((s, i) => s && s !== before[i]) }", arg=before, timeout=30_000)
        times.append((time.perf_counter() - start) * 1000.0)
        wait_until_idle(page, settle_ms=50)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=200, help="random cursors for the render timing")
    parser.add_argument("--case", type=Path, help="case folder (default: the built-in demo case)")
    parser.add_argument("--slider-steps", type=int, default=10, help="browser slider steps to time")
    parser.add_argument("--no-browser", action="store_true", help="skip the Chromium measurements")
    args = parser.parse_args(argv)

    case = load_case(args.case) if args.case else demo_case()
    render = slice_change_times(case, args.repeats) * 1000.0
    health, home = home_page_seconds()
    results: dict[str, object] = {
        "case": case.name,
        "shape": list(case.shape),
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "slice_change_ms": {"median": float(np.median(render)), "p95": float(np.percentile(render, 95)),
                            "repeats": args.repeats, "planes": len(PLANES)},
        "home_page_s": {"health": health, "get": home},
        "targets": TARGETS,
    }
    rows = [
        ("slice change, 3 planes render+PNG (median)", f"{np.median(render):.1f} ms", "<= 50 ms"),
        ("slice change, 3 planes render+PNG (p95)", f"{np.percentile(render, 95):.1f} ms", ""),
        ("streamlit run -> /_stcore/health ok", f"{health:.2f} s", ""),
        ("streamlit run -> GET / served", f"{home:.2f} s", "<= 3 s"),
    ]
    if not args.no_browser and CHROMIUM.exists():
        browser = browser_timings(args.slider_steps)
        steps = np.asarray(browser["slider_step_ms"])
        results["browser"] = {**browser, "slider_step_ms": {"median": float(np.median(steps)),
                                                            "all": [round(t, 1) for t in steps]}}
        rows += [
            ("browser: slider step -> 3 images updated (median)", f"{np.median(steps):.0f} ms", ""),
            (f"browser: demo Segment click -> overlay ({browser['segment_weights']})",
             f"{browser['segment_to_overlay_s']:.1f} s", "<= 20 s"),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'result':>10}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>10}  {target}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
