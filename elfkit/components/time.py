"""Time components: the training-time distribution and the sampling grid, in one object."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import Field
from torch import Tensor

from elfkit.config import ComponentConfig
from elfkit.core import distributions as tmath
from elfkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from elfkit.registry import ComponentRegistrar


class LogitNormalConfig(ComponentConfig):
    mean: float = -1.5
    """Mean of the normal before the sigmoid (ELF: −1.5, median t≈0.18)."""
    std: float = Field(default=0.8, gt=0)
    """Std of the normal before the sigmoid."""


class LogitNormalTime:
    """``t = sigmoid(N(mean, std))``; the grid is ``steps−1`` sorted draws plus 0 and 1,
    redrawn for every batch (ELF's sampling grid)."""

    def __init__(self, cfg: LogitNormalConfig) -> None:
        self.cfg = cfg

    def sample(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
        return tmath.logit_normal(n, self.cfg.mean, self.cfg.std, generator, device)

    def grid(self, steps: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
        return tmath.logit_normal_grid(steps, self.cfg.mean, self.cfg.std, generator, device)


class UniformConfig(ComponentConfig):
    pass


class UniformTime:
    """``t ~ U(0,1)``; the grid is ``linspace(0, 1, steps+1)``."""

    def __init__(self, cfg: UniformConfig) -> None:
        self.cfg = cfg

    def sample(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
        return tmath.uniform(n, generator, device)

    def grid(self, steps: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
        return tmath.uniform_grid(steps, device)


@hookimpl
def elfkit_register_components(registry: ComponentRegistrar) -> None:
    registry.add("time", "logit-normal", LogitNormalTime, LogitNormalConfig)
    registry.add("time", "uniform", UniformTime, UniformConfig)
