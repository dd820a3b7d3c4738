"""Atomic file writes, for every layer: write a temp file in the same folder, fsync, rename.

A crash mid-write leaves the previous file intact and readable (``os.replace`` is atomic on
POSIX and Windows when both paths are on one filesystem, hence the temp file beside the target).
Temp files are named ``.NAME.XXXX.tmp``; an interrupted write's leftover is removed by the next
run that holds the folder's lock. A full disk or an unwritable folder is a :class:`StorageError`
naming the folder (and its free space), never a raw ``OSError``.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from elfkit.errors import StorageError

_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def free_space(folder: Path) -> str:
    """Free space of ``folder``'s filesystem, for messages ("1.2 GB free"; "unknown" if unreadable)."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown free space"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if free < 1000 or unit == "TB":
            return f"{free:.0f} {unit} free" if unit == "B" else f"{free:.1f} {unit} free"
        free /= 1000
    return ""


def storage_error(exc: OSError, target: Path, folder: Path | None = None) -> StorageError | None:
    """The user-facing error for a failed write of ``target`` (in ``folder``, default its parent),
    or None if ``exc`` is not about storage."""
    folder = Path(target).parent if folder is None else Path(folder)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"disk full while writing {target}: {folder} has {free_space(folder)}. "
                            "Nothing written before was overwritten; free some space and rerun the same "
                            "command to continue.")
    if exc.errno in _UNWRITABLE:
        why = "is on a read-only filesystem" if exc.errno == errno.EROFS else "is not writable by this user"
        return StorageError(f"cannot write {target}: {folder} {why}. Pick another directory (--out) or fix its "
                            "permissions.")
    return None


def ensure_writable_dir(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be written there, before any work starts."""
    folder = Path(folder)
    probe = folder / ".write-probe.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except FileExistsError:
        raise StorageError(f"{folder} exists and is not a directory; pick another --out") from None
    except OSError as exc:
        err = storage_error(exc, probe)
        if err is None:
            raise StorageError(f"cannot use {folder} as a run directory: {exc.strerror or exc}") from None
        raise err from None


def atomic_write_bytes(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call ``write(fileobj)`` on a temp file next to ``path``, then rename over it."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as exc:
        err = storage_error(exc, path)
        if err is None:
            raise
        raise err from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (a power cut after it keeps the new file); best effort."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))
