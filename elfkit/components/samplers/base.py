"""What every sampler shares: the ``steps`` config field, the grid it runs on, the tensor chores.

Samplers are stateless (see :class:`elfkit.contracts.Sampler`): everything a run needs — the
denoiser, the start latent, the time grid, the noise scale and the generator — arrives as
arguments, so these helpers are pure functions. Plugins may import them.

The step count is declared once, as :attr:`SamplerConfig.steps`; :class:`ConfigSteps` exposes
it as the sampler's ``steps`` and :func:`sampling_grid` is the one place that turns it into
the grid the sampler is called with (a sampler then reads K back as ``len(grid) − 1``).
"""

from __future__ import annotations

from typing import Generic, TypeVar

import torch
from pydantic import Field
from torch import Tensor

from elfkit.config import ComponentConfig
from elfkit.contracts import Sampler, TimeDistribution
from elfkit.errors import ElfkitError
from elfkit.records import Prediction


class SamplerConfig(ComponentConfig):
    """Base config for samplers: the number of grid intervals."""

    steps: int = Field(default=32, gt=0)
    """Grid intervals (ELF: 32 for ELF-B on OWT, 64 for ELF-M/L and the conditional tasks)."""


C = TypeVar("C", bound=SamplerConfig)


class ConfigSteps(Generic[C]):
    """Base for samplers configured by a :class:`SamplerConfig` subclass ``C``: ``steps`` is the
    config's, and one denoiser call per interval is the default ``nfe`` (override it otherwise)."""

    cfg: C

    @property
    def steps(self) -> int:
        return self.cfg.steps

    def nfe(self, steps: int) -> int:
        return steps


def generator_device(generator: torch.Generator | None, device: torch.device | str) -> torch.device:
    """Where draws from ``generator`` happen: its own device, so a CPU generator gives the same
    numbers whatever device sampling runs on; without a generator, ``device``."""
    return generator.device if generator is not None else torch.device(device)


def sampling_grid(sampler: Sampler, time: TimeDistribution, generator: torch.Generator | None,
                  device: torch.device | str = "cpu") -> Tensor:
    """The (K+1,) grid ``sampler`` runs on: K = ``sampler.steps`` intervals drawn by ``time`` from
    ``generator`` (on the generator's device; ELF's logit-normal grid is random per batch),
    moved to ``device``."""
    return time.grid(sampler.steps, generator, generator_device(generator, device)).to(device)


def as_grid(grid: Tensor, z: Tensor) -> Tensor:
    """Check a time grid and return it on ``z``'s device and dtype.

    Time components draw grids in float32 on the generator's device; the sampler must
    keep the caller's precision and device, so the grid follows ``z``.

    Args:
        grid: (K+1,) times, increasing from 0 (noise) to 1 (data); K = number of intervals.
        z: (B, S, D) the latent the grid will be applied to.
    """
    if grid.dim() != 1 or grid.numel() < 2:
        raise ElfkitError(f"a sampling grid must be a 1-D tensor with at least 2 times (0 … 1), "
                          f"got shape {tuple(grid.shape)}")
    if z.dim() != 3:
        raise ElfkitError(f"samplers integrate latents of shape (B, S, D), got shape {tuple(z.shape)}")
    return grid.to(device=z.device, dtype=z.dtype)


def euler_step(z: Tensor, pred: Prediction, t: Tensor, t_next: Tensor) -> Tensor:
    """One Euler step ``z + (t_next − t)·v̂``, except that a step *into t = 1* returns x̂ exactly.

    The flow's limit at t = 1 is the model's x̂ (``z_1 = x``). Integrating the reported
    velocity instead is only equal to x̂ while ``1 − t > t_eps``: an x-predicting model's
    ``v̂ = (x̂ − z)/max(1 − t, 0.05)`` is clamped, so on a fine uniform grid (last interior
    time above 0.95) the last step would stop short of x̂ and decode noise. Every sampler's
    last interval should end here (or return ``pred.x`` itself).

    Args:
        z: (B, S, D) latent at ``t``; ``pred``: the denoiser's prediction at (z, t);
        t, t_next: 0-dim grid times (a tensor comparison, so no device sync).
    """
    return torch.where(t_next >= 1, pred.x, z + (t_next - t) * pred.v)


def batch_time(t: Tensor, z: Tensor) -> Tensor:
    """A scalar grid time as the (B,) tensor the denoiser expects."""
    return t.reshape(1).expand(z.shape[0]).contiguous()


def fresh_noise(z: Tensor, generator: torch.Generator | None) -> Tensor:
    """Unit Gaussian noise shaped like ``z`` (B, S, D), drawn only from ``generator``.

    Drawn on the generator's device and moved to ``z``'s, so a CPU generator gives the same
    numbers whatever device sampling runs on (pass a generator on z's device for speed).
    Without a generator the global RNG of z's device is used.
    """
    if generator is None:
        return torch.randn_like(z)
    noise = torch.randn(z.shape, generator=generator, device=generator.device, dtype=z.dtype)
    return noise.to(z.device)
