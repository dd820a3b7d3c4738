"""Built-in guidance: ``none``, ``self-cond`` (ELF's trained-in SC guidance, the default) and ``cfg``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from elfkit.components.guidance.base import Guidance, ModelEvaluation
from elfkit.components.guidance.cfg import CfgConfig, CfgGuidance
from elfkit.components.guidance.none import NoGuidance, NoGuidanceConfig
from elfkit.components.guidance.self_cond import SelfCondConfig, SelfCondGuidance
from elfkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from elfkit.registry import ComponentRegistrar

__all__ = ["CfgConfig", "CfgGuidance", "Guidance", "ModelEvaluation", "NoGuidance", "NoGuidanceConfig",
           "SelfCondConfig", "SelfCondGuidance"]


@hookimpl
def elfkit_register_components(registry: ComponentRegistrar) -> None:
    registry.add("guidance", "none", NoGuidance, NoGuidanceConfig)
    registry.add("guidance", "self-cond", SelfCondGuidance, SelfCondConfig)
    registry.add("guidance", "cfg", CfgGuidance, CfgConfig)
