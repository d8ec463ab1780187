"""Issue 41 without a browser: password hashes and limits, the data-root allow-list (symbolic links and ``..``
included), owner-only session files, delete-now, temporary files on errors, and the launcher (loopback by default,
refusing network mode without a login)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from app.auth import LoginConfig, login_config, network_mode, refusal
from core.services.credentials import FailureLimiter, hash_secret, is_loopback, same_secret, verify_secret
from core.services.data_roots import REFUSAL, FolderRefused, allowed_folder, data_roots
from core.services.session_store import SessionStore, cleanup_sessions, protect_root
from tests.conftest import ROOT

FAST_N = 2**10  # scrypt cost for tests (the default 2**14 takes ~50 ms per hash)


# ------------------------------------------------------------------------------------------ credentials
def test_password_hash_is_salted_and_checked():
    first, second = hash_secret("correct horse", n=FAST_N), hash_secret("correct horse", n=FAST_N)
    assert first != second and "correct horse" not in first  # random salt, no clear text
    assert verify_secret("correct horse", first) and verify_secret("correct horse", second)
    assert not verify_secret("correct hors", first) and not verify_secret("", first)
    with pytest.raises(ValueError, match="python -m app.auth hash"):
        verify_secret("x", "plain-text-password")
    with pytest.raises(ValueError, match="empty"):
        hash_secret("")
    assert same_secret("key-1", "key-1") and not same_secret("key-1", "key-2") and not same_secret("", "key")


def test_failure_limiter_blocks_after_repeated_failures_and_forgets_them():
    limiter = FailureLimiter(max_failures=3, window_s=60)
    for t in (0, 1, 2):
        assert limiter.retry_after("user:a", now=t) == 0
        limiter.failed("user:a", "client:x", now=t)
    assert limiter.retry_after("user:a", now=3) == pytest.approx(57)
    assert limiter.retry_after("user:b", "client:x", now=3) == pytest.approx(57)  # same client, other name
    assert limiter.retry_after("user:b", now=3) == 0
    assert limiter.retry_after("user:a", now=60.5) == 0  # the first failure left the window
    limiter.failed("user:c", now=0)
    limiter.succeeded("user:c")
    assert limiter.retry_after("user:c", now=1) == 0


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.1.1", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("", False), (None, False), ("192.168.1.5", False), ("::", False),
                                            ("example.org", False)])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback
    assert network_mode(host, {}) is not loopback
    assert network_mode(host, {"BRATS_APP_SHARED": "1"})  # a reverse proxy makes any address shared


def test_login_config_from_secrets_and_environment():
    stored = hash_secret("pw", n=FAST_N)
    config = login_config({"brats_login": {"users": {"alice": stored}}}, {"BRATS_APP_PASSWORD_HASH": stored})
    assert set(config.accounts) == {"alice", "studio"} and config.configured
    assert login_config({}, {"BRATS_APP_PASSWORD_HASH": stored, "BRATS_APP_USER": "bob"}).accounts == {"bob": stored}
    with pytest.raises(ValueError, match=r"\[brats_login.users\] alice"):
        login_config({"brats_login": {"users": {"alice": "secret"}}}, {})
    oidc = login_config({"auth": {"client_id": "x"}}, {})
    assert oidc.oidc and not oidc.accounts
    assert refusal("0.0.0.0", LoginConfig(), {}) and "--insecure" in refusal("0.0.0.0", LoginConfig(), {})
    assert refusal("0.0.0.0", LoginConfig(), {"BRATS_APP_INSECURE": "1"}) is None
    assert refusal("127.0.0.1", LoginConfig(), {}) is None
    assert refusal("127.0.0.1", LoginConfig(), {"BRATS_APP_SHARED": "1"})
    assert "Authlib" in refusal("0.0.0.0", LoginConfig(oidc=True, oidc_ready=False), {})


# ------------------------------------------------------------------------------------------ data roots
@pytest.fixture
def tree(tmp_path) -> dict[str, Path]:
    """``roots/data/case`` (allowed), ``secret/case`` (outside), links from inside to outside."""
    data, secret = tmp_path / "data", tmp_path / "secret"
    (data / "case").mkdir(parents=True)
    (secret / "case").mkdir(parents=True)
    (data / "case" / "x_t1.nii.gz").write_bytes(b"inside")
    (secret / "case" / "x_t1.nii.gz").write_bytes(b"outside")
    (data / "escape").symlink_to(secret / "case")  # a folder link out of the root
    (data / "mixed").mkdir()
    (data / "mixed" / "x_t2.nii.gz").symlink_to(secret / "case" / "x_t1.nii.gz")  # a file link out
    (data / "inner").symlink_to(data / "case")  # a link that stays inside
    return {"data": data, "secret": secret, "root": tmp_path}


def test_only_folders_inside_the_roots_are_allowed(tree):
    data, secret = tree["data"], tree["secret"]
    roots = data_roots({"BRATS_DATA_ROOTS": f"{data}{os.pathsep}{tree['root'] / 'missing'}"})
    assert roots == (data.resolve(),)
    assert allowed_folder(data / "case", roots) == (data / "case").resolve()
    assert allowed_folder(data / "inner", roots) == (data / "case").resolve()
    assert allowed_folder(data / "case" / ".." / "case", roots) == (data / "case").resolve()
    refused = [secret / "case", data / ".." / "secret" / "case", data / "case" / ".." / ".." / "secret" / "case",
               data / "escape", data / "mixed", data / "nowhere", data / "case" / "x_t1.nii.gz", "/etc", "",
               f"~{os.sep}..", "relative/path"]
    messages = set()
    for path in refused:
        with pytest.raises(FolderRefused) as info:
            allowed_folder(path, roots)
        messages.add(str(info.value))
    assert messages == {REFUSAL}  # one message: nothing tells whether the path exists
    assert str(secret) not in REFUSAL
    with pytest.raises(FolderRefused):
        allowed_folder(data / "case", ())  # no roots configured: nothing is allowed
    assert data_roots({}) == ()


# ------------------------------------------------------------------------------------------ session data
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _fill(store: SessionStore) -> None:
    store.claim("pw:alice")
    store.save_source("case01", {"kind": "files", "name": "x"}, {"x_t1.nii.gz": b"scan", "x_t2.nii.gz": b"scan"})
    store.set_current("case01", "x")
    labels = np.zeros((8, 8, 4), np.uint8)
    labels[2:4, 2:4, 1] = 3
    store.save_labels("case01", "prediction", labels, {"seconds": 1.0})
    store.save_samples("case01", [np.ones((4, 8, 8, 4), np.float32)], [labels], {"names": ["s1"]})


def test_session_data_is_owner_only(tmp_path):
    old = os.umask(0o022)  # the usual umask, which leaves files world-readable
    try:
        store = SessionStore("abcdef123456", root=tmp_path / "sessions")
        _fill(store)
    finally:
        os.umask(old)
    paths = [store.root, *store.root.rglob("*")]
    folders, files = [p for p in paths if p.is_dir()], [p for p in paths if p.is_file()]
    assert len(files) >= 7 and {p.name for p in files} >= {"owner.json", "x_t1.nii.gz", "prediction.npz",
                                                           "sample_00.npz", "workspace.json"}
    assert {oct(_mode(p)) for p in folders} == {oct(0o700)}
    assert {oct(_mode(p)) for p in files} == {oct(0o600)}
    assert "alice" not in (store.folder / "owner.json").read_text()  # the owner is kept as a digest only


def test_an_old_world_readable_sessions_root_is_closed(tmp_path):
    root = tmp_path / "sessions"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    protect_root(root)
    assert _mode(root) == 0o700
    shared = tmp_path / "shared"  # a sticky shared folder (like /tmp) given as the root is not closed
    shared.mkdir()
    os.chmod(shared, 0o1777)
    protect_root(shared)
    assert _mode(shared) == 0o1777
    store = SessionStore("abcdef123456", root=shared)
    assert store.claim("local") and _mode(store.folder) == 0o700


def test_sessions_belong_to_their_owner(tmp_path):
    store = SessionStore("abcdef123456", root=tmp_path)
    assert store.claim("pw:alice") and store.claim("pw:alice")
    assert not store.claim("pw:bob") and not store.claim("local")
    assert SessionStore("abcdef123456", root=tmp_path).claim("pw:alice")


def test_delete_now_leaves_no_file_behind(tmp_path):
    root = tmp_path / "sessions"
    store, other = SessionStore("abcdef123456", root=root), SessionStore("other0123456", root=root)
    _fill(store)
    _fill(other)
    store.delete()
    assert not store.folder.exists() and not any(root.rglob("abcdef123456*"))
    assert sorted(p.name for p in root.iterdir()) == ["other0123456"]  # only this session's data went
    store.delete()  # nothing left: no error
    assert other.workspace()["current"] == "case01"


def test_failed_writes_leave_no_temporary_file(tmp_path, monkeypatch):
    store = SessionStore("abcdef123456", root=tmp_path)
    store.claim("local")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    labels = np.ones((4, 4, 4), np.uint8)
    for write in (lambda: store.save_source("case01", {"kind": "files"}, {"a_t1.nii.gz": b"x"}),
                  lambda: store.save_labels("case01", "prediction", labels, {}),
                  lambda: store.save_samples("case01", [np.ones((4, 4, 4, 4))], [labels], {"names": ["s"]})):
        with pytest.raises(OSError, match="disk full"):
            write()
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_cleanup_keeps_the_configured_retention(tmp_path):
    root = tmp_path / "sessions"
    old, new = SessionStore("old0123456", root=root), SessionStore("new0123456", root=root)
    _fill(old)
    _fill(new)
    long_ago = time.time() - 3 * 86400
    for path in old.folder.rglob("*"):
        os.utime(path, (long_ago, long_ago))
    assert cleanup_sessions(root, max_age_days=7) == []
    assert cleanup_sessions(root, max_age_days=2) == ["old0123456"]
    assert not old.folder.exists() and new.folder.exists()


# ------------------------------------------------------------------------------------------ launcher
def _launch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRATS_APP_")}
    return subprocess.run([sys.executable, "-m", "app.launch", *args], cwd=ROOT, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60)


def test_launcher_listens_on_loopback_by_default():
    done = _launch("--dry-run")
    assert done.returncode == 0, done.stderr
    command = done.stdout.split()
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    assert "streamlit_app.py" in done.stdout and "BRATS_APP_INSECURE" not in done.stdout
    config = (ROOT / ".streamlit" / "config.toml").read_text()
    assert 'address = "127.0.0.1"' in config  # a plain `streamlit run` is local too
    assert "maxUploadSize = 300" in config
    makefile = (ROOT / "Makefile").read_text()
    assert "HOST ?= 127.0.0.1" in makefile and "-m app.launch --host $(HOST)" in makefile


def test_launcher_refuses_network_mode_without_a_login():
    if (ROOT / ".streamlit" / "secrets.toml").exists():
        pytest.skip("a secrets.toml is configured in this checkout")
    start = time.perf_counter()
    for args, env in ((("--host", "0.0.0.0"), {}), (("--shared",), {}),
                      (("--host", "0.0.0.0"), {"BRATS_APP_PASSWORD_HASH": "not-a-hash"})):
        done = _launch(*args, env=env)
        assert done.returncode == 2, (args, done.stdout)
        assert done.stderr.startswith("error: ") and not done.stdout
    assert "without a login" in _launch("--host", "0.0.0.0").stderr
    assert time.perf_counter() - start < 30  # refuses before anything starts
    stored = hash_secret("pw", n=FAST_N)
    ok = _launch("--host", "0.0.0.0", "--dry-run", env={"BRATS_APP_PASSWORD_HASH": stored})
    assert ok.returncode == 0 and "--server.address 0.0.0.0" in ok.stdout
    insecure = _launch("--host", "0.0.0.0", "--insecure", "--dry-run")
    assert insecure.returncode == 0 and insecure.stdout.startswith("BRATS_APP_INSECURE=1 ")
    assert "without a login" in insecure.stderr


def test_auth_hash_command_prints_a_working_hash():
    done = subprocess.run([sys.executable, "-m", "app.auth", "hash"], cwd=ROOT, input="s3cret\n",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    stored = done.stdout.strip()
    assert verify_secret("s3cret", stored) and "s3cret" not in done.stdout + done.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _own_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return []
    return [a for a in out if "." in a and not a.startswith("127.")]


def test_the_launched_app_answers_on_loopback_only():
    """Starts the real server through the launcher (as `make run`) and checks where it answers."""
    port = _free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRATS_APP_")}
    server = subprocess.Popen([sys.executable, "-m", "app.launch", "--port", str(port), "--",
                               "--server.headless", "true"], cwd=ROOT, env=clean,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as reply:
                    assert reply.status == 200
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, "the app did not start"
                time.sleep(1)
        for address in _own_addresses():
            with socket.socket() as sock, pytest.raises(OSError):
                sock.settimeout(2)
                sock.connect((address, port))
    finally:
        server.terminate()
        server.wait(timeout=30)
