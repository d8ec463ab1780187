"""Per-session work on the server's disk: cases, predictions, edited masks and samples survive a reload.

One folder per browser session id (``<root>/<sid>/``), one sub-folder per case loaded in that
session (``cases/<case_id>/``), so switching cases never throws work away:

- ``source.json``: how to load the case again (``{"kind": "demo"}``, ``{"kind": "folder", "path"}``
  or ``{"kind": "files"}`` with the uploaded files kept in ``input/``) and its name;
- ``prediction.npz`` + ``prediction.json``; ``edited.npz`` + ``edited.json`` (label maps stored sparse:
  the non-zero voxels, so saving after every stroke takes milliseconds; ``edited.npz`` also holds the
  undo/redo history, so Ctrl+Z still works after a reload);
- ``samples/`` with one ``.npz`` per sample (float16 images) and ``samples.json``.

``workspace.json`` names the current case and the recent ones, newest first; ``owner.json`` the (hashed)
user the session belongs to. Writes go through a temporary file and ``os.replace``, so a crash mid-write
leaves the previous version, and the temporary file is removed on every error. Patient data stays private to
the server's user: folders are created ``0700`` and files ``0600`` (the root is made ``0700`` too).
:func:`cleanup_sessions` removes sessions unused for a while, and the oldest ones while the folder is
over a size bound; :meth:`SessionStore.delete` removes one session at once. No streamlit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import numpy as np

SESSION_ENV = "BRATS_SESSION_DIR"
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "sessions"
MAX_RECENT = 8
LEGACY_SET_ID = "samples"  # the one sample set of a case saved before sets (never a generated id: those are hex)
MAX_AGE_ENV, MAX_SIZE_ENV = "BRATS_SESSION_MAX_AGE_DAYS", "BRATS_SESSION_MAX_GB"
DEFAULT_MAX_AGE_DAYS, DEFAULT_MAX_GB = 14.0, 5.0
_SAFE = re.compile(r"^[A-Za-z0-9_-]{6,64}$")


def session_root() -> Path:
    """Folder holding every session (``$BRATS_SESSION_DIR`` or ``sessions/`` in the project)."""
    return Path(os.environ.get(SESSION_ENV) or DEFAULT_ROOT)


def valid_id(value: str) -> bool:
    """Whether ``value`` is usable as a session or case id (letters, digits, ``_``, ``-``; 6-64 chars)."""
    return bool(_SAFE.match(value or ""))


DIR_MODE, FILE_MODE = 0o700, 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents owner-only (``0700``); returns ``path``."""
    missing = []
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(folder, DIR_MODE)  # the umask could have taken bits away; never adds any
    return path


def _private_write(path: Path, write: Any) -> None:
    """Write ``path`` owner-only (``0600``) through a temporary file replaced atomically; ``write(handle)``
    writes the content. The temporary file is removed when anything fails."""
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, FILE_MODE)  # an existing leftover keeps its old mode through O_TRUNC
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _atomic_write(path: Path, data: bytes) -> None:
    _private_write(path, lambda handle: handle.write(data))


def _write_json(path: Path, payload: Any) -> None:
    _atomic_write(path, json.dumps(payload, indent=1, default=float).encode())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _save_npz(path: Path, compressed: bool = True, **arrays: np.ndarray) -> None:
    _private_write(path, lambda handle: (np.savez_compressed if compressed else np.savez)(handle, **arrays))


HISTORY_PREFIX = "history_"


def _sparse(labels: np.ndarray) -> dict[str, np.ndarray]:
    """A label map as its shape and non-zero voxels (a tumour is ~1 % of the volume)."""
    labels = np.asarray(labels, dtype=np.uint8)
    flat = np.flatnonzero(labels)
    return {"shape": np.asarray(labels.shape, np.int64), "idx": flat.astype(np.uint32 if labels.size < 2**32 else
                                                                        np.int64), "val": labels.reshape(-1)[flat]}


def _dense(data: Any) -> np.ndarray:
    if "labels" in data:  # written before the sparse format
        return data["labels"]
    labels = np.zeros(int(np.prod(data["shape"])), np.uint8)
    labels[data["idx"]] = data["val"]
    return labels.reshape(tuple(int(n) for n in data["shape"]))


