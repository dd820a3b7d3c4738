"""elfkit-heun: Heun's second-order sampler as an elfkit plugin (the worked example).

Heun (the explicit trapezoid rule, EDM's "2nd order" sampler) takes an Euler predictor
step, evaluates the velocity again at its end, and averages the two slopes::

    d₁ = v̂(z, t_i)                       (self-conditioned on the previous x̂)
    z̃  = z + h·d₁                        h = t_{i+1} − t_i
    d₂ = v̂(z̃, t_{i+1})                  (self-conditioned on d₁'s x̂)
    z  ← z + h·(d₁ + d₂)/2

**The last interval is a plain Euler step.** Its corrector would evaluate the model at
t = 1, where an x-predicting model's velocity ``(x̂ − z)/max(1 − t, t_eps)`` is clamped
(ELF: t_eps = 0.05, so the slope would be off by the clamp, not 1−t = 0) and where the
network was never trained to denoise. The Euler step from t_{K−1} instead returns the
model's x̂ exactly (``euler_step``) — the best estimate there is (EDM ends the same way, at σ = 0).

So ``nfe(steps) = 2·steps − 1``. The corrector at t_{i+1} is still inside the clamp zone when
t_{i+1} > 1 − t_eps (fine uniform grids); ELF's logit-normal grid stops near t ≈ 0.55.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from elfkit import hookimpl
from elfkit.components.samplers.base import ConfigSteps, SamplerConfig, as_grid, batch_time, euler_step
from elfkit.contracts import Denoiser
from elfkit.records import SamplerOutput

if TYPE_CHECKING:
    from elfkit.registry import ComponentRegistrar

__version__ = "0.1.0"


class HeunConfig(SamplerConfig):
    """Heun has no knobs besides ``steps`` (grid intervals; 2·steps − 1 denoiser calls)."""


class HeunSampler(ConfigSteps[HeunConfig]):
    """Second-order, deterministic; Euler on the last interval. Holds only its config
    (``steps`` comes from it through :class:`ConfigSteps`)."""

    order = 2

    def __init__(self, cfg: HeunConfig) -> None:
        self.cfg = cfg

    def nfe(self, steps: int) -> int:
        return 2 * steps - 1

    def __call__(self, denoiser: Denoiser, z: Tensor, grid: Tensor, *, noise_scale: float,
                 generator: torch.Generator | None = None) -> SamplerOutput:
        # z: (B, S, D) at grid[0]; grid: (K+1,). Deterministic: noise_scale/generator unused.
        grid = as_grid(grid, z)
        n = grid.numel() - 1
        x_hat: Tensor | None = None
        for i in range(n - 1):
            t, t_next = grid[i], grid[i + 1]
            h = t_next - t
            first = denoiser(z, batch_time(t, z), x_hat)
            z_pred = z + h * first.v                                  # Euler predictor
            second = denoiser(z_pred, batch_time(t_next, z), first.x)
            z = z + h * 0.5 * (first.v + second.v)                    # trapezoid corrector
            x_hat = second.x
        t, t_next = grid[n - 1], grid[n]                              # last interval: Euler
        last = denoiser(z, batch_time(t, z), x_hat)
        z = euler_step(z, last, t, t_next)                            # x̂ exactly into t = 1
        return SamplerOutput(z=z, x_hat=last.x, nfe=2 * n - 1)


@hookimpl
def elfkit_register_components(registry: ComponentRegistrar) -> None:
    registry.add("sampler", "heun", HeunSampler, HeunConfig)
