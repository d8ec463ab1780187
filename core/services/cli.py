"""Conventions shared by the command-line tools (``core.info``, ``core.segment``, ``core.generate``).

- bad input: exit status :data:`EXIT_BAD_INPUT` (2) and exactly one stderr line ``error: <message>``;
- accepted but unusual input: ``warning: <message>`` lines on stderr, exit status 0;
- SIGTERM ends the process through ``SystemExit`` (status 143), so ``finally`` blocks and context
  managers run: a half-written output's temporary file is removed (``core.io.nifti.save_nifti``).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

EXIT_BAD_INPUT = 2


def one_line(message: object) -> str:
    """``message`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(message).split())


def fail(message: object) -> int:
    """Print ``error: <message>`` as one stderr line; returns :data:`EXIT_BAD_INPUT`."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    return EXIT_BAD_INPUT


def warn(message: object) -> None:
    """Print ``warning: <message>`` as one stderr line."""
    print(f"warning: {one_line(message)}", file=sys.stderr)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Make SIGTERM raise ``SystemExit(143)`` so cleanup code runs (main thread only; no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
