"""The checkpoints/ folder: pointer, pruning, what to resume from, and path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from elfkit.errors import CheckpointError
from elfkit.pipeline.checkpoint import Checkpoint, CheckpointDir, LegacyCheckpointError, load_checkpoint, run_root_of


def _ck(step: int) -> Checkpoint:
    return Checkpoint(recipe={}, model={"w": torch.full((3,), float(step))}, step=step)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))


def test_keeps_the_newest_and_points_last_at_it(tmp_path: Path) -> None:
    ckdir = CheckpointDir(tmp_path / "checkpoints")
    assert ckdir.latest() is None
    for step in (2, 4, 6):
        assert ckdir.write(_ck(step), keep=2) == ckdir.step_file(6 if step == 6 else step)
    assert sorted(p.name for p in ckdir.path.iterdir()) == ["last", "step_4.safetensors", "step_6.safetensors"]
    assert not ckdir.last.samefile(ckdir.step_file(6)) and ckdir.last.stat().st_size < 100   # a pointer, no link
    found = ckdir.latest()
    assert found is not None and found.checkpoint.step == 6 and found.note is None


def test_newer_step_files_are_not_pruned(tmp_path: Path) -> None:
    ckdir = CheckpointDir(tmp_path)
    ckdir.write(_ck(10), keep=1)
    ckdir.write(_ck(3), keep=1)          # resumed from an older one
    assert [s for s, _ in ckdir.steps()] == [3, 10]
    assert load_checkpoint(ckdir.last).step == 3


def test_missing_pointer_resumes_from_the_newest_intact_file(tmp_path: Path) -> None:
    ckdir = CheckpointDir(tmp_path)
    for step in (1, 2, 3):
        ckdir.write(_ck(step), keep=3)
    ckdir.last.unlink()
    _flip(ckdir.step_file(3))
    found = ckdir.latest()
    assert found is not None and found.checkpoint.step == 2
    assert found.note is not None and "missing" in found.note and "step_2" in found.note


def test_damaged_pointed_file_names_the_newest_intact_one(tmp_path: Path) -> None:
    ckdir = CheckpointDir(tmp_path)
    for step in (1, 2):
        ckdir.write(_ck(step), keep=3)
    _flip(ckdir.step_file(2))
    with pytest.raises(CheckpointError, match=r"step_2.*corrupt[\s\S]*step_1\.safetensors \(step 1\)[\s\S]*"
                                              r"--resume-from"):
        ckdir.latest()
    found = ckdir.latest(resume_from=ckdir.step_file(1))
    assert found is not None and found.checkpoint.step == 1 and "--resume-from" in (found.note or "")
    _flip(ckdir.step_file(1))
    with pytest.raises(CheckpointError, match="No intact checkpoint is left"):
        load_checkpoint(ckdir.step_file(2))
    ckdir.last.unlink()
    with pytest.raises(CheckpointError, match="none of the step files"):
        ckdir.latest()


def test_old_format_folder_is_refused_with_the_converter(tmp_path: Path) -> None:
    torch.save({"format": 1}, tmp_path / "step_4.pt")
    torch.save({"format": 1}, tmp_path / "last.pt")
    with pytest.raises(LegacyCheckpointError, match="elfkit checkpoint convert .*step_4.pt"):
        CheckpointDir(tmp_path).latest()


def test_load_checkpoint_accepts_run_dirs_pointers_and_files(tmp_path: Path) -> None:
    ckdir = CheckpointDir(tmp_path / "run" / "checkpoints")
    ckdir.write(_ck(5), keep=2)
    for p in (tmp_path / "run", ckdir.path, ckdir.last, ckdir.step_file(5)):
        assert load_checkpoint(p).step == 5
        assert run_root_of(p) == (tmp_path / "run").resolve()
    with pytest.raises(CheckpointError, match="checkpoints are now step_N"):
        load_checkpoint(ckdir.path / "last.pt")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_checkpoint(tmp_path)


def test_clean_temp_removes_only_temp_files(tmp_path: Path) -> None:
    ckdir = CheckpointDir(tmp_path)
    ckdir.write(_ck(1), keep=1)
    (tmp_path / ".step_2.safetensors.abc.tmp").write_bytes(b"partial")
    assert [p.name for p in ckdir.clean_temp()] == [".step_2.safetensors.abc.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "step_1.safetensors"]
