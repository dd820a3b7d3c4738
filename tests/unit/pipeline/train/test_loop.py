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
    ck = load_checkpoint(result.checkpoint)
    n_backbone = sum(1 for p in comps.backbone.parameters() if p.requires_grad)
    assert len(ck.optimizer["state"]) == n_backbone
    assert not any(k.startswith("embedder") for k in ck.optimizer["state"])


def test_bf16_autocast_and_activation_checkpointing(tmp_path) -> None:
    comps, data = make_components(steps=2, precision="bf16", activation_checkpointing=True)
    result = fit(comps, data, RunDir(tmp_path))
    assert comps.backbone.use_checkpointing
    assert result.final_loss is not None and torch.isfinite(torch.tensor(result.final_loss))


# ---------------------------------------------------------------------------- divergence guard
class _Faulty:
    """Wraps the objective: from its k-th call on (1-based, in ``calls``) the loss is scaled by
    ``factor`` (NaN: a non-finite step; 100: a loss far above its median)."""

    def __init__(self, inner, calls: set[int], factor: float) -> None:
        self.inner, self.calls, self.factor, self.n = inner, calls, factor, 0

    def __call__(self, *args, **kwargs):
        from elfkit.records import ObjectiveOutput
        out = self.inner(*args, **kwargs)
        self.n += 1
        if self.n not in self.calls:
            return out
        return ObjectiveOutput(loss=out.loss * self.factor, logs={**out.logs, "loss": out.logs["loss"] * self.factor})


def _faulty(calls: set[int], factor: float, **train):
    comps, data = make_components(**train)
    comps.objective = _Faulty(comps.objective, calls, factor)
    return comps, data


def _all_finite(ck: Checkpoint) -> bool:
    from elfkit.pipeline.train.guard import first_non_finite
    return first_non_finite({"model": ck.model, "ema": ck.ema, "optimizer": ck.optimizer}) is None


def test_a_non_finite_step_is_skipped_counted_and_logged(tmp_path) -> None:
    comps, data = _faulty({3}, float("nan"), steps=6, checkpoint_every=100, warmup_steps=0, lr=1e-3)
    result = fit(comps, data, RunDir(tmp_path))
    assert result.stopped == "completed" and result.steps == 6 and result.skipped_steps == 1
    ck = load_checkpoint(result.checkpoint)
    assert _all_finite(ck)
    assert ck.scheduler["last_epoch"] == 5                 # 6 steps, one without a scheduler update
    log = read_log(tmp_path)
    assert [r["step"] for r in log if r.get("event") == "skip"] == [3]
    assert next(r for r in log if r.get("event") == "skip")["loss"] == "nan"    # valid JSON
    assert [r["step"] for r in log if "event" not in r] == [1, 2, 4, 5, 6]   # step records: healthy steps
    assert log[-1]["event"] == "completed" and log[-1]["skipped_steps"] == 1 and log[-1]["steps_done"] == 6


def test_skipped_step_leaves_weights_ema_and_optimizer_untouched(tmp_path) -> None:
    comps, data = _faulty({3}, float("nan"), steps=3, checkpoint_every=2, warmup_steps=0, lr=1e-3)
    fit(comps, data, RunDir(tmp_path))
    ckpts = tmp_path / "checkpoints"
    two, three = Checkpoint.load(ckpts / "step_2.safetensors"), load_checkpoint(ckpts / "last")
    assert three.step == 3
    for key in ("model", "ema"):
        for name, t in getattr(two, key).items():
            assert torch.equal(getattr(three, key)[name], t), f"{key}.{name}"
    assert two.scheduler == three.scheduler


def test_consecutive_non_finite_steps_stop_as_diverged_keeping_the_last_good_checkpoint(tmp_path) -> None:
    comps, data = _faulty(set(range(5, 100)), float("nan"), steps=20, checkpoint_every=2, max_bad_steps=3)
    result = fit(comps, data, RunDir(tmp_path))
    assert result.stopped == "diverged" and result.steps == 7 and result.skipped_steps == 3
    good = tmp_path / "checkpoints" / "step_4.safetensors"
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["last", "step_2.safetensors", "step_4.safetensors"]
    assert load_checkpoint(tmp_path / "checkpoints" / "last").step == 4 and _all_finite(Checkpoint.load(good))
    assert result.message.startswith("training diverged at step 7: 3 consecutive steps with a non-finite loss")
    assert f"The last good checkpoint is {good} (step 4)" in result.message
    assert "Try: a lower train.lr" in result.message
    end = read_log(tmp_path)[-1]
    assert end["event"] == "diverged" and end["last_good_checkpoint"] == str(good) and "non-finite" in end["reason"]


def test_a_sustained_loss_spike_is_warned_then_stops_and_checkpoints_wait(tmp_path) -> None:
    comps, data = _faulty(set(range(4, 100)), 100.0, steps=20, checkpoint_every=2, max_spike_steps=4)
    result = fit(comps, data, RunDir(tmp_path))
    assert result.stopped == "diverged" and result.steps == 7 and result.spike_steps == 4
    assert "stayed above 5× its running median" in result.message and "since step 4" in result.message
    # step_6 fell inside the spike: not written, so step_2 is not pruned away by spiking weights
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last", "step_2.safetensors"]
    spikes = [r for r in read_log(tmp_path) if r.get("event") == "spike"]
    assert [r["step"] for r in spikes] == [4] and spikes[0]["loss"] > 4 * spikes[0]["median"]


def test_an_isolated_spike_only_warns(tmp_path) -> None:
    comps, data = _faulty({4}, 100.0, steps=8, checkpoint_every=4)
    result = fit(comps, data, RunDir(tmp_path))
    assert result.stopped == "completed" and result.spike_steps == 1
    assert (tmp_path / "checkpoints" / "step_4.safetensors").exists() is False   # deferred past the spike ...
    assert load_checkpoint(tmp_path / "checkpoints" / "last").step == 8   # ... and the run ends with one


def test_a_checkpoint_with_a_non_finite_weight_is_never_written(tmp_path) -> None:
    from elfkit.pipeline.train import distributed as dist_utils
    from elfkit.pipeline.train.loop import _Trainer
    comps, data = make_components(steps=4)
    trainer = _Trainer(comps, data, RunDir(tmp_path), dist_utils.setup(), None)
    with torch.no_grad():
        next(trainer.raw.parameters()).view(-1)[0] = float("inf")
    bad = trainer.save()
    assert isinstance(bad, str) and bad.startswith("model.")
    assert not (tmp_path / "checkpoints" / "last").exists()
