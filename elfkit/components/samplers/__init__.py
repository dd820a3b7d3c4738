"""Built-in samplers: ``euler`` (ODE) and ``sde`` (ELF's churn sampler, the default)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from elfkit.components.samplers.base import ConfigSteps, SamplerConfig, sampling_grid
from elfkit.components.samplers.euler import EulerConfig, EulerSampler
from elfkit.components.samplers.sde import SdeConfig, SdeSampler
from elfkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from elfkit.registry import ComponentRegistrar

__all__ = ["ConfigSteps", "EulerConfig", "EulerSampler", "SamplerConfig", "SdeConfig", "SdeSampler",
           "sampling_grid"]


@hookimpl
def elfkit_register_components(registry: ComponentRegistrar) -> None:
    registry.add("sampler", "euler", EulerSampler, EulerConfig)
    registry.add("sampler", "sde", SdeSampler, SdeConfig)
