"""Converting old pickle checkpoints: plain content converts; anything else is refused unread."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from elfkit.errors import CheckpointError
from elfkit.pipeline.checkpoint import Checkpoint
from elfkit.pipeline.checkpoint.legacy import convert
from elfkit.pipeline.train.state import set_rng_state


class Payload:
    """Unpickling this writes a marker file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _old(path: Path, **extra) -> None:
    torch.save({"format": 1, "recipe": {"name": "r"}, "model": {"w": torch.ones(2)}, "step": 4,
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                        "numpy": np.random.get_state()}, "capabilities": {"x": 1}, **extra}, path)


def test_old_checkpoint_converts_and_its_rng_state_restores(tmp_path: Path) -> None:
    _old(tmp_path / "last.pt")
    new = convert(tmp_path / "last.pt")
    assert new == tmp_path / "step_4.safetensors"
    ck = Checkpoint.load(new)
    assert ck.step == 4 and torch.equal(ck.model["w"], torch.ones(2))
    want = np.random.get_state()
    np.random.seed(1)
    set_rng_state(ck.rng, torch.device("cpu"))
    assert np.array_equal(np.random.get_state()[1], want[1])
    with pytest.raises(CheckpointError, match="exists"):
        convert(tmp_path / "last.pt")


def test_malicious_old_checkpoint_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    _old(tmp_path / "evil.pt", extra=Payload(marker))
    with pytest.raises(CheckpointError, match="refusing to convert .*Nothing was loaded"):
        convert(tmp_path / "evil.pt")
    assert not marker.exists() and not (tmp_path / "step_4.safetensors").exists()
