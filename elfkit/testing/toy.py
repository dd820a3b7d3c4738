"""The closed-form Gaussian toy: data x ~ N(μ, σ²) independently per dimension.

On the scaled linear path ``z_t = t·x + (1−t)·s·ε₀`` the posterior mean is exact::

    x̂(z, t) = μ + k(t)·(z − t·μ),   k(t) = t·σ² / (t²σ² + (1−t)²s²)

so a sampler can be run against the *perfect* x-prediction model and its end distribution
compared with N(μ, σ²). The toy's path clamps 1−t at a tiny ``t_eps`` so that a fine
uniform grid is not distorted by ELF's 0.05 clamp (which real models need, the toy not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from elfkit.contracts import Denoiser
from elfkit.core import flow
from elfkit.core.flow import FlowPath
from elfkit.records import Prediction


@dataclass(frozen=True)
class GaussianToy:
    """Per-dimension Gaussian data; ``dim = len(mean)``."""

    mean: tuple[float, ...] = (-1.0, 0.5, 2.0)
    std: tuple[float, ...] = (0.5, 1.0, 0.25)
    noise_scale: float = 2.0
    t_eps: float = 1e-4

    @property
    def dim(self) -> int:
        return len(self.mean)

    @property
    def path(self) -> FlowPath:
        return FlowPath(noise_scale=self.noise_scale, t_eps=self.t_eps, t_min=self.t_eps)

    def _params(self, like: Tensor) -> tuple[Tensor, Tensor]:
        mu = torch.tensor(self.mean, dtype=like.dtype, device=like.device)
        var = torch.tensor(self.std, dtype=like.dtype, device=like.device) ** 2
        return mu, var

    def exact_flow_end(self, z0: Tensor) -> Tensor:
        """Where the probability-flow ODE carries z₀ at t = 1: ``μ + (σ/s)·z₀`` (the flow of a
        Gaussian is the monotone affine map between the two Gaussians)."""
        mu, var = self._params(z0)
        return mu + var.sqrt() / self.noise_scale * z0

    def x_hat(self, z: Tensor, t: Tensor) -> Tensor:
        """Exact E[x | z_t = z]; z: (B, S, D), t: (B,)."""
        mu, var = self._params(z)
        tt = flow.expand_time(t, z)
        k = tt * var / (tt ** 2 * var + (1 - tt) ** 2 * self.noise_scale ** 2)
        return mu + k * (z - tt * mu)

    def predict(self, z: Tensor, t: Tensor) -> Prediction:
        """The exact model as an x-predicting network would report it."""
        x = self.x_hat(z, t)
        return Prediction(x=x, eps=flow.x_to_eps(x, z, t, self.t_eps), v=flow.x_to_v(x, z, t, self.t_eps))

    def denoiser(self) -> Denoiser:
        """The perfect denoiser (it ignores self-conditioning: the exact x̂ needs none)."""
        def denoise(z: Tensor, t: Tensor, self_cond: Tensor | None = None) -> Prediction:
            return self.predict(z, t)
        return denoise

    def prior(self, shape: tuple[int, int], generator: torch.Generator | None = None,
              dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Tensor:
        """z₀ = s·N(0, I) of shape (B, S, dim)."""
        return self.path.initial_noise((*shape, self.dim), generator, device=device, dtype=dtype)

    def data(self, shape: tuple[int, int], generator: torch.Generator | None = None,
             dtype: torch.dtype = torch.float64) -> Tensor:
        """Draws from the target N(μ, σ²), (B, S, dim)."""
        mu, var = self._params(torch.empty((), dtype=dtype))
        return mu + var.sqrt() * torch.randn((*shape, self.dim), generator=generator, dtype=dtype)

    def moment_errors(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Per-dimension ``(|mean − μ|/σ, std/σ − 1)`` of samples z (…, dim)."""
        mu, var = self._params(z)
        flat = z.reshape(-1, self.dim).double()
        sd = var.double().sqrt()
        return (flat.mean(0) - mu.double()).abs() / sd, flat.std(0) / sd - 1
