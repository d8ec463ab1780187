"""Downloads right after a viewer click: how many clicks on a download button bring no file.

Streamlit registers a download button's deferred data (``data=callable``) under a new id on every whole-page run
and forgets the old id when that run ends. A click the browser sends with an id a run has just replaced brings
nothing, with no message (issue 38). The NiiVue viewer reports its cursor to Python on each click; this bench
clicks the viewer, waits 150 ms, then clicks a download button, ``--rounds`` times on the Segment page (the
prediction) and on the Generate page (all samples, "New brain"), with the shipped models (tiny stand-ins where
missing), and counts the downloads that arrived within 30 s.

    python -m bench.app.bench_downloads [--rounds 10] [--json bench/results/app/downloads.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench.server import chromium_page, goto_page, niivue_frame, streamlit_server, tiny_models_env, wait_until_idle

BUTTONS = {"Segment": "Download the prediction (.nii.gz)", "Generate": "Download all 2 samples (.zip)"}


def _open(page, name: str) -> None:
    if name == "Segment":
        goto_page(page, "Segment")
        page.get_by_role("button", name="Segment", exact=True).click()
    else:
        goto_page(page, "Generate", "Generate synthetic MRI")
        page.get_by_test_id("stRadioGroup").get_by_text("New brain", exact=True).click()
        page.get_by_role("button", name="Generate", exact=True).click()
    page.get_by_role("button", name=BUTTONS[name]).wait_for(timeout=180_000)


def _rounds(page, name: str, rounds: int) -> dict:
    frame = niivue_frame(page, 120)
    frame.wait_for_function("() => document.body.dataset.ready === '1'", timeout=120_000)
    seconds: list[float | None] = []
    for i in range(rounds):
        box = frame.locator("#gl").bounding_box()
        page.mouse.click(box["x"] + box["width"] * (0.3 + 0.04 * i), box["y"] + box["height"] * 0.4)
        page.wait_for_timeout(150)
        start = time.perf_counter()
        try:
            with page.expect_download(timeout=30_000) as info:
                page.get_by_role("button", name=BUTTONS[name]).click()
            info.value.path()
            seconds.append(round(time.perf_counter() - start, 2))
        except Exception:  # noqa: BLE001 - Playwright's timeout: no file came
            seconds.append(None)
            wait_until_idle(page)
    return {"rounds": rounds, "downloads": sum(s is not None for s in seconds), "seconds": seconds}


def run(rounds: int) -> dict:
    results: dict = {"loadavg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        env = tiny_models_env(Path(tmp), ("unet", "cvae")) | {"BRATS_SESSION_DIR": str(Path(tmp) / "s")}
        with streamlit_server(env) as server, chromium_page(webgl=True) as page:
            page.goto(server.url)
            page.get_by_role("button", name="Load the demo case").click()
            page.locator("[data-testid=stAlertContentSuccess]").wait_for(timeout=120_000)
            for name in BUTTONS:
                _open(page, name)
                results[name] = _rounds(page, name, rounds)
                print(name, json.dumps(results[name]), flush=True)
    results["loadavg_end"] = os.getloadavg()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = run(args.rounds)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
