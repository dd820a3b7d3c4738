"""Euler ODE sampler: ``z ← z + (t_{i+1} − t_i)·v̂(z, t_i)`` over the caller's time grid.

With an x-predicting model the last interval lands exactly on x̂: ``z + (1−t)(x̂−z)/(1−t) = x̂``
(as long as the last interior time is below ``1 − t_eps``; ELF's random grid stops near 0.55).
"""

from __future__ import annotations

import torch
from torch import Tensor

from elfkit.components.samplers.base import ConfigSteps, SamplerConfig, as_grid, batch_time
from elfkit.contracts import Denoiser
from elfkit.records import SamplerOutput


class EulerConfig(SamplerConfig):
    """Euler has no knobs besides ``steps``; unknown recipe keys are still errors."""


class EulerSampler(ConfigSteps[EulerConfig]):
    """First-order and deterministic; one denoiser call per interval. Holds only its config."""

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
            z = z + (t_next - t) * pred.v                  # (B, S, D)
            x_hat = pred.x
        assert x_hat is not None
        return SamplerOutput(z=z, x_hat=x_hat, nfe=grid.numel() - 1)
