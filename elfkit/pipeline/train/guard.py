"""The divergence guard: decides, step by step, whether training is healthy.

Pure bookkeeping over Python floats (no torch), so the rules are unit-tested as functions:

* a step whose loss or global gradient norm is not finite is **skipped** (the loop makes no
  optimiser, EMA or scheduler update); ``max_bad_steps`` of them in a row stop the run;
* a finite loss more than ``spike_factor`` × the median of the last ``spike_window`` healthy
  losses is a **spike** (a warning). Spikes do not enter the window, so a loss that *stays*
  far above where it was keeps counting as spiking; ``max_spike_steps`` spiking steps in a row
  stop the run as diverged.

:func:`first_non_finite` finds a non-finite tensor in a checkpoint's nested state, so that
no such checkpoint is ever written.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from elfkit.errors import ElfkitError

Kind = Literal["ok", "skip", "spike", "stop"]


class TrainingDiverged(ElfkitError):
    """Training stopped because the loss or gradients diverged (exit code ≠ 0 in the CLI)."""


def is_finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def running_median(history: Iterable[float]) -> float | None:
    """Median of the values (None when there are none)."""
    values = list(history)
    return statistics.median(values) if values else None


def is_spike(loss: float, median: float | None, factor: float | None) -> bool:
    """``loss`` is more than ``factor`` × a positive ``median`` (never with no median or factor)."""
    return factor is not None and median is not None and median > 0 and loss > factor * median


@dataclass(frozen=True)
class Verdict:
    """What the loop does with a step: 'ok' (update), 'skip' (no update), 'spike' (update,
    warn) or 'stop' (end the run, ``reason`` says why)."""

    kind: Kind
    median: float | None = None
    reason: str = ""


@dataclass
class DivergenceGuard:
    """Stateful per-run guard; :meth:`observe` is called once per optimiser step."""

    max_bad_steps: int
    spike_factor: float | None
    spike_window: int
    max_spike_steps: int | None
    bad_steps: int = 0
    """Non-finite (skipped) steps in total."""
    spike_steps: int = 0
    """Spiking steps in total."""
    spike_episodes: list[dict[str, float]] = field(default_factory=list)
    """First step, loss and median of each run of consecutive spiking steps."""
    consecutive_bad: int = 0
    consecutive_spikes: int = 0
    _history: deque[float] = field(default_factory=deque)

    def observe(self, step: int, loss: float, grad_norm: float) -> Verdict:
        if not is_finite(loss, grad_norm):
            self.bad_steps += 1
            self.consecutive_bad += 1
            if self.consecutive_bad >= self.max_bad_steps:
                return Verdict("stop", reason=f"{self.consecutive_bad} consecutive steps with a non-finite loss or "
                                              f"gradient norm (loss {loss}, grad norm {grad_norm})")
            return Verdict("skip")
        self.consecutive_bad = 0
        median = running_median(self._history)
        if is_spike(loss, median, self.spike_factor):
            assert median is not None
            self.spike_steps += 1
            self.consecutive_spikes += 1
            if self.consecutive_spikes == 1:
                self.spike_episodes.append({"step": step, "loss": loss, "median": median})
            if self.max_spike_steps is not None and self.consecutive_spikes >= self.max_spike_steps:
                first = self.spike_episodes[-1]["step"]
                return Verdict("stop", median, reason=(
                    f"the loss has stayed above {self.spike_factor:g}× its running median ({median:.4g}) for "
                    f"{self.consecutive_spikes} steps since step {first:g} (now {loss:.4g})"))
            return Verdict("spike", median)
        self.consecutive_spikes = 0
        self._history.append(loss)
        while len(self._history) > self.spike_window:
            self._history.popleft()
        return Verdict("ok", median)

    @property
    def spiking(self) -> bool:
        """In a run of spiking or skipped steps (periodic checkpoints wait until it ends)."""
        return self.consecutive_spikes > 0 or self.consecutive_bad > 0


def first_non_finite(state: Any, prefix: str = "") -> str | None:
    """Dotted key of the first floating-point tensor (or float) in nested dicts/lists that holds
    a NaN or ±inf; None when every value is finite."""
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() or state.is_complex():
            return None if bool(torch.isfinite(state).all()) else prefix or "<tensor>"
        return None
    if isinstance(state, float):
        return None if math.isfinite(state) else prefix or "<value>"
    if isinstance(state, Mapping):
        items: Iterable[tuple[Any, Any]] = state.items()
    elif isinstance(state, list | tuple):
        items = enumerate(state)
    else:
        return None
    for key, value in items:
        found = first_non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def divergence_advice(lr: float, clip_grad: float | None, precision: str, warmup_steps: int) -> str:
    """What to try after a divergence, with the run's current values."""
    tips = [f"a lower train.lr / train.blr (the LR now is {lr:.3g})"]
    if precision != "fp32":
        tips.append("train.precision: fp32")
    tips.append("train.clip_grad: 1.0" if clip_grad is None else f"a smaller train.clip_grad (now {clip_grad:g})")
    tips.append(f"a longer train.warmup_steps (now {warmup_steps})")
    return "Try: " + "; ".join(tips) + "."
