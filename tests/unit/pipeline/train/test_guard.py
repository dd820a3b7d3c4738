"""The divergence guard's rules as functions: non-finite steps, spikes, sustained divergence."""

from __future__ import annotations

import math

import pytest
import torch

from elfkit.pipeline.train.guard import (
    DivergenceGuard,
    divergence_advice,
    first_non_finite,
    is_finite,
    is_spike,
    running_median,
)

NAN, INF = math.nan, math.inf


def guard(max_bad: int = 3, factor: float | None = 4.0, window: int = 5, max_spikes: int | None = 3) -> DivergenceGuard:
    return DivergenceGuard(max_bad, factor, window, max_spikes)


def kinds(g: DivergenceGuard, losses: list[float], norm: float = 1.0) -> list[str]:
    return [g.observe(i + 1, loss, norm).kind for i, loss in enumerate(losses)]


def test_median_and_spike_closed_form() -> None:
    assert running_median([]) is None
    assert running_median([3.0, 1.0, 2.0]) == 2.0
    assert running_median([1.0, 2.0, 3.0, 10.0]) == 2.5
    assert is_spike(8.1, 2.0, 4.0) and not is_spike(8.0, 2.0, 4.0)      # strictly above factor × median
    assert not is_spike(100.0, None, 4.0)                               # no history yet
    assert not is_spike(100.0, 2.0, None)                               # detection off
    assert not is_spike(5.0, -1.0, 4.0) and not is_spike(5.0, 0.0, 4.0)  # no scale to compare with
    assert is_finite(1.0, -2.0) and not is_finite(1.0, NAN) and not is_finite(INF)


def test_non_finite_steps_are_skipped_then_stop_after_max_bad_in_a_row() -> None:
    g = guard(max_bad=3)
    assert kinds(g, [2.0, NAN, INF]) == ["ok", "skip", "skip"]
    v = g.observe(4, NAN, 1.0)
    assert v.kind == "stop" and "3 consecutive steps" in v.reason
    assert g.bad_steps == 3


def test_a_finite_step_resets_the_bad_streak_and_grad_norm_counts_too() -> None:
    g = guard(max_bad=2)
    assert kinds(g, [2.0, NAN, 2.0, NAN, 2.0]) == ["ok", "skip", "ok", "skip", "ok"]
    assert g.bad_steps == 2 and g.consecutive_bad == 0
    assert g.observe(6, 2.0, NAN).kind == "skip"                     # finite loss, non-finite gradient norm
    assert g.observe(7, 2.0, INF).kind == "stop"


def test_isolated_spike_warns_and_does_not_move_the_median() -> None:
    g = guard(window=5, max_spikes=3)
    assert kinds(g, [2.0, 2.0, 2.0, 9.0, 2.0, 2.0]) == ["ok", "ok", "ok", "spike", "ok", "ok"]
    assert g.spike_steps == 1 and g.spike_episodes == [{"step": 4, "loss": 9.0, "median": 2.0}]
    assert not g.spiking


def test_loss_staying_far_above_its_median_stops_as_diverged() -> None:
    g = guard(factor=4.0, max_spikes=3)
    assert kinds(g, [2.0, 1.5, 50.0, 60.0]) == ["ok", "ok", "spike", "spike"]
    assert g.spiking
    v = g.observe(5, 70.0, 1.0)
    assert v.kind == "stop" and v.median == pytest.approx(1.75)
    assert "since step 3" in v.reason and "4×" in v.reason


def test_spikes_only_warn_without_max_spike_steps_and_detection_can_be_off() -> None:
    assert kinds(guard(max_spikes=None), [1.0] + [100.0] * 10) == ["ok"] + ["spike"] * 10
    assert kinds(guard(factor=None), [1.0] + [100.0] * 10) == ["ok"] * 11


def test_window_keeps_the_last_healthy_losses() -> None:
    short, long = guard(window=2, max_spikes=None), guard(window=4, max_spikes=None)
    assert kinds(short, [10.0, 10.0, 3.0, 3.0]) == ["ok"] * 4
    kinds(long, [10.0, 10.0, 3.0, 3.0])
    assert short.observe(5, 13.0, 1.0).kind == "spike"    # median of [3, 3]: the 10s have left the window
    assert long.observe(5, 13.0, 1.0).kind == "ok"        # median of [10, 10, 3, 3] = 6.5


def test_first_non_finite_names_the_key() -> None:
    state = {"model": {"w": torch.ones(2), "step": torch.tensor([1, 2])},
             "optimizer": {"state": {0: {"m": torch.tensor([0.0, INF])}}, "groups": [{"lr": 0.1}]}}
    assert first_non_finite(state) == "optimizer.state.0.m"
    finite = {"model": {"w": torch.ones(2)}, "loss": 1.0, "rng": torch.zeros(3, dtype=torch.uint8)}
    assert first_non_finite(finite) is None
    assert first_non_finite({"groups": [{"lr": NAN}]}) == "groups.0.lr"
    assert first_non_finite({"ema": None}) is None


def test_advice_names_the_settings_to_change() -> None:
    text = divergence_advice(10.0, None, "bf16", 0)
    assert "train.lr" in text and "(the LR now is 10)" in text
    assert "train.precision: fp32" in text and "train.clip_grad: 1.0" in text and "warmup_steps (now 0)" in text
    assert "precision" not in divergence_advice(1e-3, 1.0, "fp32", 100)
