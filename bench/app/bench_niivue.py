"""Benchmark of the NiiVue viewer/editor in headless Chromium (software WebGL2 through SwiftShader).

Measures, on the demo case (each section has its own timeout; the JSON is rewritten after each, so a
run cut short still leaves what it measured):

- page open to first image: the Viewer page reloaded with the case already loaded (``--opens``
  times, after one first load). Client-side, from the reload's navigation start to the component's
  ``image shown`` mark (the first modality handed to NiiVue), ``shown`` mark (labels too) and ``painted`` mark
  (the GPU has drawn them: a 1-pixel read, see ``PAINTED_JS``), all on the page's clock; plus the wall time
  Playwright saw until the component said ready; and until the other three modalities' GPU textures are built
  (the ``built …`` marks: after ``painted``, one at a time).
- memory after the first open (labels shown; then all four modalities on the GPU): RSS of the Streamlit
  server, RSS and USS summed over the Chromium processes (SwiftShader's textures live in its GPU process).
- slice change with the mouse wheel: one wheel event until its redraw is painted (see ``PAINTED_JS``).
- viewer controls in the browser (no Python rerun): label show/hide, plane switch and opacity, each the
  click until painted (the 4-up view's 3D pane shows its last picture meanwhile: render_cache.js); a modality
  switch the same way (its loading step included); Playwright's wall time from its click until the read-out
  names the new modality (Playwright's own waits for a stable element included); then the 3D pane catching up
  (its ray-cast render until painted) and the viewer's counters (drawing uploads, 3D renders reused, redraws
  put off by the frame pacing).
- stroke mouse-up to Python: per stroke, from ``mouseup`` until the browser holds Python's
  acknowledgement of its revision (an upper bound: Python applied and saved it before it answered).
- lost strokes: ``--strokes`` strokes at random 100-1000 ms gaps without waiting for anything, then
  the revisions Python applied, the strokes (separate pieces) in the mask Python saved for the
  session, and whether that mask equals the browser's drawing.
- strokes per second: ``--burst`` strokes drawn back to back without any pause (each a mouse-down, four moves and
  a mouse-up; Playwright waits for the page to take each input event), then the strokes in the saved mask.
- undo / redo: ``--undo`` rounds of Ctrl+Z then Ctrl+Y on the last stroke, each key until the viewer shows the
  stroke gone / back and the GPU has drawn it; then whether the mask Python saved is unchanged and equals the drawing.
- two tabs on one session: a second tab opens the same session, and the two draw ``--tab-strokes``
  strokes alternately (random gaps, no waiting); then the strokes found in the saved mask and whether
  each tab's drawing equals it (each tab takes the other's edits within its 2 s poll).
- partial strokes: at the end, the strokes in the saved mask smaller than a whole one (a stroke that lost some
  of its pen moves still counts as found above).

    python -m bench.app.bench_niivue [--strokes 100] [--tab-strokes 100] [--burst 20] [--undo 10] [--opens 3]
        [--json bench/results/app/niivue.json]

The numbers depend heavily on the machine: SwiftShader renders on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from bench.server import chromium_page, goto_page, niivue_frame, rss_mb, streamlit_server
from core.synthesis.anatomy import BRATS_AFFINE
from core.viewer.niivue import voxel_to_ras_flat

# Until the pixels are there: NiiVue returns from a redraw before the GPU process (SwiftShader) has drawn it, and
# Chromium's gl.finish() does not wait for it either; a 1-pixel gl.readPixels does. ``painted`` first waits for the
# viewer's frame pacing (frame_pacing.js) to have issued every redraw asked for.
PAINTED_JS = """const painted = async () => { const nv = window.bratsViewer.nv; await window.bratsViewer.pacing.idle();
  nv.gl.readPixels(1, 1, 1, 1, nv.gl.RGBA, nv.gl.UNSIGNED_BYTE, new Uint8Array(4)) };"""
WHEEL_JS = """async () => { """ + PAINTED_JS + """ const c = document.getElementById('gl');
  const r = c.getBoundingClientRect(); const out = [];
  for (let i = 0; i < 20; i++) { const t0 = performance.now();
    c.dispatchEvent(new WheelEvent('wheel', {deltaY: i % 2 ? 100 : -100, clientX: r.left + r.width * 0.5,
      clientY: r.top + r.height * 0.5, bubbles: true, cancelable: true}));
    await painted(); out.push(performance.now() - t0) }
  return out }"""
# the 3D pane (4-up) catching up once the user pauses (render_cache.js): its ray-cast render until painted
SETTLE_JS = """async () => { """ + PAINTED_JS + """ const viewer = window.bratsViewer; await painted();
  const stale = viewer.renderCache.stale(); const t0 = performance.now(); viewer.renderCache.settle(); await painted();
  return {stale, ms: performance.now() - t0, stats: {uploads: viewer.uploads, render_cache: viewer.renderCache.stats,
  pacing: viewer.pacing.stats}} }"""
# the component's marks on the page's clock: ms since the page's navigation start
MARKS_JS = """() => { const t = window.bratsViewer.timings; const off = performance.timeOrigin; const out = {};
  for (const k in t) out[k] = t[k] + off; out["iframe start"] = off; return out }"""
# Ctrl+Z then Ctrl+Y, each from the key until the viewer's drawing has changed back (the last stroke's ET voxels gone,
# then back) and the GPU has drawn it; the key goes where the user's would (the viewer's key handler on the window)
UNDO_REDO_JS = """async (rounds) => { """ + PAINTED_JS + """ const viewer = window.bratsViewer;
  const count = () => { const b = viewer.nv.drawBitmap; let n = 0; for (let i = 0; i < b.length; i++) n += b[i] === 3;
    return n };
  const press = (key) => window.dispatchEvent(new KeyboardEvent('keydown', {key, ctrlKey: true, bubbles: true,
    cancelable: true}));
  const until = async (test, ms) => { const end = performance.now() + ms;
    while (!test()) { if (performance.now() > end) return false; await new Promise((r) => setTimeout(r, 5)) }
    return true };
  const out = {undo: [], redo: [], failed: 0};
  for (let i = 0; i < rounds; i++) {
    await painted();
    const before = count();
    let t = performance.now(); press('z');
    if (!(await until(() => count() < before, 10000))) { out.failed += 1; continue }
    await painted(); out.undo.push(performance.now() - t);
    t = performance.now(); press('y');
    if (!(await until(() => count() === before, 10000))) { out.failed += 1; continue }
    await painted(); out.redo.push(performance.now() - t);
    await until(() => viewer.pending.length === 0 && viewer.acked >= viewer.rev, 10000);
    await new Promise((r) => setTimeout(r, 300 + 400 * Math.random()))
  }
  return out }"""
STROKE_TIMES_JS = """() => Array.from(window.bratsViewer.strokeTimes.entries())
  .map(([rev, t]) => [rev, t.acked === null ? null : t.acked - t.up])"""


CONTROLS_JS = """async () => { """ + PAINTED_JS + """ const out = {label_toggle: [], plane_switch: [], opacity: []};
  for (let i = 0; i < 6; i++) {
    let t = performance.now(); document.querySelector('button.eye[data-label="3"]').click(); await painted();
    out.label_toggle.push(performance.now() - t);
    const name = i % 2 ? '4-up' : 'Axial';
    const layout = [...document.querySelectorAll('#bar button')].find((b) => b.textContent === name);
    t = performance.now(); layout.click(); await painted(); out.plane_switch.push(performance.now() - t);
    const slider = document.getElementById('opacity'); slider.value = String(0.2 + 0.1 * (i % 3));
    t = performance.now(); slider.dispatchEvent(new Event('input', {bubbles: true})); await painted();
    out.opacity.push(performance.now() - t);
  }
  return out }"""


# a modality switch in the page: the button's click until the loading chain it joins has run and the GPU has
# drawn it (painted); plus whether the read-out names the new modality
SWITCH_JS = """async (names) => { """ + PAINTED_JS + """ const out = []; const viewer = window.bratsViewer;
  for (const name of names) {
    await painted();
    const b = [...document.querySelectorAll('#bar button')].find((x) => x.textContent === name);
    const t = performance.now(); b.click(); await viewer.loading; await painted();
    out.push({name, ms: performance.now() - t,
              readout: document.getElementById('status').textContent.includes(` ${name} `),
              shown: document.body.dataset.modality}) }
  return out }"""
SWITCHES = ("T1", "T1ce", "T2", "FLAIR", "T1", "T2", "T1ce", "FLAIR")


def _controls(page, frame, timeout_s: float) -> dict:
    """Browser-side controls (no Python rerun): label toggle, plane switch, opacity (click until painted, ms; the
    3D pane of the 4-up view shows its last picture meanwhile); modality switches once the four modalities are on
    the GPU (in the page, and Playwright's wall time); then the 3D pane catching up."""
    out = {name: _summary(values) for name, values in frame.evaluate(CONTROLS_JS).items()}
    start = time.perf_counter()
    frame.wait_for_function("() => document.body.dataset.warm === '4'", timeout=timeout_s * 1000, polling=50)
    out["modalities_on_gpu_wait_s"] = round(time.perf_counter() - start, 2)
    switches = frame.evaluate(SWITCH_JS, list(SWITCHES))
    out["modality_switch_ms"] = _summary([s["ms"] for s in switches])
    out["modality_switch_runs"] = switches
    walls = []
    for name in ("T1", "FLAIR", "T2", "FLAIR"):
        start = time.perf_counter()
        frame.get_by_role("button", name=name, exact=True).click()
        frame.wait_for_function(f"() => document.getElementById('status').textContent.includes(' {name} ')",
                                timeout=timeout_s * 1000, polling=20)
        walls.append(round((time.perf_counter() - start) * 1000))
    out["modality_switch_playwright_ms"] = _summary(walls)
    frame.get_by_role("button", name="4-up", exact=True).click()
    out["render_3d_catch_up"] = frame.evaluate(SETTLE_JS)
    return out


def _memory(server_pid: int) -> dict:
    """RSS of the Streamlit server and of every Chromium process this benchmark started (and their USS)."""
    import psutil

    browser = [p.pid for p in psutil.Process().children(recursive=True) if "chrom" in p.name().lower()]
    return {"server_rss_mb": rss_mb([server_pid]), "browser_rss_mb": rss_mb(browser),
            "browser_uss_mb": rss_mb(browser, uss=True), "browser_processes": len(browser)}


def _ready(page, timeout_s: float = 180, warm: bool = False):
    """The component's frame once it shows the image and labels (``warm``: and all four modalities are on the GPU)."""
    frame = niivue_frame(page, timeout_s)
    frame.wait_for_function("() => document.body.dataset.ready === '1'", timeout=timeout_s * 1000,
                            polling=100)
    if warm:
        frame.wait_for_function("() => document.body.dataset.warm === '4'", timeout=timeout_s * 1000, polling=50)
    return frame


def _summary(values: list[float]) -> dict:
    values = sorted(values)
    return {"median": statistics.median(values), "p95": values[min(len(values) - 1, int(0.95 * len(values)))],
            "max": values[-1], "n": len(values)}


def _page_open(page, opens: int, timeout_s: float) -> dict:
    runs = []
    for _ in range(opens):
        start = time.perf_counter()
        page.reload()
        frame = _ready(page, timeout_s)
        wall = time.perf_counter() - start
        frame = _ready(page, timeout_s, warm=True)  # the marks of the other three modalities' builds too
        origin = page.evaluate("() => performance.timeOrigin")
        marks = {k: round(v - origin) for k, v in frame.evaluate(MARKS_JS).items()}
        runs.append({"wall_s": round(wall, 2), "marks_ms": marks, "navigation_start_epoch_ms": origin})
        print(json.dumps(runs[-1]), flush=True)
    built = [max(v for k, v in r["marks_ms"].items() if k.startswith("built ")) for r in runs
             if any(k.startswith("built ") for k in r["marks_ms"])]
    return {"runs": runs, "first_image_ms": _summary([r["marks_ms"]["image shown"] for r in runs]),
            "all_modalities_on_gpu_ms": _summary(built) if built else None,
            "with_labels_ms": _summary([r["marks_ms"]["shown"] for r in runs]),
            "labels_painted_ms": _summary([r["marks_ms"]["painted"] for r in runs]),
            "wall_s": _summary([r["wall_s"] for r in runs])}


ROWS = 50  # strokes per column on the axial slice


def _pen_ready(page, frame) -> dict:
    """Axial view, ET, 1-voxel brush (100 strokes fit on one slice); returns the canvas box."""
    box = frame.locator("#gl").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for key in ("a", "3", "[", "["):
        page.keyboard.press(key)
    page.wait_for_timeout(300)
    return box


def _stroke(page, box: dict, i: int, first_column: float) -> None:
    """Stroke ``i``: row ``i % ROWS`` of column ``first_column + 0.2 * (i // ROWS)`` (separate pieces)."""
    x = box["x"] + box["width"] * (first_column + 0.2 * (i // ROWS))
    y = box["y"] + box["height"] * (0.15 + 0.7 * (i % ROWS) / ROWS)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + box["width"] * 0.08, y, steps=4)
    page.mouse.up()


def _strokes(page, frame, strokes: int, rng: random.Random, timeout_s: float) -> dict:
    box = _pen_ready(page, frame)
    start = time.perf_counter()
    for i in range(strokes):
        _stroke(page, box, i, 0.3)
        page.wait_for_timeout(rng.randint(100, 1000))
        if (i + 1) % 20 == 0:
            print(f"{i + 1} strokes drawn, {frame.evaluate('() => window.bratsViewer.acked')} acknowledged",
                  flush=True)
    drawn_s = time.perf_counter() - start
    frame.wait_for_function(f"() => window.bratsViewer.acked >= {strokes} && window.bratsViewer.pending.length === 0",
                            timeout=timeout_s * 1000, polling=200)
    latencies = [t / 1000 for _, t in frame.evaluate(STROKE_TIMES_JS) if t is not None]
    return {"drawn_in_s": round(drawn_s, 1), "ack_s": _summary(latencies)}


def _burst(page, frame, strokes: int, session_root: Path, timeout_s: float) -> dict:
    """``strokes`` strokes back to back, no pause between them (as fast as Playwright's mouse and the page allow),
    on an axial slice 6 above the earlier ones; then the strokes found in the mask the server saved."""
    box = _pen_ready(page, frame)
    before = _pieces(_saved_et(session_root))
    first = int(frame.evaluate("() => window.bratsViewer.rev")) + 1
    for _ in range(6):
        page.mouse.wheel(0, -100)
        page.wait_for_timeout(50)
    start = time.perf_counter()
    for i in range(strokes):
        _stroke(page, box, i, 0.3)
    drawn_s = time.perf_counter() - start
    last = first + strokes - 1
    frame.wait_for_function(f"() => window.bratsViewer.acked >= {last} && window.bratsViewer.pending.length === 0",
                            timeout=timeout_s * 1000, polling=200)
    latencies = [t / 1000 for rev, t in frame.evaluate(STROKE_TIMES_JS) if t is not None and first <= rev <= last]
    found = _pieces(_saved_et(session_root)) - before
    return {"strokes": strokes, "drawn_in_s": round(drawn_s, 2), "strokes_per_s": round(strokes / drawn_s, 2),
            "strokes_found_in_saved_mask": found, "lost_strokes": strokes - found, "ack_s": _summary(latencies)}


def _undo_redo(page, frame, rounds: int, session_root: Path, timeout_s: float) -> dict:
    """``rounds`` times Ctrl+Z then Ctrl+Y on the last stroke: each key until the viewer shows the stroke gone / back
    (painted); then whether Python's saved mask still equals the browser's drawing."""
    before = _saved_et(session_root)
    times = frame.evaluate(UNDO_REDO_JS, rounds)
    frame.wait_for_function("() => window.bratsViewer.pending.length === 0 && "
                            "window.bratsViewer.acked >= window.bratsViewer.rev", timeout=timeout_s * 1000,
                            polling=200)
    page.wait_for_timeout(3000)  # a labels file Python sends after the last redo
    after = _saved_et(session_root)
    return {"undo_ms": _summary(times["undo"]) if times["undo"] else None,
            "redo_ms": _summary(times["redo"]) if times["redo"] else None, "failed": times["failed"],
            "saved_mask_unchanged": bool(np.array_equal(before, after)),
            "browser_equals_saved": bool(np.array_equal(np.sort(_drawing(frame)), after))}


def _drawing(frame) -> np.ndarray:
    return np.asarray(frame.evaluate(
        "() => { const b = window.bratsViewer.nv.drawBitmap; const o = [];"
        " for (let i = 0; i < b.length; i++) if (b[i] === 3) o.push(i); return o }"), dtype=np.int64)


def _saved_et(session_root: Path) -> np.ndarray:
    """RAS flat indices of the ET voxels in the edited mask the server saved for the (only) session."""
    from core.services.session_store import SessionStore

    saved = next(session_root.glob("*/cases/*/edited.npz"))
    store = SessionStore(saved.parents[2].name, session_root)
    labels, _ = store.labels(saved.parent.name, "edited")
    return np.sort(voxel_to_ras_flat(np.nonzero(labels == 3), labels.shape, BRATS_AFFINE))


def _piece_sizes(flat: np.ndarray, shape: tuple[int, int, int] = (240, 240, 155)) -> np.ndarray:
    """Voxel count of each separate piece (stroke) among RAS flat indices."""
    mask = np.zeros(int(np.prod(shape)), bool)
    mask[flat] = True
    labels, count = ndimage.label(mask.reshape(shape, order="F"), structure=np.ones((3, 3, 3)))
    return np.bincount(labels.ravel(), minlength=count + 1)[1:]


def _pieces(flat: np.ndarray) -> int:
    return int(_piece_sizes(flat).size)


def _partial_strokes(flat: np.ndarray) -> int:
    """Pieces smaller than the most common size: strokes that lost some of their pen moves (every stroke of this
    benchmark is the same line with the same 1-voxel brush)."""
    sizes = _piece_sizes(flat)
    if not sizes.size:
        return 0
    values, counts = np.unique(sizes, return_counts=True)
    return int((sizes < values[np.argmax(counts)]).sum())


def _two_tabs(page, strokes: int, rng: random.Random, session_root: Path, timeout_s: float) -> dict:
    """A second tab on the same session; both draw ``strokes`` strokes in all, alternately, without waiting."""
    before = _pieces(_saved_et(session_root))
    other = page.context.new_page()
    other.set_default_timeout(timeout_s * 1000)
    other.goto(page.url)
    frames = (_ready(page, timeout_s, warm=True), _ready(other, timeout_s, warm=True))
    boxes = (_pen_ready(page, frames[0]), _pen_ready(other, frames[1]))
    tabs = (page, other)
    start = time.perf_counter()
    for i in range(strokes):
        tab = i % 2
        _stroke(tabs[tab], boxes[tab], i // 2, 0.4 + 0.2 * tab)  # A: column 0.4, B: 0.6 (single tab: 0.3, 0.5)
        tabs[tab].wait_for_timeout(rng.randint(100, 1000))
    drawn_s = time.perf_counter() - start
    for frame in frames:
        frame.wait_for_function("() => window.bratsViewer.pending.length === 0 && "
                                "window.bratsViewer.acked >= window.bratsViewer.rev",
                                timeout=timeout_s * 1000, polling=200)
    saved = _saved_et(session_root)
    found = _pieces(saved) - before
    deadline, equal = time.monotonic() + 30, [False, False]
    while time.monotonic() < deadline and not all(equal):  # each tab takes the other's edits (2 s poll)
        equal = [bool(np.array_equal(np.sort(_drawing(f)), saved)) for f in frames]
        time.sleep(0.5)
    other.close()
    return {"strokes": strokes, "drawn_in_s": round(drawn_s, 1), "strokes_found_in_saved_mask": found,
            "lost_strokes": strokes - found, "each_tab_shows_the_saved_mask": equal}


def run(strokes: int, opens: int, seed: int, out: Path | None, timeout_s: float, tab_strokes: int = 100,
        burst: int = 20, undo_rounds: int = 10) -> dict:
    """Run the whole benchmark once; returns the measurements (also written to ``out`` as they come)."""
    rng = random.Random(seed)
    results: dict = {"strokes_planned": strokes, "load_during_run": {"loadavg_start": os.getloadavg()},
                     "webgl": "SwiftShader (software) in headless Debian Chromium"}

    def save() -> None:
        results["load_during_run"]["loadavg_now"] = os.getloadavg()
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1))

    with tempfile.TemporaryDirectory() as tmp, streamlit_server({"BRATS_SESSION_DIR": str(Path(tmp) / "s")},
                                                                timeout=timeout_s) as server:
        with chromium_page(webgl=True) as page:
            page.set_default_timeout(timeout_s * 1000)
            start = time.perf_counter()
            page.goto(server.url)
            page.get_by_role("button", name="Load the demo case").click()
            page.locator("[data-testid=stAlertContentSuccess]").wait_for()
            goto_page(page, "Viewer")
            frame = _ready(page, timeout_s)
            results["first_load_s"] = round(time.perf_counter() - start, 1)  # demo generated, volumes encoded
            memory = {"labels_shown": _memory(server.process.pid)}  # the other modalities being built already
            _ready(page, timeout_s, warm=True)
            memory["all_modalities_on_gpu"] = _memory(server.process.pid)
            results["memory_first_open"] = memory
            save()
            results["page_open"] = _page_open(page, opens, timeout_s)
            save()
            frame = _ready(page, timeout_s)
            frame.evaluate("() => { window.bratsViewer.nv.setSliceType(0) }")  # axial only: a 2D redraw per step
            results["wheel_ms"] = _summary(frame.evaluate(WHEEL_JS))
            print(json.dumps(results["wheel_ms"]), flush=True)
            save()
            results["controls_ms"] = _controls(page, frame, timeout_s)
            print(json.dumps(results["controls_ms"]), flush=True)
            save()

            if not strokes:
                return results
            goto_page(page, "Edit mask")
            page.locator("[data-testid=stSelectbox]").first.click()  # "Start from"
            page.get_by_role("option", name="Empty").click()  # only the strokes will be ET
            page.wait_for_timeout(500)
            page.get_by_role("button", name="Start editing").click()
            frame = _ready(page, timeout_s, warm=True)  # strokes measured once the modalities are built
            results["strokes"] = _strokes(page, frame, strokes, rng, timeout_s)
            save()
            page.get_by_text(f"{strokes} strokes received").wait_for()
            results["strokes_applied"] = int(frame.evaluate("() => window.bratsViewer.acked"))
            on_server = _saved_et(Path(tmp, "s"))
            results["mask_saved_equals_browser"] = bool(np.array_equal(on_server, np.sort(_drawing(frame))))
            results["strokes_found_in_saved_mask"] = _pieces(on_server)
            results["lost_strokes"] = strokes - results["strokes_found_in_saved_mask"]
            save()
            if burst:
                results["burst"] = _burst(page, frame, burst, Path(tmp, "s"), timeout_s)
                print(json.dumps(results["burst"]), flush=True)
                save()
            if undo_rounds:
                results["undo_redo"] = _undo_redo(page, frame, undo_rounds, Path(tmp, "s"), timeout_s)
                print(json.dumps(results["undo_redo"]), flush=True)
                save()
            if tab_strokes:
                results["two_tabs"] = _two_tabs(page, tab_strokes, rng, Path(tmp, "s"), timeout_s)
                print(json.dumps(results["two_tabs"]), flush=True)
                save()
            results["saved_mask_partial_strokes"] = _partial_strokes(_saved_et(Path(tmp, "s")))
            save()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strokes", type=int, default=100)
    parser.add_argument("--tab-strokes", type=int, default=100, help="strokes of the two-tab section (0: skip)")
    parser.add_argument("--opens", type=int, default=3, help="page reloads measured (after the first load)")
    parser.add_argument("--burst", type=int, default=20,
                        help="strokes drawn back to back without pauses, for strokes per second (0: skip)")
    parser.add_argument("--undo", type=int, default=10, help="Ctrl+Z / Ctrl+Y rounds on the last stroke (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds any single step may take")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = run(args.strokes, args.opens, args.seed, args.json, args.timeout, args.tab_strokes, args.burst,
                  args.undo)
    print(json.dumps({k: v for k, v in results.items() if k != "page_open"}, indent=1))


if __name__ == "__main__":
    main()
