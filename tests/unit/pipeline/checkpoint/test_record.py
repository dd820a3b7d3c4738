"""One checkpoint file: round trip, checksum, no pickle, clear errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from elfkit.errors import CheckpointError
from elfkit.pipeline.checkpoint import Checkpoint, LegacyCheckpointError
from elfkit.pipeline.checkpoint.record import _parse


def _weights() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(4.0), "b": torch.ones(2, dtype=torch.bfloat16)}


def _full() -> Checkpoint:
    optim = {"state": {"w": {"step": torch.tensor(3.0), "exp_avg": torch.randn(4)}, 0: {"m": torch.zeros(1)}},
             "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.99), "params": ["w"], "nan": math.nan}]}
    rng = {"torch": torch.get_rng_state(), "python": (3, tuple(range(5)), None),
           "numpy": ("MT19937", [1, 2, 3], 2, 0, 0.0)}
    return Checkpoint(recipe={"name": "r", "train": {"steps": 9}}, model=_weights(), step=3, ema=_weights(),
                      optimizer=optim, scheduler={"last_epoch": 3, "_last_lr": [1e-3]}, epoch=1, loss=0.5,
                      rng=rng, tokenizer="tok")


def test_round_trip_keeps_every_value_and_type(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    want = _full()
    want.save(path)
    got = Checkpoint.load(path)
    assert (got.step, got.epoch, got.loss, got.tokenizer, got.recipe) == (3, 1, 0.5, "tok", want.recipe)
    assert got.model["b"].dtype == torch.bfloat16 and torch.equal(got.ema["w"], want.ema["w"])
    assert torch.equal(got.optimizer["state"]["w"]["exp_avg"], want.optimizer["state"]["w"]["exp_avg"])
    assert 0 in got.optimizer["state"]                                   # int keys stay ints
    group = got.optimizer["param_groups"][0]
    assert group["betas"] == (0.9, 0.99) and math.isnan(group["nan"])   # tuples and NaN survive
    assert got.rng["python"] == (3, (0, 1, 2, 3, 4), None) and torch.equal(got.rng["torch"], want.rng["torch"])
    assert got.embedder is None and got.scheduler == want.scheduler


def test_tied_tensors_are_saved(tmp_path: Path) -> None:
    w = torch.randn(3, 2)
    Checkpoint(recipe={}, model={"a": w, "b": w, "view": w[0]}, step=1).save(tmp_path / "t.safetensors")
    got = Checkpoint.load(tmp_path / "t.safetensors")
    assert torch.equal(got.model["b"], w) and torch.equal(got.model["view"], w[0])


def test_non_plain_values_are_refused_on_save(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"rng\.obj"):
        Checkpoint(recipe={}, model={}, step=1, rng={"obj": object()}).save(tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())


def _rewrite_meta(path: Path, change) -> None:
    """Edit a checkpoint's metadata in place, keeping the file valid safetensors (a crafted file)."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    meta = json.loads(header["__metadata__"]["elfkit"])
    change(meta)
    header["__metadata__"]["elfkit"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + size:])


def test_flipped_bytes_fail_the_checksum(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    _full().save(path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF                                   # a weight byte
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt: its sha256 checksum does not match"):
        Checkpoint.load(path)
    _full().save(path)
    _rewrite_meta(path, lambda m: m["fields"].update(step=4))   # metadata edited, checksum not
    with pytest.raises(CheckpointError, match="checksum"):
        Checkpoint.load(path)


def test_truncated_empty_and_foreign_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    _full().save(path)
    data = path.read_bytes()
    for name, content in (("empty", b""), ("half", data[: len(data) // 2]), ("text", b"not a checkpoint"),
                          ("header", data[:40])):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=f"cannot read checkpoint .*{name}"):
            Checkpoint.load(tmp_path / name)
    with pytest.raises(CheckpointError, match="not found"):
        Checkpoint.load(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="is a directory"):
        Checkpoint.load(tmp_path)


def test_crafted_metadata_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    _full().save(path)
    _rewrite_meta(path, lambda m: m.update(format=99))
    with pytest.raises(CheckpointError, match="format 99"):
        Checkpoint.load(path)
    _full().save(path)
    _rewrite_meta(path, lambda m: m.pop("sha256"))
    with pytest.raises(CheckpointError, match="no checksum"):
        Checkpoint.load(path)


def test_wrong_types_with_a_valid_checksum_are_refused(tmp_path: Path) -> None:
    """A hand-made file can carry a correct checksum; bad types still fail cleanly."""
    path = tmp_path / "c.safetensors"
    ck = Checkpoint(recipe={}, model={}, step=1)
    object.__setattr__(ck, "model", {"w": "not a tensor"})
    ck.save(path)
    with pytest.raises(CheckpointError, match="'model' must map names to tensors"):
        Checkpoint.load(path)


def test_pickles_are_refused_without_being_read(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"format": 1, "recipe": {}, "model": {}, "step": 1}, path)
    with pytest.raises(LegacyCheckpointError, match="elfkit checkpoint convert"):
        Checkpoint.load(path)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(LegacyCheckpointError):
        Checkpoint.load(raw)


def test_parse_bounds_the_header(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="header of"):
        _parse((10**12).to_bytes(8, "little") + b"{}", "x")