def _tree_stats(folder: Path) -> tuple[float, int]:
    """(newest modification time, total bytes) of the files under ``folder``."""
    newest, size = 0.0, 0
    for path in folder.rglob("*"):
        try:
            info = path.lstat()
        except OSError:
            continue
        newest = max(newest, info.st_mtime)
        size += info.st_size if path.is_file() else 0
    return newest or folder.stat().st_mtime, size


def cleanup_sessions(root: Path | None = None, *, max_age_days: float | None = None, max_bytes: int | None = None,
                     keep: tuple[str, ...] = (), now: float | None = None) -> list[str]:
    """Remove saved sessions not used for ``max_age_days``, then the least recently used ones until
    all left fit in ``max_bytes``.

    Defaults: ``$BRATS_SESSION_MAX_AGE_DAYS`` (14) and ``$BRATS_SESSION_MAX_GB`` (5). A session's
    age is that of its newest file. ``keep`` (e.g. the sessions open right now) are never removed.

    Returns:
        The ids of the removed sessions.
    """
    root = root or session_root()
    if max_age_days is None:
        max_age_days = float(os.environ.get(MAX_AGE_ENV) or DEFAULT_MAX_AGE_DAYS)
    if max_bytes is None:
        max_bytes = int(float(os.environ.get(MAX_SIZE_ENV) or DEFAULT_MAX_GB) * 1e9)
    now = time.time() if now is None else now
    try:
        folders = [p for p in root.iterdir() if p.is_dir() and valid_id(p.name)]
    except OSError:
        return []
    stats = sorted(((*_tree_stats(p), p) for p in folders), key=lambda item: item[0])  # oldest first
    total = sum(size for _, size, _ in stats)
    removed = []
    for newest, size, folder in stats:
        too_old = now - newest > max_age_days * 86400
        if folder.name in keep or not (too_old or total > max_bytes):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        total -= size
        removed.append(folder.name)
    return removed


def protect_root(root: Path | None = None) -> Path:
    """Create the sessions root owner-only, or make an existing one so (sessions saved before this
    version may hold ``0755`` folders: they become unreachable for other users)."""
    root = root or session_root()
    private_dir(root)
    info = root.stat()
    # a shared folder (sticky, like /tmp) or someone else's is left as it is; the session folders are 0700 anyway
    if info.st_mode & 0o077 and not info.st_mode & stat.S_ISVTX and info.st_uid == os.getuid():
        try:
            os.chmod(root, DIR_MODE)
        except OSError:
            pass
    return root


def owner_token(user: str) -> str:
    """What ``owner.json`` keeps of a user id (a SHA-256 hex digest: no e-mail address on disk)."""
    return hashlib.sha256(f"brats-session-owner:{user}".encode()).hexdigest()


