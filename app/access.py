"""Who may use the app and what they may open: the login gate (first on every run of ``streamlit_app.py``), the
user's id, and the server folders a case may be loaded from.

Local mode (listening on loopback only): no login, the user is ``"local"``. Network mode (see ``app.auth``): a
password form (scrypt hashes, constant-time comparison, at most ``MAX_FAILURES`` failed attempts per user name and
per client address in ``WINDOW_S``) and/or Streamlit's OIDC ``st.login``; without a configured login the app shows
why and serves nothing, unless ``BRATS_APP_INSECURE`` says otherwise. The user id (``Studio.user``) decides whose
saved sessions may be restored (``app.actions.ensure_session``). Server folders: in local mode any folder the
user can read; in network mode only inside ``BRATS_DATA_ROOTS`` (``core.services.data_roots``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from app.auth import LOCAL_USER, LoginConfig, insecure, login_config, network_mode, refusal
from app.state import studio
from core.services.credentials import FailureLimiter, hash_secret, verify_secret
from core.services.data_roots import allowed_folder, data_roots

MAX_FAILURES, WINDOW_S = 5, 300.0
USER_KEY = "brats_login_user"  # st.session_state key of the user logged in with a password
ANONYMOUS = "anonymous"  # network mode without a login (--insecure)


def served_address() -> str | None:
    """The address the Streamlit server listens on (``server.address``; unset = every interface)."""
    return st.get_option("server.address")


def is_network() -> bool:
    """Whether this app serves other machines (so it needs a login and limits server folders)."""
    return network_mode(served_address())


@st.cache_resource(show_spinner=False)
def failure_limiter() -> FailureLimiter:
    """Failed password attempts of this server (one per process)."""
    return FailureLimiter(MAX_FAILURES, WINDOW_S)


@st.cache_resource(show_spinner=False)
def _dummy_hash() -> str:
    """A hash checked for unknown user names, so they take as long as known ones."""
    return hash_secret("not a password")


def _secrets() -> dict[str, Any]:
    try:
        return st.secrets.to_dict()
    except Exception:  # no secrets.toml: Streamlit raises on access
        return {}


def require_login() -> str:
    """Who is using the app; in network mode shows the login (or the refusal) and stops the run until logged in.

    Returns:
        The user id, also kept in ``Studio.user``: ``"local"``, ``"pw:<name>"``, ``"oidc:<subject>"`` or
        ``"anonymous"`` (network mode with ``--insecure``).
    """
    state = studio()
    if not is_network():
        state.user = LOCAL_USER
        return state.user
    try:
        config = login_config(_secrets())
    except ValueError as exc:
        st.error(f"The login is misconfigured on this server: {exc}")
        st.stop()
    if not config.configured:
        problem = refusal(served_address(), config)
        if problem:
            st.error(f"BraTS Studio refuses to serve: {problem}")
            st.stop()
        state.user = ANONYMOUS
        return state.user
    user = _logged_in_user(config)
    if user is None:
        if state.user:  # logged out (or the OIDC cookie expired): nothing of the last user stays
            st.session_state.clear()
        _login_form(config)
        st.stop()
    if state.user and state.user != user:
        st.session_state.clear()
        studio().user = user
        st.rerun()
    state.user = user
    return user


def _logged_in_user(config: LoginConfig) -> str | None:
    name = st.session_state.get(USER_KEY)
    if isinstance(name, str) and name in config.accounts:
        return f"pw:{name}"
    if config.oidc and config.oidc_ready and st.user.get("is_logged_in"):
        subject = st.user.get("sub") or st.user.get("email")
        if subject:
            return f"oidc:{subject}"
    return None


def _login_form(config: LoginConfig) -> None:
    st.title("BraTS Studio")
    st.caption("This server is shared: log in to use it.")
    if config.oidc and config.oidc_ready:
        if st.button("Log in with your organisation's account", type="primary", key="login_oidc"):
            st.login()
    if not config.accounts:
        return
    single = next(iter(config.accounts)) if len(config.accounts) == 1 else None
    with st.form("login_form"):
        name = st.text_input("User name", value=single or "", key="login_user")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Log in", type="primary")
    if submitted:
        error = check_password(config, name.strip(), password)
        if error:
            st.error(error)
        else:
            st.session_state[USER_KEY] = name.strip()
            st.rerun()


def check_password(config: LoginConfig, name: str, password: str, client: str | None = None) -> str | None:
    """Check a password login against ``config`` with the server's failure limits.

    Returns:
        ``None`` when it is right, else the message to show (the same for an unknown user and a wrong password).
    """
    client = client if client is not None else (st.context.ip_address or "unknown")
    keys = (f"user:{name}", f"client:{client}")
    limiter = failure_limiter()
    wait = limiter.retry_after(*keys)
    if wait > 0:
        return f"Too many failed attempts: try again in {wait:.0f} s."
    stored = config.accounts.get(name)
    ok = verify_secret(password, stored or _dummy_hash())
    if not ok or stored is None:
        limiter.failed(*keys)
        return "Wrong user name or password."
    limiter.succeeded(*keys)
    return None


def account_sidebar() -> None:
    """Who is logged in and a Log out button (network mode with a login only)."""
    user = studio().user
    if not user.startswith(("pw:", "oidc:")):
        if user == ANONYMOUS and insecure():
            st.sidebar.caption(":orange[Shared without a login (--insecure): anyone who reaches it can use it.]")
        return
    with st.sidebar:
        st.caption(f"Logged in as **{user.split(':', 1)[1]}**")
        if st.button("Log out", key="logout"):
            if user.startswith("oidc:"):
                st.logout()
            st.session_state.clear()
            st.rerun()


def case_folder(path: str) -> Path:
    """The folder to load a case from, if this user may open ``path`` on the server.

    Raises:
        FileNotFoundError: local mode, not a folder (the message names the path: it is the user's own machine).
        core.services.data_roots.FolderRefused: network mode, outside the data roots, missing or unreadable (one
            message for all: it tells nothing about the path).
    """
    if is_network():
        return allowed_folder(path, data_roots())
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder on the server; give the path of a folder holding the "
                                "case files.")
    return folder.resolve()


def folder_roots_hint() -> str | None:
    """What the Load page says about server folders in network mode (``None`` in local mode)."""
    if not is_network():
        return None
    roots = data_roots()
    if not roots:
        return "Opening folders on the server is off on this shared server (no data folders are configured)."
    return "Only case folders inside these server folders can be opened: " + ", ".join(f"`{r}`" for r in roots)
