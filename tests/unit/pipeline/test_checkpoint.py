"""Checkpoint files: the typed record, older files, clear errors, and the checkpoints/ layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from elfkit.errors import CheckpointError
from elfkit.pipeline.checkpoint import Checkpoint, CheckpointDir


def _weights() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(4.0)}


def test_round_trip_and_optional_embedder_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    Checkpoint(recipe={"name": "r"}, model=_weights(), step=3, epoch=1, loss=0.5, tokenizer="tok").save(path)
    on_disk = torch.load(path, weights_only=False)
    assert on_disk["format"] == 1 and "embedder" not in on_disk and "embedder_ema" not in on_disk
    ck = Checkpoint.load(path)
    assert (ck.step, ck.epoch, ck.loss, ck.tokenizer, ck.recipe) == (3, 1, 0.5, "tok", {"name": "r"})
    assert torch.equal(ck.model["w"], torch.arange(4.0)) and ck.ema is None and ck.embedder is None

    Checkpoint(recipe={}, model=_weights(), step=1, embedder=_weights(), embedder_ema=_weights()).save(path)
    assert torch.equal(Checkpoint.load(path).embedder_ema["w"], torch.arange(4.0))


def test_reads_files_with_keys_it_no_longer_writes(tmp_path: Path) -> None:
    """Older checkpoints also carry ``capabilities`` and ``target``: they load, the extras are ignored."""
    path = tmp_path / "old.pt"
    torch.save({"format": 1, "recipe": {}, "model": _weights(), "capabilities": {"decoder_head": True},
                "step": 7, "ema": _weights(), "world_size": 2, "micro_batch": 4, "target": "x",
                "tokenizer": None}, path)
    ck = Checkpoint.load(path)
    assert ck.step == 7 and ck.world_size == 2 and ck.micro_batch == 4 and ck.tokenizer is None
    assert not hasattr(ck, "capabilities") and not hasattr(ck, "target")


def test_bad_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory"):
        Checkpoint.load(tmp_path)
    torch.save({"format": 1, "recipe": {}, "step": 1}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"incomplete: missing \['model'\]"):
        Checkpoint.load(tmp_path / "partial.pt")
    torch.save({"format": 99, "recipe": {}, "model": {}, "step": 1}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format 99"):
        Checkpoint.load(tmp_path / "future.pt")


def test_checkpoint_dir_keeps_the_newest_and_points_last_at_it(tmp_path: Path) -> None:
    ckdir = CheckpointDir(tmp_path / "checkpoints")
    assert ckdir.read_last() is None
    for step in (2, 4, 6):
        assert ckdir.write(Checkpoint(recipe={}, model=_weights(), step=step), keep=2) == ckdir.last
    assert sorted(p.name for p in ckdir.path.iterdir()) == ["last.pt", "step_4.pt", "step_6.pt"]
    assert ckdir.read_last().step == 6 and ckdir.last.read_bytes() == ckdir.step_file(6).read_bytes()
