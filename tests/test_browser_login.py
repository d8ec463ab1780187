"""The login of a shared app in a real headless browser (issue 41): the server runs on 127.0.0.1 with
``BRATS_APP_SHARED=1`` (as behind a reverse proxy) and a password hash; nothing of the app shows before the login,
a wrong password is refused, the right one opens the Load page, Log out closes it again.

Skipped when ``/usr/bin/chromium`` is absent (see tests/test_browser_e2e.py)."""

from __future__ import annotations

import pytest

from bench.server import CHROMIUM, chromium_page, streamlit_server
from core.services.credentials import hash_secret

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt-get install chromium)")
playwright = pytest.importorskip("playwright.sync_api")

PASSWORD = "tumour-board-2026"


def test_shared_app_asks_for_the_password_first(tmp_path):
    env = {"BRATS_APP_SHARED": "1", "BRATS_APP_PASSWORD_HASH": hash_secret(PASSWORD, n=2**12),
           "BRATS_APP_USER": "radiology", "BRATS_SESSION_DIR": str(tmp_path / "sessions"),
           "BRATS_UNET_WEIGHTS": str(tmp_path / "none.keras"), "BRATS_CVAE_WEIGHTS": str(tmp_path / "none.keras")}
    with streamlit_server(env) as server, chromium_page() as page:
        page.goto(server.url)
        page.get_by_text("This server is shared: log in to use it.").wait_for(timeout=60_000)
        assert page.get_by_role("heading", name="Load a case").count() == 0
        assert page.get_by_text("Demo case").count() == 0
        password = page.get_by_label("Password", exact=True)
        password.fill("not it")
        page.get_by_role("button", name="Log in").click()
        page.get_by_text("Wrong user name or password.").wait_for(timeout=30_000)
        assert page.get_by_role("heading", name="Load a case").count() == 0

        password.fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.get_by_role("heading", name="Load a case").wait_for(timeout=60_000)
        page.get_by_text("Logged in as").wait_for(timeout=30_000)
        page.get_by_role("button", name="Log out").click()
        page.get_by_text("This server is shared: log in to use it.").wait_for(timeout=30_000)
        assert page.get_by_role("heading", name="Load a case").count() == 0
