"""Which case folders on the server a shared (network) app may open: only inside configured data roots.

``BRATS_DATA_ROOTS`` lists the roots (separated by ``os.pathsep``, ``:`` on Linux); none by default. A folder is
allowed when its real path (symbolic links and ``..`` resolved) is one of the roots or inside one, and so is every
symbolic link in it, so neither a link nor ``..`` leads out. Every refusal is the same :class:`FolderRefused`
message, whether the folder is missing, unreadable or outside the roots: it tells nothing about the path. No streamlit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

DATA_ROOTS_ENV = "BRATS_DATA_ROOTS"
REFUSAL = ("This folder cannot be opened here: on this shared server only case folders inside its data folders "
           "can be loaded (ask the administrator, who sets them in BRATS_DATA_ROOTS), or upload the case instead.")


class FolderRefused(ValueError):
    """A folder outside the data roots, missing or unreadable (always the same message, :data:`REFUSAL`)."""

    def __init__(self) -> None:
        super().__init__(REFUSAL)


def data_roots(env: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """The configured data roots (real paths; entries that are not existing folders are left out)."""
    value = (os.environ if env is None else env).get(DATA_ROOTS_ENV, "")
    roots = []
    for entry in value.split(os.pathsep):
        if not entry.strip():
            continue
        try:
            root = Path(entry.strip()).expanduser().resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if root.is_dir() and root not in roots:
            roots.append(root)
    return tuple(roots)


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def allowed_folder(path: str | os.PathLike, roots: Iterable[Path]) -> Path:
    """The real path of ``path`` when it is a readable folder inside one of ``roots``.

    Args:
        path: what the user typed (absolute, or relative to the server's working folder).
        roots: real paths of the allowed roots (:func:`data_roots`).

    Raises:
        FolderRefused: missing, not a folder, unreadable, outside every root, or holding a symbolic link that
            leads outside them.
    """
    roots = tuple(roots)
    try:
        folder = Path(path).expanduser().resolve(strict=True)
        if not roots or not folder.is_dir() or not _inside(folder, roots):
            raise FolderRefused()
        for entry in folder.iterdir():  # case files are read from this one level (core.io.case.find_case_files)
            if entry.is_symlink() and not _inside(entry.resolve(), roots):
                raise FolderRefused()
    except (OSError, RuntimeError, ValueError) as exc:
        if isinstance(exc, FolderRefused):
            raise
        raise FolderRefused() from None
    return folder
