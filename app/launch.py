"""``python -m app.launch``: start the Streamlit app after checking that serving it this way is safe.

    python -m app.launch                          # http://127.0.0.1:8501, this machine only (make run)
    python -m app.launch --host 0.0.0.0           # network mode: refuses to start without a login
    python -m app.launch --shared                 # loopback, but a reverse proxy serves it to others: login too
    python -m app.launch --host 0.0.0.0 --insecure    # network, no login, on purpose
    python -m app.launch --dry-run                # print the streamlit command instead of running it

Exits with status 2 and one ``error:`` line, before any server starts, when the app would serve the network
without a login (see ``app.auth``). Otherwise it replaces itself with ``streamlit run streamlit_app.py
--server.address HOST --server.port PORT`` (extra arguments after ``--`` are passed on).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from app.auth import INSECURE_ENV, SHARED_ENV, LoginConfig, login_config, network_mode, read_secrets_files, refusal

ROOT = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface of ``python -m app.launch``."""
    p = argparse.ArgumentParser(prog="python -m app.launch", description="Start BraTS Studio (Streamlit) safely.")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default %(default)s: this machine only; 0.0.0.0 = every interface, "
                        "which needs a login)")
    p.add_argument("--port", type=int, default=8501, help="port (default %(default)s)")
    p.add_argument("--shared", action="store_true",
                   help=f"others reach the app through a reverse proxy on this machine: require a login even on "
                        f"loopback ({SHARED_ENV}=1)")
    p.add_argument("--insecure", action="store_true",
                   help=f"serve the network without a login ({INSECURE_ENV}=1): anyone who reaches the port can use "
                        "the app and its server folders")
    p.add_argument("--dry-run", action="store_true", help="print the command and settings, start nothing")
    p.add_argument("streamlit_args", nargs="*", help="more `streamlit run` options, after --")
    return p


def command(args: argparse.Namespace) -> list[str]:
    """The ``streamlit run`` command line for ``args``."""
    return [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"),
            "--server.address", args.host, "--server.port", str(args.port), *args.streamlit_args]


def main(argv: Sequence[str] | None = None) -> int:
    """Check the configuration, then run the app (does not return unless it refuses: exit status 2)."""
    args = build_parser().parse_args(argv)
    env = dict(os.environ)
    if args.shared:
        env[SHARED_ENV] = "1"
    if args.insecure:
        env[INSECURE_ENV] = "1"
    config = LoginConfig()
    try:
        config = login_config(read_secrets_files(ROOT), env)
        problem = refusal(args.host, config, env)
    except ValueError as exc:
        problem = str(exc)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if network_mode(args.host, env) and not config.configured:
        print("warning: serving the network without a login (--insecure): anyone who reaches the port can use the "
              "app", file=sys.stderr)
    cmd = command(args)
    if args.dry_run:
        flags = " ".join(f"{k}={env[k]}" for k in (SHARED_ENV, INSECURE_ENV) if env.get(k))
        print(f"{flags + ' ' if flags else ''}{shlex.join(cmd)}")
        return 0
    os.chdir(ROOT)  # Streamlit reads .streamlit/ from the working folder
    os.execve(sys.executable, cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
