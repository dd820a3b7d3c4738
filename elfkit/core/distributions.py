"""Time distributions for training and time grids for sampling (t=0 noise → t=1 data)."""

from __future__ import annotations

import torch
from torch import Tensor


def logit_normal(n: int, mean: float, std: float, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> Tensor:
    """``sigmoid(N(mean, std))``; ELF trains with mean −1.5, std 0.8 (median t≈0.18)."""
    u = torch.randn(n, generator=generator, device=device) * std + mean
    return torch.sigmoid(u)


def uniform(n: int, generator: torch.Generator | None = None,
            device: torch.device | str = "cpu") -> Tensor:
    """U(0, 1)."""
    return torch.rand(n, generator=generator, device=device)


def uniform_grid(steps: int, device: torch.device | str = "cpu") -> Tensor:
    """``linspace(0, 1, steps+1)``: ``steps`` intervals."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(0.0, 1.0, steps + 1, device=device)


def logit_normal_grid(steps: int, mean: float, std: float,
                      generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> Tensor:
    """ELF's random grid: ``steps−1`` sorted logit-normal draws with 0 prepended and 1 appended.

    The grid is redrawn for every batch (reference behaviour); with ``steps=1`` it is [0, 1].
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    inner = torch.sort(logit_normal(steps - 1, mean, std, generator, device)).values
    zero = torch.zeros(1, device=device)
    one = torch.ones(1, device=device)
    return torch.cat([zero, inner, one])
