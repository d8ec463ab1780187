"""Issue 41 in the running app (``streamlit.testing.v1.AppTest``): the login in network mode, the refusal without
one, sessions that belong to their user, server folders only inside the data roots, and "Delete this session's
data now". Network mode is the app listening beyond loopback (``server.address``), as ``--host 0.0.0.0`` sets it."""

from __future__ import annotations

import stat

import pytest
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from app import access
from core.services.credentials import hash_secret
from core.services.data_roots import REFUSAL
from tests.test_app import APP, _errors, _tiny_case_files, _upload

PASSWORD = "open sesame"


@pytest.fixture
def env(monkeypatch, tmp_path):
    """No models (not needed here), sessions under ``tmp_path``, no login settings from the caller's shell."""
    for name in ("BRATS_APP_PASSWORD_HASH", "BRATS_APP_USER", "BRATS_APP_INSECURE", "BRATS_APP_SHARED",
                 "BRATS_DATA_ROOTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BRATS_UNET_WEIGHTS", str(tmp_path / "missing_unet.keras"))
    monkeypatch.setenv("BRATS_CVAE_WEIGHTS", str(tmp_path / "missing_cvae.keras"))
    monkeypatch.setenv("BRATS_INSERTION_WEIGHTS", str(tmp_path / "missing_insertion.keras"))
    monkeypatch.setenv("BRATS_SESSION_DIR", str(tmp_path / "sessions"))
    access.failure_limiter.clear()
    return monkeypatch


@pytest.fixture
def network(env):
    """The app served on every interface (``--server.address 0.0.0.0``)."""
    before = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    yield env
    st_config.set_option("server.address", before)


def _run(**session: object) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in session.items():
        at.session_state[key] = value
    return at.run()


def _titles(at: AppTest) -> list[str]:
    return [t.value for t in at.title]


def _case_folder(parent, name: str):
    folder = parent / name
    folder.mkdir(parents=True)
    for file_name, data in _tiny_case_files(name).items():
        (folder / file_name).write_bytes(data)
    return folder


def test_local_mode_needs_no_login(env):
    assert st_config.get_option("server.address") == "127.0.0.1"  # .streamlit/config.toml
    at = _run()
    assert not at.exception and "Load a case" in _titles(at)
    assert at.session_state["studio"].user == "local"


def test_network_mode_without_a_login_serves_nothing(network):
    at = _run()
    assert not at.exception
    assert any("refuses to serve" in e and "--insecure" in e for e in _errors(at))
    assert "Load a case" not in _titles(at) and not at.tabs


def test_network_mode_requires_the_password_and_limits_attempts(network, tmp_path):
    network.setenv("BRATS_APP_PASSWORD_HASH", hash_secret(PASSWORD, n=2**10))
    at = _run()
    assert not at.exception and "Load a case" not in _titles(at)
    assert at.text_input(key="login_user").value == "studio"  # the one account's name, filled in
    at.text_input(key="login_password").input("wrong")
    at.button[0].click().run()
    assert _errors(at) == ["Wrong user name or password."] and "Load a case" not in _titles(at)
    at.text_input(key="login_user").input("nobody")
    at.text_input(key="login_password").input(PASSWORD)
    at.button[0].click().run()
    assert _errors(at) == ["Wrong user name or password."]  # unknown user: the same message
    at.text_input(key="login_user").input("studio")
    at.text_input(key="login_password").input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception and "Load a case" in _titles(at)
    assert at.session_state["studio"].user == "pw:studio"

    other = _run()  # another browser: five wrong passwords, then even the right one waits
    for _ in range(5):
        other.text_input(key="login_password").input("guess")
        other.button[0].click().run()
    other.text_input(key="login_password").input(PASSWORD)
    other.button[0].click().run()
    assert any(e.startswith("Too many failed attempts") for e in _errors(other))
    assert "Load a case" not in _titles(other)


