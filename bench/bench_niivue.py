"""Benchmark of the NiiVue viewer/editor in headless Chromium (software WebGL2 through SwiftShader).

Measures, on the demo case:
- page open to first image: the Viewer page reloaded once the case is loaded (the component's own
  ``shown`` mark, ms after the iframe started, and the wall time from ``reload()``);
- slice change with the mouse wheel: time of one wheel event's handler incl. the redraw (``gl.finish``);
- stroke mouse-up to Python: from ``mouseup`` until the browser has Python's acknowledgement of the
  stroke's revision (an upper bound: Python had it before it answered);
- lost strokes: N strokes at random 100-1000 ms gaps, then the revisions Python applied, the strokes
  (separate pieces) in the mask Python saved for the session, and whether it equals the browser's.

    python -m bench.bench_niivue [--strokes 100] [--json bench/results/niivue.json]

The numbers depend heavily on the machine: SwiftShader renders on the CPU.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from bench.server import chromium_page, goto_page, streamlit_server
from core.anatomy import BRATS_AFFINE
from core.niivue import voxel_to_ras_flat

WHEEL_JS = """() => { const nv = window.bratsViewer.nv; const c = document.getElementById('gl');
  const r = c.getBoundingClientRect(); const out = [];
  for (let i = 0; i < 20; i++) { const t0 = performance.now();
    c.dispatchEvent(new WheelEvent('wheel', {deltaY: i % 2 ? 100 : -100, clientX: r.left + r.width * 0.5,
      clientY: r.top + r.height * 0.5, bubbles: true, cancelable: true}));
    nv.gl.finish(); out.push(performance.now() - t0) }
  return out }"""


def _frame(page):
    page.locator('iframe[title="niivue_component.brats_niivue"]').wait_for(timeout=120_000)
    for _ in range(300):
        frames = [f for f in page.frames if "/component/niivue_component" in f.url]
        if frames:
            return frames[-1]
        page.wait_for_timeout(100)
    raise RuntimeError("no NiiVue frame")


def _ready(page, timeout_ms: int = 180_000):
    frame = _frame(page)
    frame.wait_for_function("() => document.body.dataset.ready === '1'", timeout=timeout_ms)
    return frame


def run(strokes: int, seed: int) -> dict:
    """Run the whole benchmark once; returns the measurements."""
    rng = random.Random(seed)
    results: dict = {"strokes_planned": strokes}
    with tempfile.TemporaryDirectory() as tmp, streamlit_server({"BRATS_SESSION_DIR": str(Path(tmp) / "s")},
                                                                timeout=120) as server:
        with chromium_page(webgl=True) as page:
            page.goto(server.url)
            page.get_by_role("button", name="Load the demo case").click()
            page.locator("[data-testid=stAlertContentSuccess]").wait_for(timeout=180_000)
            goto_page(page, "Viewer")
            _ready(page)
            opens = []
            for _ in range(2):  # page open to first image, the case already loaded
                start = time.perf_counter()
                page.reload()
                frame = _ready(page)
                opens.append({"wall_s": time.perf_counter() - start,
                              "component_ms": frame.evaluate("() => window.bratsViewer.timings")})
            results["page_open"] = opens
            print(json.dumps(opens), flush=True)
            frame.evaluate("() => { window.bratsViewer.nv.setSliceType(0) }")  # axial only: a 2D redraw per step
            wheel = frame.evaluate(WHEEL_JS)
            results["wheel_ms"] = {"median": statistics.median(wheel), "p95": sorted(wheel)[int(0.95 * len(wheel))]}
            print(json.dumps(results["wheel_ms"]), flush=True)

            goto_page(page, "Edit mask")
            page.locator("[data-testid=stSelectbox]").first.click()  # "Start from"
            page.get_by_role("option", name="Empty").click()  # only the strokes will be ET
            page.wait_for_timeout(500)
            page.get_by_role("button", name="Start editing").click()
            frame = _ready(page)
            box = frame.locator("#gl").bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.keyboard.press("a")
            page.keyboard.press("3")
            page.keyboard.press("[")
            page.keyboard.press("[")  # 1-voxel brush: 100 strokes fit on one slice
            latencies = []
            rows = 50
            for i in range(strokes):
                x = box["x"] + box["width"] * (0.3 + 0.2 * (i // rows))
                y = box["y"] + box["height"] * (0.15 + 0.7 * (i % rows) / rows)
                page.mouse.move(x, y)
                page.mouse.down()
                page.mouse.move(x + box["width"] * 0.08, y, steps=4)
                page.mouse.up()
                up = time.perf_counter()
                if i % 10 == 0:  # latency probe: wait for the acknowledgement of this stroke
                    frame.wait_for_function(f"() => window.bratsViewer.acked >= {i + 1}", timeout=60_000)
                    latencies.append(time.perf_counter() - up)
                page.wait_for_timeout(rng.randint(100, 1000))
                if (i + 1) % 10 == 0:
                    print(f"{i + 1} strokes drawn, {frame.evaluate('() => window.bratsViewer.acked')} acknowledged",
                          flush=True)
            frame.wait_for_function(
                f"() => window.bratsViewer.acked >= {strokes} && window.bratsViewer.pending.length === 0",
                timeout=300_000)
            results["stroke_ack_s"] = {"median": statistics.median(latencies), "max": max(latencies),
                                       "n": len(latencies)}
            page.get_by_text(f"{strokes} strokes received").wait_for(timeout=60_000)
            results["strokes_applied"] = strokes
            browser = np.asarray(frame.evaluate(
                "() => { const b = window.bratsViewer.nv.drawBitmap; const o = [];"
                " for (let i = 0; i < b.length; i++) if (b[i] === 3) o.push(i); return o }"), dtype=np.int64)
            saved = next(Path(tmp, "s").glob("*/cases/*/edited.npz"))
            with np.load(saved) as data:
                labels = data["labels"]
            server = voxel_to_ras_flat(np.nonzero(labels == 3), labels.shape, BRATS_AFFINE)
            results["mask_saved_equals_browser"] = bool(np.array_equal(np.sort(server), np.sort(browser)))
            pieces = ndimage.label(labels == 3, structure=np.ones((3, 3, 3)))[1]
            results["strokes_found_in_saved_mask"] = int(pieces)
            results["lost_strokes"] = strokes - int(pieces)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strokes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = run(args.strokes, args.seed)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
