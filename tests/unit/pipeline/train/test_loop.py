"""fit(): checkpoints, logs, kill-and-resume, stop conditions, accumulation, frozen embedder."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from elfkit.pipeline.checkpoint import Checkpoint, load_checkpoint
from elfkit.pipeline.rundir import RunDir
from elfkit.pipeline.train.ema import EMA
from elfkit.pipeline.train.loop import fit
from elfkit.pipeline.train.monitor import read_log
from tests.fixtures.train_fixtures import MemoryData, make_components


def _steps_logged(run_dir) -> list[int]:
    return [r["step"] for r in read_log(run_dir) if "loss" in r]


def test_fit_writes_checkpoints_log_and_payload(tmp_path) -> None:
    comps, data = make_components(steps=10, checkpoint_every=4, keep_checkpoints=2, warmup_steps=4, lr=1e-3)
    result = fit(comps, data, RunDir(tmp_path))
    assert result.stopped == "completed" and result.steps == 10 and result.tokens_per_s > 0
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["last", "step_10.safetensors", "step_8.safetensors"]   # step_4 pruned, keep 2
    ck = load_checkpoint(result.checkpoint)
    for key in ("ema", "optimizer", "scheduler", "rng"):   # the full training state
        assert getattr(ck, key) is not None, key
    assert ck.step == 10 and ck.tokenizer == "random-table"
    assert ck.recipe["train"]["steps"] == 10
    assert set(ck.model) == set(comps.backbone.state_dict()) == set(ck.ema)
    assert ck.epoch == 1 and ck.batches_in_epoch == 2          # 64 rows / 8 = 8 batches per epoch
    assert _steps_logged(tmp_path) == list(range(1, 11))
    lrs = [r["lr"] for r in read_log(tmp_path) if "loss" in r]
    assert lrs[:5] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3])   # warmup then constant
    assert result.final_loss == pytest.approx(read_log(tmp_path)[-2]["loss"])


class _SigtermData(MemoryData):
    """Sends SIGTERM to this process when the k-th batch is fetched (a kill mid-run)."""

    kill_at = 7

    def batches(self, *args, **kwargs):
        for b in super().batches(*args, **kwargs):
            if self.fetched == self.kill_at:
                os.kill(os.getpid(), signal.SIGTERM)
            yield b


def test_kill_and_resume_matches_uninterrupted_run(tmp_path) -> None:
    kw = dict(steps=12, checkpoint_every=100, lr=2e-3, cond_len=2, label_drop_every=3)
    comps, data = make_components(**kw)
    full = fit(comps, data, RunDir(tmp_path / "full"))

    comps, data = make_components(**kw)
    data.__class__ = _SigtermData
    first = fit(comps, data, RunDir(tmp_path / "killed"))
    assert first.stopped == "interrupted" and first.steps == _SigtermData.kill_at
    assert Checkpoint.load(first.checkpoint).step == _SigtermData.kill_at   # saved on SIGTERM

    comps, data = make_components(**kw)
    second = fit(comps, data, RunDir(tmp_path / "killed"))
    assert second.stopped == "completed" and second.steps == 12
    events = [r for r in read_log(tmp_path / "killed") if "event" in r]
    assert [e["event"] for e in events] == ["start", "interrupted", "resume", "completed"]
    assert events[2]["step"] == _SigtermData.kill_at
    assert _steps_logged(tmp_path / "killed") == list(range(1, 13))
    a, b = Checkpoint.load(full.checkpoint), Checkpoint.load(second.checkpoint)
    for key in ("model", "ema"):
        for name, t in getattr(a, key).items():
            torch.testing.assert_close(getattr(b, key)[name], t, rtol=0, atol=1e-6, msg=f"{key}.{name}")
    assert second.final_loss == pytest.approx(full.final_loss, rel=1e-5)

    # a finished run is not redone
    comps, data = make_components(**kw)
    again = fit(comps, data, RunDir(tmp_path / "killed"))
    assert again.stopped == "already-done" and again.steps == 12 and data.fetched == 0


def test_time_limit_stops_with_a_checkpoint(tmp_path) -> None:
    comps, data = make_components(steps=50, max_minutes=1e-6, checkpoint_every=100)
    result = fit(comps, data, RunDir(tmp_path))
    assert result.stopped == "time-limit" and result.steps == 1
    assert Checkpoint.load(result.checkpoint).step == 1


def test_grad_accumulation_keeps_lr_rule_and_ema_on_real_steps(tmp_path, monkeypatch) -> None:
    calls = []
    original = EMA.update
    monkeypatch.setattr(EMA, "update", lambda self, m: (calls.append(1), original(self, m)))
    comps, data = make_components(steps=3, batch_size=8, grad_accum=2, blr=0.064, warmup_steps=0)
    fit(comps, data, RunDir(tmp_path))
    assert data.fetched == 6 and len(calls) == 3
    assert [r["lr"] for r in read_log(tmp_path) if "loss" in r] == pytest.approx([0.064 * 8 * 2 / 256] * 3)


def test_frozen_embedder_holds_no_grad_or_state(tmp_path) -> None:
    comps, data = make_components(steps=2)
    result = fit(comps, data, RunDir(tmp_path))
    table = comps.embedder.table.weight
    assert table.grad is None and not table.requires_grad
    ck = Checkpoint.load(result.checkpoint)
    n_backbone = sum(1 for p in comps.backbone.parameters() if p.requires_grad)
    assert len(ck.optimizer["state"]) == n_backbone
    assert not any(k.startswith("embedder") for k in ck.optimizer["state"])


def test_bf16_autocast_and_activation_checkpointing(tmp_path) -> None:
    comps, data = make_components(steps=2, precision="bf16", activation_checkpointing=True)
    result = fit(comps, data, RunDir(tmp_path))
    assert comps.backbone.use_checkpointing
    assert result.final_loss is not None and torch.isfinite(torch.tensor(result.final_loss))