def test_a_session_belongs_to_the_user_who_made_it(network):
    network.setenv("BRATS_APP_PASSWORD_HASH", hash_secret(PASSWORD, n=2**10))
    network.setenv("BRATS_APP_USER", "alice")
    alice = _run(brats_login_user="alice")
    _upload(alice, _tiny_case_files())
    sid = alice.session_state["studio"].sid
    assert alice.session_state["studio"].case is not None

    network.setenv("BRATS_APP_USER", "bob")  # same password hash, another account
    bob = AppTest.from_file(APP, default_timeout=120)
    bob.query_params["sid"] = sid
    bob.session_state["brats_login_user"] = "bob"
    bob.run()
    state = bob.session_state["studio"]
    assert not bob.exception and state.user == "pw:bob"
    assert state.sid != sid and state.case is None  # Alice's link gives Bob a new, empty session

    network.setenv("BRATS_APP_USER", "alice")
    again = AppTest.from_file(APP, default_timeout=120)
    again.query_params["sid"] = sid
    again.session_state["brats_login_user"] = "alice"
    again.run()
    assert again.session_state["studio"].sid == sid and again.session_state["studio"].case is not None


def test_network_mode_opens_folders_inside_the_data_roots_only(network, tmp_path, capfd, caplog):
    network.setenv("BRATS_APP_INSECURE", "1")
    data, secret = tmp_path / "data", tmp_path / "secret"
    inside = _case_folder(data, "Inside_001")
    outside = _case_folder(secret, "Outside_001")
    (data / "link").symlink_to(outside)
    at = _run()
    assert any("opening folders on the server is off" in c.value.lower() for c in at.caption)
    at.text_input(key="load_path").input(str(inside)).run()
    assert _errors(at) == [REFUSAL]  # no roots configured: nothing is allowed

    network.setenv("BRATS_DATA_ROOTS", str(data))
    at = _run()
    tried = [outside, data / "link", data / ".." / "secret" / "Outside_001", tmp_path / "no" / "such", "/etc"]
    for path in tried:
        at.text_input(key="load_path").input(str(path)).run()
        assert _errors(at) == [REFUSAL], path  # the same words whether it exists or not
        assert at.session_state["studio"].case is None
    at.text_input(key="load_path").input(str(inside)).run()
    assert not _errors(at) and at.session_state["studio"].case.name == "Inside_001"
    logged = capfd.readouterr()
    assert "secret" not in logged.out + logged.err + caplog.text  # refused paths are not logged either


def test_local_mode_opens_any_readable_folder(env, tmp_path):
    env.setenv("BRATS_DATA_ROOTS", str(tmp_path / "elsewhere"))  # roots bind network mode only
    folder = _case_folder(tmp_path / "anywhere", "Local_001")
    at = _run()
    at.text_input(key="load_path").input(str(folder)).run()
    assert not _errors(at) and at.session_state["studio"].case.name == "Local_001"


def test_delete_this_sessions_data_now(env, tmp_path):
    at = _run()
    _upload(at, _tiny_case_files())
    old = at.session_state["studio"]
    folder = tmp_path / "sessions" / old.sid
    assert (folder / "cases" / old.key / "input" / "Tiny_001_t1.nii.gz").is_file()
    saved = [tmp_path / "sessions", *(tmp_path / "sessions").rglob("*")]  # what the app wrote: owner-only
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in saved if p.is_dir()} == {oct(0o700)}
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in saved if p.is_file()} == {oct(0o600)}
    at.button(key="delete_session").click().run()
    at.button(key="delete_session_cancel").click().run()  # asked once more; Cancel keeps everything
    assert folder.is_dir() and at.session_state["studio"].case is not None
    at.button(key="delete_session").click().run()
    at.button(key="delete_session_confirm").click().run()
    assert not at.exception
    assert not folder.exists()
    assert not list((tmp_path / "sessions").rglob("*Tiny_001*"))  # no file of the case is left
    fresh = at.session_state["studio"]
    assert fresh.case is None and fresh.sid != old.sid and at.query_params.get("sid") == fresh.sid
    assert any("was deleted" in s.value for s in at.success)


def test_delete_now_keeps_the_user_logged_in(network, tmp_path):
    network.setenv("BRATS_APP_PASSWORD_HASH", hash_secret(PASSWORD, n=2**10))
    at = _run()
    at.text_input(key="login_password").input(PASSWORD)
    at.button[0].click().run()
    _upload(at, _tiny_case_files())
    old = at.session_state["studio"]
    at.button(key="delete_session").click().run()
    at.button(key="delete_session_confirm").click().run()
    assert not (tmp_path / "sessions" / old.sid).exists()
    # what the login gate reads on the next run (AppTest reruns only the page, not streamlit_app.py's gate)
    assert at.session_state[access.USER_KEY] == "studio" and at.session_state["studio"].user == "pw:studio"
    assert at.session_state["studio"].sid != old.sid and at.session_state["studio"].case is None
