"""Atomic writes and the storage errors a user sees instead of an OSError."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest

from elfkit.errors import StorageError
from elfkit.fileio import atomic_write_text, ensure_writable_dir, free_space


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


@pytest.mark.parametrize(("code", "message"), [
    (errno.ENOSPC, "disk full while writing .*a.txt: .* has .* free"),
    (errno.EROFS, "is on a read-only filesystem"),
    (errno.EACCES, "is not writable by this user"),
])
def test_write_errors_become_storage_errors_and_keep_the_old_file(tmp_path: Path, monkeypatch, code, message) -> None:
    atomic_write_text(tmp_path / "a.txt", "good")

    def fail(fd: int) -> None:
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(StorageError, match=message):
        atomic_write_text(tmp_path / "a.txt", "new")
    monkeypatch.undo()
    assert (tmp_path / "a.txt").read_text() == "good" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_other_os_errors_pass_through(tmp_path: Path, monkeypatch) -> None:
    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")
    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write_text(tmp_path / "a.txt", "x")


def test_unwritable_folder_is_refused_before_work(tmp_path: Path, monkeypatch) -> None:
    ensure_writable_dir(tmp_path / "new" / "run")
    assert (tmp_path / "new" / "run").is_dir() and not list((tmp_path / "new" / "run").iterdir())

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(StorageError, match="not writable"):
        ensure_writable_dir(tmp_path)


def test_free_space_reads_like_a_size(tmp_path: Path) -> None:
    assert free_space(tmp_path).endswith(" free")
