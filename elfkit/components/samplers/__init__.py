"""Built-in samplers: ``euler`` (ODE), ``sde`` (ELF's churn sampler, the default) and ``dpmpp-2m``
(DPM-Solver++(2M), second order)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from elfkit.components.samplers.base import ConfigSteps, SamplerConfig, sampling_grid
from elfkit.components.samplers.dpmpp import DpmppConfig, DpmppSampler
from elfkit.components.samplers.euler import EulerConfig, EulerSampler
from elfkit.components.samplers.sde import SdeConfig, SdeSampler
from elfkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from elfkit.registry import ComponentRegistrar

__all__ = ["ConfigSteps", "DpmppConfig", "DpmppSampler", "EulerConfig", "EulerSampler", "SamplerConfig",
           "SdeConfig", "SdeSampler", "sampling_grid"]


@hookimpl
def elfkit_register_components(registry: ComponentRegistrar) -> None:
    registry.add("sampler", "euler", EulerSampler, EulerConfig)
    registry.add("sampler", "sde", SdeSampler, SdeConfig)
    registry.add("sampler", "dpmpp-2m", DpmppSampler, DpmppConfig)
