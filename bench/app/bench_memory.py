"""Streamlit server memory with several sessions, each working through several real cases (issue 38's bound).

Four browser sessions (Playwright contexts of one headless Chromium with software WebGL, all kept open) take
turns: each opens its next real case from a folder on the server (Load page), looks at it in the NiiVue viewer
(which makes the server encode its four display volumes) and, with ``--segment``, segments it with the shipped
U-Net. After every step the Streamlit server's RSS is sampled (psutil, the process and its children); the result
holds each step's RSS, the peak and the RSS after the last step and a 30 s settle.

    python -m bench.app.bench_memory [--sessions 4] [--cases 5] [--segment] [--root ../shared/data/brats-real]
        [--json bench/results/app/memory.json]

Issue 38's target: the server at most 2.5 GB RSS after 4 sessions x 5 cases. ``BRATS_INFERENCE_BACKEND=tensorflow``
measures the app as it was before it segmented with ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.server import (  # noqa: E402
    CHROMIUM,
    WEBGL_ARGS,
    goto_page,
    niivue_frame,
    rss_mb,
    streamlit_server,
    wait_until_idle,
)
from train.data import find_labelled_cases  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "brats-real"
TARGET_MB = 2.5 * 1024


def server_rss_mb(pid: int) -> float:
    """RSS of the server process and its children (MiB)."""
    import psutil

    return rss_mb([pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))])


def case_folders(root: Path, count: int) -> list[Path]:
    """The first ``count`` labelled case folders of ``root`` (sorted by name)."""
    folders = sorted(find_labelled_cases(root))
    if len(folders) < count:
        raise SystemExit(f"error: {root} has {len(folders)} labelled cases; {count} needed")
    return folders[:count]


def open_case(page, folder: Path, timeout_s: float) -> None:
    """Load page → *Folder on the server* → open ``folder`` (waits for the success message)."""
    goto_page(page, "Load", "Load a case")
    page.get_by_role("tab", name="Folder on the server").click()
    page.get_by_label("Case folder on the server").fill(str(folder))
    page.get_by_role("button", name="Open the folder").click()
    page.locator("[data-testid=stAlertContentSuccess]").filter(has_text=folder.name).wait_for(
        timeout=timeout_s * 1000)


def view_case(page, timeout_s: float) -> None:
    """Viewer page until NiiVue shows the case's image and labels."""
    goto_page(page, "Viewer")
    frame = niivue_frame(page, timeout_s)
    frame.wait_for_function("() => document.body.dataset.ready === '1'", timeout=timeout_s * 1000, polling=200)


def segment_case(page, timeout_s: float) -> None:
    """Segment page → *Segment* until the result is announced."""
    goto_page(page, "Segment")
    page.get_by_role("button", name="Segment", exact=True).click()
    page.get_by_text("Segmented with").first.wait_for(timeout=timeout_s * 1000)
    wait_until_idle(page, timeout_ms=timeout_s * 1000)


def run(root: Path, sessions: int, cases: int, segment: bool, timeout_s: float, out: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    folders = case_folders(root, sessions * cases)
    result: dict = {"sessions": sessions, "cases_per_session": cases, "segment": segment, "steps": [],
                    "target_mb": TARGET_MB, "load_average_start": os.getloadavg()[0],
                    "inference_backend": os.environ.get("BRATS_INFERENCE_BACKEND", "auto")}

    def save() -> None:
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1) + "\n")

    with tempfile.TemporaryDirectory(prefix="brats_memory_") as tmp, \
            streamlit_server({"BRATS_SESSION_DIR": str(Path(tmp) / "sessions")}) as server, sync_playwright() as pw:
        pid = server.process.pid
        result["server_start_mb"] = server_rss_mb(pid)
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=WEBGL_ARGS)
        try:
            pages = []
            for _ in range(sessions):
                page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                page.goto(server.url)
                page.get_by_role("heading", name="Load a case").wait_for(timeout=timeout_s * 1000)
                pages.append(page)
            started = time.perf_counter()
            for c in range(cases):
                for s, page in enumerate(pages):
                    folder = folders[c * sessions + s]
                    open_case(page, folder, timeout_s)
                    view_case(page, timeout_s)
                    if segment:
                        segment_case(page, timeout_s)
                    step = {"session": s, "case": folder.name, "rss_mb": server_rss_mb(pid),
                            "seconds": round(time.perf_counter() - started, 1)}
                    result["steps"].append(step)
                    print(json.dumps(step), flush=True)
                    save()
            result["after_last_mb"] = result["steps"][-1]["rss_mb"]
            time.sleep(30)
            result["after_settle_mb"] = server_rss_mb(pid)
        finally:
            browser.close()
    result["peak_step_mb"] = max(s["rss_mb"] for s in result["steps"])
    result["load_average_end"] = os.getloadavg()[0]
    result["met"] = result["after_settle_mb"] <= TARGET_MB and result["peak_step_mb"] <= TARGET_MB
    save()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REAL, help="folder of real case folders (default %(default)s)")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--cases", type=int, default=5, help="cases each session opens in turn")
    parser.add_argument("--segment", action="store_true", help="also segment every case with the shipped U-Net")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds any single step may take")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not args.root.is_dir():
        print(f"error: {args.root} is missing: the benchmark needs real case folders", file=sys.stderr)
        return 2
    result = run(args.root, args.sessions, args.cases, args.segment, args.timeout, args.json)
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
