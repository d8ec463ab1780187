"""Start ``streamlit run streamlit_app.py`` on a free local port and drive it with Debian's Chromium.

Shared by the browser test (tests/test_browser_e2e.py), the viewer benchmark and the screenshot
script. Nothing here is used by the app itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# WebGL2 through SwiftShader (software), for the NiiVue viewer; without these flags the app shows PNG images.
WEBGL_ARGS = ["--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
              "--disable-background-networking"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM ``process`` and wait up to ``timeout`` s for it; SIGKILL it if it is still running then."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


class StreamlitServer:
    """A running app: ``url``, ``process`` and ``startup_seconds`` (until /_stcore/health says ok)."""

    def __init__(self, url: str, process: subprocess.Popen, startup_seconds: float, log: Path) -> None:
        self.url = url
        self.process = process
        self.startup_seconds = startup_seconds
        self.log = log


@contextmanager
def streamlit_server(env: Mapping[str, str] | None = None, timeout: float = 60.0,
                     log: Path | None = None) -> Iterator[StreamlitServer]:
    """Run the app headless on 127.0.0.1 until the ``with`` block ends (then stop it).

    Args:
        env: extra environment variables (e.g. ``BRATS_UNET_WEIGHTS``).
        timeout: seconds to wait for the health endpoint.
        log: file for the server's output (default: a temporary file removed at the end).
    """
    port = free_port()
    own_log = log is None
    log_path = log or Path(os.environ.get("TMPDIR", "/tmp")) / f"brats_streamlit_{port}.log"
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"),
               "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port)]
    with open(log_path, "w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(url, process, timeout, log_path)
            yield StreamlitServer(url, process, time.perf_counter() - start, log_path)
        finally:
            stop_process(process, timeout=10)
            if own_log:
                log_path.unlink(missing_ok=True)


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"streamlit did not answer {url}/_stcore/health within {timeout:.0f} s")


@contextmanager
def chromium_page(width: int = 1500, height: int = 1100, webgl: bool = False) -> Iterator[object]:
    """A Playwright page in headless Debian Chromium (``/usr/bin/chromium``, no download).

    Args:
        webgl: software WebGL2 (SwiftShader) on, so the app shows its NiiVue viewer.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=WEBGL_ARGS if webgl else CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
            yield context.new_page()
        finally:
            browser.close()


def tiny_models_env(folder: Path, kinds: tuple[str, ...] = ("unet", "cvae")) -> dict[str, str]:
    """Tiny untrained stand-ins for the shipped weights that are missing; returns the env overrides.

    For layout checks and timings of the app's plumbing only: their outputs are meaningless.
    """
    env = {}
    if "unet" in kinds and not (ROOT / "weights" / "unet.keras").is_file():
        from core.segmentation.unet import build_unet

        build_unet(base_filters=4, depth=2).save(folder / "unet.keras")
        env["BRATS_UNET_WEIGHTS"] = str(folder / "unet.keras")
    if "cvae" in kinds and not (ROOT / "weights" / "cvae.keras").is_file():
        from core.synthesis.cvae import build_cvae

        build_cvae(4, 2, 2).save(folder / "cvae.keras")
        env["BRATS_CVAE_WEIGHTS"] = str(folder / "cvae.keras")
    return env


def rss_mb(pids: list[int], uss: bool = False) -> float:
    """Summed RSS (or USS) of these processes in MiB; processes gone meanwhile count 0."""
    import psutil

    total = 0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            total += process.memory_full_info().uss if uss else process.memory_info().rss
        except psutil.Error:
            continue
    return round(total / 2**20, 1)


def always_edema_unet(path: Path) -> None:
    """Save a tiny U-Net whose softmax head always picks class 2 (ED): a predictable overlay for browser tests."""
    import numpy as np

    from core.segmentation.unet import build_unet

    model = build_unet(base_filters=4, depth=2)
    head = model.get_layer("head")
    kernel, bias = head.get_weights()
    bias[:] = (0.0, 0.0, 8.0, 0.0)
    head.set_weights([np.zeros_like(kernel), bias])
    model.save(path)


def goto_page(page: object, link: str, heading: str | None = None) -> None:
    """Click a page in the sidebar navigation and wait until its title (default: ``link``) shows.

    Two minutes at most: a page switch takes seconds on an idle machine, but over a minute when a training run holds
    both cores (seen in session 12: the Segment page missed a 60-s limit; it passes in 61 s for the whole test idle).
    """
    page.get_by_role("link", name=link, exact=True).first.click()  # type: ignore[attr-defined]
    page.get_by_role("heading", name=heading or link).first.wait_for(timeout=120_000)  # type: ignore[attr-defined]


_BUSY_JS = """() => !document.querySelector('[data-testid=stStatusWidgetRunningIcon],'
    + '[data-testid=stStatusWidgetRunningManIcon], [data-stale=true]')"""


def wait_until_idle(page: object, timeout_ms: float = 120_000, settle_ms: int = 300) -> None:
    """Wait until the app has finished its script run (no running indicator, no stale elements)."""
    page.wait_for_timeout(settle_ms)  # type: ignore[attr-defined]
    page.wait_for_function(_BUSY_JS, timeout=timeout_ms)  # type: ignore[attr-defined]


NIIVUE_FRAME = 'iframe[title="app.viewer.component.brats_niivue"]'


def niivue_frame(page: object, timeout_s: float = 60.0) -> object:
    """The NiiVue component's frame (one per page), once the page has created it."""
    page.locator(NIIVUE_FRAME).wait_for(timeout=timeout_s * 1000)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        frames = [f for f in page.frames if "/component/app.viewer.component" in f.url]
        if frames:
            return frames[-1]
        page.wait_for_timeout(100)
    raise TimeoutError("no NiiVue frame")


def optional_screenshot(page: object, name: str) -> None:
    """Save ``name.png`` into ``$BRATS_SCREENSHOTS`` when that is set (browser tests' optional pictures)."""
    folder = os.environ.get("BRATS_SCREENSHOTS")
    if folder:
        wait_until_idle(page)
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"))