class SessionStore:
    """The saved work of one browser session."""

    def __init__(self, sid: str, root: Path | None = None) -> None:
        if not valid_id(sid):
            raise ValueError(f"invalid session id {sid!r}")
        self.sid = sid
        self.root = root or session_root()
        self.folder = self.root / sid

    # ------------------------------------------------------------------ owner and deletion
    def claim(self, user: str) -> bool:
        """Make ``user`` the session's owner if it has none; returns whether the session is ``user``'s.

        A session id is in the URL (``?sid=``), so it can be shared or guessed: the app only restores a
        session for the user who made it.
        """
        path = self.folder / "owner.json"
        saved = _read_json(path)
        if isinstance(saved, dict) and isinstance(saved.get("owner"), str):
            return hmac.compare_digest(saved["owner"], owner_token(user))
        if self.folder.exists() and not self.folder.is_dir():
            return False
        protect_root(self.root)
        private_dir(self.folder)
        _write_json(path, {"owner": owner_token(user)})
        return True

    def delete(self) -> None:
        """Remove everything saved for this session now (the folder is gone afterwards).

        Raises:
            OSError: something could not be removed (the message names the session, not the files).
        """
        if not self.folder.exists() and not self.folder.is_symlink():
            return
        if self.folder.is_symlink() or not self.folder.is_dir():
            self.folder.unlink()
            return
        errors: list[str] = []
        shutil.rmtree(self.folder, onerror=lambda *args: errors.append(str(args[1])))
        if errors or self.folder.exists():
            raise OSError(f"could not remove all saved data of session {self.sid} ({len(errors)} error(s)); "
                          "check the permissions of the sessions folder on the server")

    # ------------------------------------------------------------------ workspace
    def workspace(self) -> dict[str, Any]:
        """``{"current": case_id | None, "recent": [{"case_id", "name", "saved"}, ...]}``."""
        data = _read_json(self.folder / "workspace.json")
        if not isinstance(data, dict):
            data = {}
        return {"current": data.get("current"), "recent": list(data.get("recent") or [])}

    def set_current(self, case_id: str, name: str) -> None:
        """Make ``case_id`` the current case and the newest recent one."""
        ws = self.workspace()
        recent = [r for r in ws["recent"] if r.get("case_id") != case_id]
        recent.insert(0, {"case_id": case_id, "name": name, "saved": time.time()})
        for old in recent[MAX_RECENT:]:
            shutil.rmtree(self.case_dir(old["case_id"]), ignore_errors=True)
        _write_json(self.folder / "workspace.json", {"current": case_id, "recent": recent[:MAX_RECENT]})

    def case_dir(self, case_id: str) -> Path:
        """Folder of one case of this session."""
        if not valid_id(case_id):
            raise ValueError(f"invalid case id {case_id!r}")
        return self.folder / "cases" / case_id

    def summary(self, case_id: str) -> dict[str, Any]:
        """What is saved for a case: name, prediction / edits present, number of samples (all sets)."""
        folder = self.case_dir(case_id)
        source = _read_json(folder / "source.json") or {}
        return {
            "case_id": case_id, "name": source.get("name", case_id),
            "prediction": (folder / "prediction.npz").is_file(), "edited": (folder / "edited.npz").is_file(),
            "samples": sum(len(s.get("names") or []) for s in self.sample_sets(case_id)),
        }

    # ------------------------------------------------------------------ case source
    def save_source(self, case_id: str, source: dict[str, Any], files: dict[str, bytes] | None = None) -> None:
        """How to load the case again; uploaded ``files`` (name -> bytes) are kept beside it."""
        folder = self.case_dir(case_id)
        if files:
            inputs = folder / "input"
            for name, data in files.items():
                _atomic_write(inputs / Path(name).name, data)
        _write_json(folder / "source.json", source)

    def source(self, case_id: str) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The saved source description and uploaded files (empty for demo / folder cases)."""
        folder = self.case_dir(case_id)
        source = _read_json(folder / "source.json")
        if not isinstance(source, dict):
            raise FileNotFoundError(f"no saved case {case_id}")
        inputs = folder / "input"
        files = {p.name: p.read_bytes() for p in sorted(inputs.iterdir())} if inputs.is_dir() else {}
        return source, files

    # ------------------------------------------------------------------ label maps
    def save_labels(self, case_id: str, name: str, labels: np.ndarray, meta: dict[str, Any],
                    history: dict[str, np.ndarray] | None = None, sparse: bool = True) -> None:
        """A label map (``name``: ``"prediction"`` or ``"edited"``) with its JSON metadata.

        ``history`` (``MaskEditor.history_arrays()``) is stored in the same file, so labels and
        history never disagree after a crash. Sparse and uncompressed: ~10 ms for a BraTS mask.
        ``sparse=False``: the uint8 array whole, compressed (for maps that may be non-zero almost everywhere,
        e.g. probability codes); :meth:`labels` reads both.
        """
        folder = self.case_dir(case_id)
        extra = {HISTORY_PREFIX + key: value for key, value in (history or {}).items()}
        voxels = _sparse(labels) if sparse else {"labels": np.asarray(labels, dtype=np.uint8)}
        _save_npz(folder / f"{name}.npz", compressed=not sparse, **voxels, **extra)
        _write_json(folder / f"{name}.json", meta)

    def labels(self, case_id: str, name: str) -> tuple[np.ndarray, dict[str, Any]] | None:
        """A saved label map and its metadata, or ``None``."""
        folder = self.case_dir(case_id)
        try:
            with np.load(folder / f"{name}.npz") as data:
                labels = _dense(data)
        except (OSError, KeyError, ValueError):
            return None
        return labels, _read_json(folder / f"{name}.json") or {}

    def label_meta(self, case_id: str, name: str) -> dict[str, Any] | None:
        """The metadata of a saved label map alone (no voxels read), or ``None``."""
        meta = _read_json(self.case_dir(case_id) / f"{name}.json")
        return meta if isinstance(meta, dict) else None

    def history(self, case_id: str, name: str = "edited") -> dict[str, np.ndarray] | None:
        """The undo/redo history saved with a label map (``None`` when there is none)."""
        try:
            with np.load(self.case_dir(case_id) / f"{name}.npz") as data:
                found = {key[len(HISTORY_PREFIX):]: data[key] for key in data.files if key.startswith(HISTORY_PREFIX)}
        except (OSError, ValueError):
            return None
        return found or None

    def touch(self) -> None:
        """Mark the session as in use (its age for :func:`cleanup_sessions` starts again)."""
        path = self.folder / "workspace.json"
        if path.is_file():
            os.utime(path)

    # ------------------------------------------------------------------ generated samples
    # Each generation run is one set (``set_id``: letters, digits, 6-64); the sets of a case form its history.
    # ``LEGACY_SET_ID`` is the single set of sessions saved before sets existed (folder ``samples``).
    def _samples_dir(self, case_id: str, set_id: str = LEGACY_SET_ID) -> Path:
        if not valid_id(set_id):
            raise ValueError(f"invalid sample set id {set_id!r}")
        folder = self.case_dir(case_id)
        return folder / "samples" if set_id == LEGACY_SET_ID else folder / "sample_sets" / set_id

    def sample_sets(self, case_id: str) -> list[dict[str, Any]]:
        """The saved sample sets of a case, newest first: their metadata with ``set_id`` added."""
        folder = self.case_dir(case_id)
        found = []
        for path in [folder / "samples", *sorted((folder / "sample_sets").glob("*"))]:
            meta = _read_json(path / "samples.json")
            if isinstance(meta, dict):
                set_id = LEGACY_SET_ID if path.name == "samples" else path.name
                found.append({**meta, "set_id": set_id, "saved": float(meta.get("saved", path.stat().st_mtime))})
        return sorted(found, key=lambda m: m["saved"], reverse=True)

    def delete_samples(self, case_id: str, set_id: str = LEGACY_SET_ID) -> None:
        """Remove one sample set (its files) for good."""
        shutil.rmtree(self._samples_dir(case_id, set_id), ignore_errors=True)

    def save_samples(self, case_id: str, images: list[np.ndarray], segs: list[np.ndarray],
                     meta: dict[str, Any], set_id: str = LEGACY_SET_ID) -> None:
        """Generated samples (``(4, X, Y, Z)`` images stored as float16, their masks) and their metadata."""
        folder = self._samples_dir(case_id, set_id)
        shutil.rmtree(folder, ignore_errors=True)
        for i, (image, seg) in enumerate(zip(images, segs)):
            _save_npz(folder / f"sample_{i:02d}.npz", compressed=False,
                      image=np.asarray(image, dtype=np.float16), seg=np.asarray(seg, dtype=np.uint8))
        _write_json(folder / "samples.json", meta)

    def update_samples_meta(self, case_id: str, meta: dict[str, Any], set_id: str = LEGACY_SET_ID) -> None:
        """Rewrite the samples' metadata (e.g. a fidelity result added)."""
        _write_json(self._samples_dir(case_id, set_id) / "samples.json", meta)

    def samples(self, case_id: str, set_id: str | None = None
                ) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]] | None:
        """Saved samples (images as float32) and metadata (with its ``set_id``) of one set (``None``: the newest),
        or ``None``."""
        if set_id is None:
            sets = self.sample_sets(case_id)
            if not sets:
                return None
            set_id = sets[0]["set_id"]
        folder = self._samples_dir(case_id, set_id)
        meta = _read_json(folder / "samples.json")
        if not isinstance(meta, dict):
            return None
        meta = {**meta, "set_id": set_id}
        images, segs = [], []
        for i in range(len(meta.get("names") or [])):
            try:
                with np.load(folder / f"sample_{i:02d}.npz") as data:
                    images.append(data["image"].astype(np.float32))
                    segs.append(data["seg"])
            except OSError:
                return None
        return images, segs, meta
