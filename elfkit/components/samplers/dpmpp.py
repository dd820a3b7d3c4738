"""DPM-Solver++(2M) for the flow's x-prediction (Lu et al. 2022), with an optional η > 0 SDE variant.

On the path ``z_t = α·x + σ·ε₀`` (``α = t``, ``σ = s(1−t)``, see :mod:`elfkit.core.flow`) the
data-prediction exponential integrator steps in λ = log(α/σ). With ``h = λ_{i+1} − λ_i`` and
``e = exp(−h) = t_i(1−t_{i+1}) / ((1−t_i)·t_{i+1})``::

    D   = x̂_i + (x̂_i − x̂_{i−1})·h_i / (2·h_{i−1})          (first order, D = x̂_i, without a previous x̂)
    z  ← (σ_{i+1}/σ_i)·e^η·z + α_{i+1}(1 − e^{1+η})·D + σ_{i+1}·sqrt(1 − e^{2η})·ε₀

η = 0 is the deterministic DPM-Solver++(2M); η > 0 is the "2M SDE" variant (k-diffusion's
``dpmpp_2m_sde``), which injects fresh noise from the generator. Its first-order part is
exactly the Euler step of the linear flow (DDIM), so the method differs from ``euler`` only by
the extrapolation of x̂.

Edge cases, by construction rather than by luck:

- the step into t = 1 returns x̂ (the flow's limit; λ = +∞ there);
- from t = 0, λ = −∞: h is infinite and the next step's extrapolation weight is 0 (first order);
- a tie ``t_{i+1} = t_i`` leaves z unchanged (it still costs its denoiser call) and does not
  replace the previous x̂ that later steps extrapolate from.

Self-conditioning gets the previous call's x̂, never the extrapolated D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pydantic import Field
from torch import Tensor

from elfkit.components.samplers.base import ConfigSteps, SamplerConfig, as_grid, batch_time, euler_step, fresh_noise
from elfkit.contracts import Denoiser
from elfkit.core import flow
from elfkit.records import SamplerOutput


class DpmppConfig(SamplerConfig):
    eta: float = Field(default=0.0, ge=0)
    """Stochasticity: 0 = deterministic DPM-Solver++(2M); η > 0 adds fresh noise each step
    (k-diffusion's 2M SDE uses 1)."""


@dataclass(frozen=True)
class Step:
    """One interval's update ``z ← a·z + b·D + noise·ε₀`` with ``D = x̂ + w·(x̂ − x̂_prev)``."""

    a: float
    b: float
    noise: float
    w: float
    moves: bool
    """False for a tie (z unchanged; the previous x̂ stays the extrapolation base)."""


def plan(grid: list[float], noise_scale: float, eta: float) -> list[Step]:
    """The coefficients of every interval but the last (which returns x̂), from the grid alone.

    Computed once per run in float64 on the host, so the loop needs no device syncs.
    """
    ts = torch.tensor(grid, dtype=torch.float64)
    lam = flow.half_log_snr(ts, noise_scale).tolist()                     # −inf at 0, +inf at 1
    steps: list[Step] = []
    h_prev = math.inf                                                   # no usable previous step yet
    for i in range(len(grid) - 2):
        t, t_next = grid[i], grid[i + 1]
        if not t_next > t:
            steps.append(Step(a=1.0, b=0.0, noise=0.0, w=0.0, moves=False))
            continue
        h = lam[i + 1] - lam[i]                                         # > 0, inf when t = 0
        e = t * (1 - t_next) / ((1 - t) * t_next)                       # exp(−h), 0 when t = 0
        ratio = (1 - t_next) / (1 - t)                                  # σ_{i+1}/σ_i
        w = h / (2 * h_prev) if math.isfinite(h_prev) and h_prev > 0 else 0.0
        steps.append(Step(a=ratio * e ** eta, b=t_next * (1 - e ** (1 + eta)),
                          noise=noise_scale * (1 - t_next) * math.sqrt(max(1 - e ** (2 * eta), 0.0)),
                          w=w, moves=True))
        h_prev = h
    return steps


class DpmppSampler(ConfigSteps[DpmppConfig]):
    """DPM-Solver++(2M): second order and deterministic at η = 0; one denoiser call per interval.
    Holds only its config."""

    def __init__(self, cfg: DpmppConfig) -> None:
        self.cfg = cfg

    @property
    def order(self) -> int | None:
        """2 for the deterministic solver; the η > 0 variant is stochastic (no ODE order)."""
        return 2 if self.cfg.eta == 0 else None

    def __call__(self, denoiser: Denoiser, z: Tensor, grid: Tensor, *, noise_scale: float,
                 generator: torch.Generator | None = None) -> SamplerOutput:
        # z: (B, S, D) at grid[0]; grid: (K+1,)
        grid = as_grid(grid, z)
        n = grid.numel() - 1
        steps = plan(grid.detach().to("cpu", torch.float64).tolist(), noise_scale, self.cfg.eta)
        x_hat: Tensor | None = None          # the previous call's x̂ (self-conditioning)
        x_base: Tensor | None = None         # the x̂ of the previous *moving* step (extrapolation)
        for i, step in enumerate(steps):
            pred = denoiser(z, batch_time(grid[i], z), x_hat)
            x_hat = pred.x
            if not step.moves:
                continue
            d = x_hat if x_base is None or step.w == 0 else x_hat + step.w * (x_hat - x_base)
            z_next = step.a * z + step.b * d                              # (B, S, D)
            if step.noise > 0:
                z_next = z_next + step.noise * fresh_noise(z, generator)
            z, x_base = z_next, x_hat
        pred = denoiser(z, batch_time(grid[n - 1], z), x_hat)             # last interval: into t = 1
        return SamplerOutput(z=euler_step(z, pred, grid[n - 1], grid[n]), x_hat=pred.x, nfe=n)
