"""The run directory: one writer at a time, stale locks, temp-file cleanup, log trimming."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from elfkit.errors import RunDirBusyError, StorageError
from elfkit.pipeline.rundir import RunDir


def test_lock_is_exclusive_reentrant_and_released(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    with run.lock("run"):
        holder = json.loads(run.lock_file.read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "run"
        with run.lock("train"):          # the same process: run → train → sample
            assert run.lock_file.exists()
        assert run.lock_file.exists()
    assert not run.lock_file.exists()


def test_a_live_holder_is_refused_and_a_dead_ones_lock_taken_over(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.lock_file.write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename, "command": "train",
                                             "since": "then"}))
        with pytest.raises(RunDirBusyError, match=f"in use by another elfkit process \\(pid {sleeper.pid}"):
            with run.lock("train"):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with run.lock("train"):              # its process is gone: stale
        assert json.loads(run.lock_file.read_text())["pid"] == os.getpid()


def test_a_lock_from_another_host_is_refused(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.lock_file.write_text(json.dumps({"pid": 1, "host": "elsewhere", "command": "run", "since": "then"}))
    with pytest.raises(RunDirBusyError, match=f"on elsewhere.*delete {run.lock_file}"):
        with run.lock("run"):
            pass


def test_taking_the_lock_removes_temp_files(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    for p in (tmp_path / ".samples.jsonl.x.tmp", tmp_path / "checkpoints" / ".step_3.safetensors.y.tmp"):
        p.write_bytes(b"partial")
    keep = tmp_path / "notes.tmp"      # not ours: no leading dot
    keep.write_text("mine")
    with run.lock("run"):
        pass
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["notes.tmp"]


def test_out_pointing_at_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="exists and is not a directory"):
        with RunDir(tmp_path / "file").lock("run"):
            pass


def test_trim_train_log_drops_steps_past_the_resumed_one(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    rows = [{"event": "start", "step": 0}, {"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9},
            {"step": 3, "loss": 0.8}]
    run.train_log.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')   # cut short
    run.trim_train_log(2)
    assert [json.loads(x) for x in run.train_log.read_text().splitlines()] == rows[:3]
    before = run.train_log.stat().st_mtime_ns
    run.trim_train_log(5)                # nothing to drop: untouched
    assert run.train_log.stat().st_mtime_ns == before


def test_a_full_disk_inside_the_lock_is_a_storage_error(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    with pytest.raises(StorageError, match=f"disk full while writing {run.train_log}: {tmp_path} has"):
        with run.lock("train"):
            raise OSError(errno.ENOSPC, "No space left on device", str(run.train_log))
    with pytest.raises(OSError, match="I/O"):
        with run.lock("train"):
            raise OSError(errno.EIO, "I/O error")
    assert not run.lock_file.exists()
