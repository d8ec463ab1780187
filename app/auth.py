"""The app's login configuration, read the same way by the launcher (``app.launch``) and the app (``app.login``).

The app runs in **local mode** when it listens on loopback only (the default: ``make run``, ``.streamlit/config.toml``
``address = "127.0.0.1"``) and in **network mode** otherwise, or when ``BRATS_APP_SHARED=1`` says that a reverse
proxy on this machine serves it to others. In network mode a login is required, one of:

- passwords: ``BRATS_APP_PASSWORD_HASH`` (one account, named ``$BRATS_APP_USER`` or ``studio``) and/or a
  ``[brats_login.users]`` table in ``.streamlit/secrets.toml`` (``name = "scrypt$..."``); only salted scrypt
  hashes are stored, made with ``python -m app.auth hash``;
- OpenID Connect through Streamlit's ``st.login``: an ``[auth]`` section in ``secrets.toml`` (needs Authlib).

``BRATS_APP_INSECURE=1`` (``python -m app.launch --insecure``) serves the network without a login, on purpose.
No streamlit import here: the launcher checks the configuration before starting a server.
"""

from __future__ import annotations

import argparse
import getpass
import importlib.util
import os
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.services.credentials import hash_secret, is_loopback, parse_hash

PASSWORD_HASH_ENV, USER_ENV, DEFAULT_USER = "BRATS_APP_PASSWORD_HASH", "BRATS_APP_USER", "studio"
INSECURE_ENV, SHARED_ENV = "BRATS_APP_INSECURE", "BRATS_APP_SHARED"
SECRETS_SECTION = "brats_login"
LOCAL_USER = "local"  # the one user of a loopback-only app (whoever runs it)


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def network_mode(address: str | None, env: Mapping[str, str] | None = None) -> bool:
    """Whether an app listening on ``address`` serves other machines (or ``BRATS_APP_SHARED`` says so)."""
    return _flag(os.environ if env is None else env, SHARED_ENV) or not is_loopback(address)


def insecure(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``BRATS_APP_INSECURE`` allows network mode without a login."""
    return _flag(os.environ if env is None else env, INSECURE_ENV)


@dataclass(frozen=True)
class LoginConfig:
    """The logins configured: password accounts (user -> scrypt hash) and whether OIDC (``[auth]``) is set up."""

    accounts: dict[str, str] = field(default_factory=dict)
    oidc: bool = False
    oidc_ready: bool = True  # Authlib importable (st.login needs it)

    @property
    def configured(self) -> bool:
        """Whether some login can work."""
        return bool(self.accounts) or (self.oidc and self.oidc_ready)


def login_config(secrets: Mapping[str, Any], env: Mapping[str, str] | None = None) -> LoginConfig:
    """The login configuration from secrets.toml's content and the environment.

    Raises:
        ValueError: a stored password hash is malformed (the message names where it is and how to fix it).
    """
    env = os.environ if env is None else env
    accounts: dict[str, str] = {}
    section = secrets.get(SECRETS_SECTION) or {}
    users = section.get("users") if isinstance(section, Mapping) else None
    for name, stored in (users or {}).items():
        _check_hash(str(stored), f"[{SECRETS_SECTION}.users] {name} in .streamlit/secrets.toml")
        accounts[str(name)] = str(stored)
    if env.get(PASSWORD_HASH_ENV, "").strip():
        stored = env[PASSWORD_HASH_ENV].strip()
        _check_hash(stored, PASSWORD_HASH_ENV)
        accounts[env.get(USER_ENV, "").strip() or DEFAULT_USER] = stored
    auth = secrets.get("auth")
    oidc = isinstance(auth, Mapping) and bool(auth)
    return LoginConfig(accounts, oidc, importlib.util.find_spec("authlib") is not None)


def _check_hash(stored: str, where: str) -> None:
    try:
        parse_hash(stored)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def read_secrets_files(project: Path | None = None) -> dict[str, Any]:
    """What Streamlit's ``st.secrets`` holds: ``~/.streamlit/secrets.toml``, then the project's (which wins).

    Raises:
        ValueError: a secrets file is not valid TOML (names the file).
    """
    project = project or Path.cwd()
    merged: dict[str, Any] = {}
    for path in (Path.home() / ".streamlit" / "secrets.toml", project / ".streamlit" / "secrets.toml"):
        if path.is_file():
            try:
                merged.update(tomllib.loads(path.read_text()))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path}: not valid TOML ({exc}); fix or remove the file") from None
    return merged


def refusal(address: str | None, config: LoginConfig, env: Mapping[str, str] | None = None) -> str | None:
    """Why the app must not serve on ``address`` with ``config`` (``None`` when it may)."""
    env = os.environ if env is None else env
    if not network_mode(address, env) or config.configured or insecure(env):
        return None
    where = f"on {address or 'every interface'}" if not is_loopback(address) else f"behind a proxy ({SHARED_ENV})"
    missing = (" ([auth] is set up in secrets.toml, but st.login needs Authlib: pip install 'Authlib>=1.3.2')"
               if config.oidc and not config.oidc_ready else "")
    return (f"the app would serve the network {where} without a login{missing}. Configure one: "
            f"{PASSWORD_HASH_ENV} (make it with `python -m app.auth hash`), a [{SECRETS_SECTION}.users] table or "
            f"an OIDC [auth] section in .streamlit/secrets.toml; or listen on 127.0.0.1 only; or, on purpose, "
            f"serve without a login with --insecure ({INSECURE_ENV}=1).")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m app.auth hash``: ask for a password (twice, or one line on stdin) and print its hash."""
    parser = argparse.ArgumentParser(prog="python -m app.auth", description="BraTS Studio login helpers.")
    parser.add_argument("command", choices=["hash"], help="hash: print the scrypt hash of a password")
    parser.parse_args(argv)
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("error: the two passwords differ; run it again", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    try:
        stored = hash_secret(password)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(stored)
    print(f"# use it as: export {PASSWORD_HASH_ENV}='{stored}'   (user name: ${USER_ENV} or {DEFAULT_USER})\n"
          f"# or in .streamlit/secrets.toml:  [{SECRETS_SECTION}.users]  <name> = \"{stored}\"", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
