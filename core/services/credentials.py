"""Secrets and who may connect: salted password hashes, constant-time checks, failed-attempt limits, loopback.

Shared by the Streamlit app's login (``app.login``) and the REST API's key check (``serve.api``), so both compare
secrets the same way. A password is stored only as ``scrypt$N$r$p$<salt>$<hash>`` (base64, 16-byte random salt;
make one with ``python -m app.auth hash``). No streamlit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import threading
import time
from collections import deque

SCHEME = "scrypt"
SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES = 2**14, 8, 1, 32  # ~16 MB and ~50 ms per check


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=256 * 1024 * 1024)


def hash_secret(secret: str, *, salt: bytes | None = None, n: int = SCRYPT_N) -> str:
    """A salted scrypt hash of ``secret``, as one string to keep in an environment variable or secrets.toml.

    Raises:
        ValueError: an empty secret.
    """
    if not secret:
        raise ValueError("the password is empty; choose a non-empty one")
    salt = os.urandom(16) if salt is None else salt
    digest = _scrypt(secret, salt, n, SCRYPT_R, SCRYPT_P, KEY_BYTES)
    return f"{SCHEME}${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """``(n, r, p, salt, digest)`` of a :func:`hash_secret` string.

    Raises:
        ValueError: not such a string (the message says how to make one).
    """
    parts = (stored or "").strip().split("$")
    try:
        if len(parts) != 6 or parts[0] != SCHEME:
            raise ValueError
        n, r, p = (int(v) for v in parts[1:4])
        salt, digest = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
        if n < 2 or n & (n - 1) or r < 1 or p < 1 or len(salt) < 8 or len(digest) < 16:
            raise ValueError
    except ValueError:
        raise ValueError("not a password hash of the form scrypt$N$r$p$<salt>$<hash>; make one with "
                         "`python -m app.auth hash`") from None
    return n, r, p, salt, digest


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches the :func:`hash_secret` string ``stored`` (constant-time comparison).

    Raises:
        ValueError: ``stored`` is not a valid hash string.
    """
    n, r, p, salt, digest = parse_hash(stored)
    return hmac.compare_digest(_scrypt(secret or "", salt, n, r, p, len(digest)), digest)


def same_secret(given: str, expected: str) -> bool:
    """Constant-time equality of two secrets (e.g. an API key from a request header and the configured one)."""
    return hmac.compare_digest((given or "").encode("utf-8"), (expected or "").encode("utf-8"))


def is_loopback(host: str | None) -> bool:
    """Whether a listen address reaches this machine only (``127.0.0.0/8``, ``::1``, ``localhost``).

    An empty or unset address means every interface (Streamlit's and most servers' default), so it is not
    loopback; a host name other than ``localhost`` counts as a network address.
    """
    host = (host or "").strip().strip("[]").lower()
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FailureLimiter:
    """Failed attempts per key (a user name, a client address): after ``max_failures`` within ``window_s``
    the key is refused until the oldest of them is ``window_s`` old. Thread-safe, in memory (one per server)."""

    def __init__(self, max_failures: int = 5, window_s: float = 300.0, max_keys: int = 10000) -> None:
        self.max_failures, self.window_s, self.max_keys = max_failures, window_s, max_keys
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and now - times[0] >= self.window_s:
            times.popleft()
        return times

    def retry_after(self, *keys: str, now: float | None = None) -> float:
        """Seconds until every one of ``keys`` may try again (0 when none is blocked)."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        with self._lock:
            for key in keys:
                times = self._recent(key, now)
                if len(times) >= self.max_failures:
                    wait = max(wait, times[-self.max_failures] + self.window_s - now)
        return wait

    def failed(self, *keys: str, now: float | None = None) -> None:
        """Count one failed attempt against each of ``keys``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._failures) >= self.max_keys:  # bound the memory: forget keys with no recent failure
                for stale in [k for k, v in self._failures.items() if not self._recent(k, now)]:
                    del self._failures[stale]
            for key in keys:
                times = self._recent(key, now)
                times.append(now)
                self._failures[key] = times

    def succeeded(self, *keys: str) -> None:
        """Forget the failures of ``keys`` (after a successful login)."""
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
