"""Built-in objectives: ``elf`` (flow-matching denoiser + decoder CE, self-cond guided target)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from elfkit.components.objectives.base import ObjectiveOutput, unwrap
from elfkit.components.objectives.elf import ElfDraws, ElfObjective, ElfObjectiveConfig
from elfkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from elfkit.registry import ComponentRegistrar

__all__ = ["ElfDraws", "ElfObjective", "ElfObjectiveConfig", "ObjectiveOutput", "unwrap"]


@hookimpl
def elfkit_register_components(registry: ComponentRegistrar) -> None:
    registry.add("objective", "elf", ElfObjective, ElfObjectiveConfig)
