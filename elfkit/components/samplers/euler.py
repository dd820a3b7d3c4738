"""Euler ODE sampler: ``z ← z + (t_{i+1} − t_i)·v̂(z, t_i)`` over the caller's time grid.

The step into t = 1 returns x̂ exactly (:func:`~elfkit.components.samplers.base.euler_step`),
for any grid: integrating the clamped velocity ``(x̂ − z)/max(1 − t, 0.05)`` would stop short of
x̂ when the last interval starts above 0.95 (fine uniform grids). On ELF's logit-normal grid,
which stops near 0.55, both are the same number.
"""

from __future__ import annotations

import torch
from torch import Tensor

from elfkit.components.samplers.base import ConfigSteps, SamplerConfig, as_grid, batch_time, euler_step
from elfkit.contracts import Denoiser
from elfkit.records import SamplerOutput


class EulerConfig(SamplerConfig):
    """Euler has no knobs besides ``steps``; unknown recipe keys are still errors."""


class EulerSampler(ConfigSteps[EulerConfig]):
    """First-order and deterministic; one denoiser call per interval. Holds only its config."""

    order = 1

    def __init__(self, cfg: EulerConfig) -> None:
        self.cfg = cfg

    def __call__(self, denoiser: Denoiser, z: Tensor, grid: Tensor, *, noise_scale: float,
                 generator: torch.Generator | None = None) -> SamplerOutput:
        # z: (B, S, D) at grid[0]; grid: (K+1,). noise_scale and generator are part of the
        # sampler contract; a deterministic ODE step uses neither.
        grid = as_grid(grid, z)
        x_hat: Tensor | None = None
        for i in range(grid.numel() - 1):
            t, t_next = grid[i], grid[i + 1]
            pred = denoiser(z, batch_time(t, z), x_hat)   # self-conditioning on the previous x̂
            z = euler_step(z, pred, t, t_next)             # (B, S, D); x̂ on the step into t = 1
            x_hat = pred.x
        assert x_hat is not None
        return SamplerOutput(z=z, x_hat=x_hat, nfe=grid.numel() - 1)
