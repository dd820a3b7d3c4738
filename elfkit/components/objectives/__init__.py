"""Built-in objectives: ``elf`` (flow-matching denoiser + decoder CE, self-cond guided target)."""

from __future__ import annotations

from elfkit.components.objectives.base import ObjectiveOutput, unwrap
from elfkit.components.objectives.elf import ElfDraws, ElfObjective, ElfObjectiveConfig
from elfkit.hookspecs import hookimpl

__all__ = ["ElfDraws", "ElfObjective", "ElfObjectiveConfig", "ObjectiveOutput", "unwrap"]


@hookimpl
def elfkit_register_components(registry) -> None:
    registry.add("objective", "elf", ElfObjective, ElfObjectiveConfig)
