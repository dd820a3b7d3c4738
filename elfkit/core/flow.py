"""The linear flow path and the conversions between x-, ε- and v-predictions.

Convention (ELF, flow_matching): ``z_t = t·x + (1−t)·ε`` with ``ε = s·ε₀``,
``ε₀ ~ N(0, I)`` and noise scale ``s``; t=0 is pure noise, t=1 is data, and the
velocity is ``v = dz/dt = x − ε``. Every conversion here works on the *scaled* noise
ε; a network that outputs unit-variance noise is rescaled by its target component.

The path's constants are declared once, here: :data:`NOISE_SCALE`, :data:`T_EPS` and
:data:`T_MIN` are ELF's values and the defaults of :class:`FlowPath`, the recipe's ``path``
section and export.

In the notation of diffusion samplers the path is ``z_t = α(t)·x + σ(t)·ε₀`` with
``α(t) = t`` and ``σ(t) = s·(1−t)``; :func:`alpha`, :func:`sigma`, :func:`half_log_snr` (λ),
:func:`log_snr` and :func:`ve_sigma` (k-diffusion's σ) and their inverses are here, so
samplers written for another parameterisation can be ported without re-deriving them.

Two clamps keep the conversions finite (reference: ELF ``t_eps=0.05``):
- anything divided by ``1−t`` (x → v, x → ε) uses ``max(1−t, t_eps)``;
- anything divided by ``t`` (ε → x, ε → v) uses ``max(t, t_min)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

NOISE_SCALE = 2.0  # ELF's s: z_0 = s·N(0, I), and the scale of ε in the interpolant
T_EPS = 0.05  # ELF's clamp on 1-t
T_MIN = 0.05  # clamp on t for ε-prediction (same magnitude, at the noise end)


def expand_time(t: Tensor, like: Tensor) -> Tensor:
    """Broadcast a per-sample ``t`` of shape (B,) (or a scalar) against ``like`` (B, ...)."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        return t
    return t.reshape(t.shape + (1,) * (like.dim() - t.dim()))


def interpolate(x: Tensor, noise: Tensor, t: Tensor, noise_scale: float) -> Tensor:
    """``z_t = t·x + (1−t)·s·ε₀``. ``noise`` is unit-variance ε₀; t is (B,) or per-token (B,S)."""
    tt = expand_time(t, x)
    return tt * x + (1 - tt) * noise_scale * noise


def one_minus_t(t: Tensor, like: Tensor, t_eps: float = T_EPS) -> Tensor:
    """``max(1−t, t_eps)`` broadcast against ``like``."""
    return (1 - expand_time(t, like)).clamp_min(t_eps)


def clamped_t(t: Tensor, like: Tensor, t_min: float = T_MIN) -> Tensor:
    """``max(t, t_min)`` broadcast against ``like``."""
    return expand_time(t, like).clamp_min(t_min)


# --- from x̂ ---------------------------------------------------------------------------
def x_to_v(x_hat: Tensor, z: Tensor, t: Tensor, t_eps: float = T_EPS) -> Tensor:
    """``v̂ = (x̂ − z)/max(1−t, t_eps)`` (ELF's ``net_out_to_v``)."""
    return (x_hat - z) / one_minus_t(t, z, t_eps)


def x_to_eps(x_hat: Tensor, z: Tensor, t: Tensor, t_eps: float = T_EPS) -> Tensor:
    """``ε̂ = (z − t·x̂)/max(1−t, t_eps)``."""
    return (z - expand_time(t, z) * x_hat) / one_minus_t(t, z, t_eps)


# --- from ε̂ ---------------------------------------------------------------------------
def eps_to_x(eps_hat: Tensor, z: Tensor, t: Tensor, t_min: float = T_MIN) -> Tensor:
    """``x̂ = (z − (1−t)·ε̂)/max(t, t_min)``: unstable near t→0, hence the clamp."""
    return (z - (1 - expand_time(t, z)) * eps_hat) / clamped_t(t, z, t_min)


def eps_to_v(eps_hat: Tensor, z: Tensor, t: Tensor, t_min: float = T_MIN) -> Tensor:
    """``v̂ = (z − ε̂)/max(t, t_min)``."""
    return (z - eps_hat) / clamped_t(t, z, t_min)


# --- from v̂ ---------------------------------------------------------------------------
def v_to_x(v_hat: Tensor, z: Tensor, t: Tensor) -> Tensor:
    """``x̂ = z + (1−t)·v̂``: no singularity."""
    return z + (1 - expand_time(t, z)) * v_hat


def v_to_eps(v_hat: Tensor, z: Tensor, t: Tensor) -> Tensor:
    """``ε̂ = z − t·v̂``: no singularity."""
    return z - expand_time(t, z) * v_hat


# --- the path's coefficients ---------------------------------------------------------
def alpha(t: Tensor) -> Tensor:
    """Signal coefficient ``α(t) = t`` of ``z_t = α·x + σ·ε₀``."""
    return t


def sigma(t: Tensor, noise_scale: float = NOISE_SCALE) -> Tensor:
    """Noise coefficient ``σ(t) = s·(1−t)`` of ``z_t = α·x + σ·ε₀`` (ε₀ unit Gaussian)."""
    return noise_scale * (1 - t)


def half_log_snr(t: Tensor, noise_scale: float = NOISE_SCALE) -> Tensor:
    """``λ(t) = log(α/σ) = logit(t) − log s``: DPM-Solver's time variable; −∞ at t=0, +∞ at t=1."""
    return torch.log(t) - torch.log1p(-t) - math.log(noise_scale)


def log_snr(t: Tensor, noise_scale: float = NOISE_SCALE) -> Tensor:
    """``log SNR(t) = log(α²/σ²) = 2λ(t)``."""
    return 2 * half_log_snr(t, noise_scale)


def ve_sigma(t: Tensor, noise_scale: float = NOISE_SCALE) -> Tensor:
    """The variance-exploding σ of the same path, ``σ/α = s(1−t)/t``: ``z_t/t = x + σ_VE·ε₀``
    is k-diffusion's ``x = denoised + sigma·noise`` (∞ at t=0, 0 at t=1)."""
    return noise_scale * (1 - t) / t


def t_from_ve_sigma(sigma_ve: Tensor, noise_scale: float = NOISE_SCALE) -> Tensor:
    """Inverse of :func:`ve_sigma`: ``t = s/(s + σ_VE)``."""
    return noise_scale / (noise_scale + sigma_ve)


def t_from_half_log_snr(lam: Tensor, noise_scale: float = NOISE_SCALE) -> Tensor:
    """Inverse of :func:`half_log_snr`: ``t = sigmoid(λ + log s)``."""
    return torch.sigmoid(lam + math.log(noise_scale))


# --- the path as a value ------------------------------------------------------------------
@dataclass(frozen=True)
class FlowPath:
    """The path's constants, shared by training (interpolant), sampling (initial and SDE
    noise) and the targets' conversions. The defaults are ELF's (noise scale 2.0, t_eps 0.05)."""

    noise_scale: float = NOISE_SCALE
    t_eps: float = T_EPS
    t_min: float = T_MIN

    def interpolate(self, x: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return interpolate(x, noise, t, self.noise_scale)

    def initial_noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
        """``z_0 = s·N(0, I)``."""
        return self.noise_scale * torch.randn(shape, generator=generator, device=device, dtype=dtype)
