"""Built-in objectives: ``elf`` (flow-matching denoiser + decoder CE, self-cond guided target) and
``progressive-distillation`` (few-step students of a frozen ELF teacher)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from elfkit.components.objectives.base import ObjectiveOutput, unwrap
from elfkit.components.objectives.distill import (
    PDDraws,
    ProgressiveDistillation,
    ProgressiveDistillationConfig,
)
from elfkit.components.objectives.elf import ElfDraws, ElfObjective, ElfObjectiveConfig
from elfkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from elfkit.registry import ComponentRegistrar

__all__ = ["ElfDraws", "ElfObjective", "ElfObjectiveConfig", "ObjectiveOutput", "PDDraws", "ProgressiveDistillation",
           "ProgressiveDistillationConfig", "unwrap"]


@hookimpl
def elfkit_register_components(registry: ComponentRegistrar) -> None:
    registry.add("objective", "elf", ElfObjective, ElfObjectiveConfig)
    registry.add("objective", "progressive-distillation", ProgressiveDistillation, ProgressiveDistillationConfig,
                 "Progressive distillation of a frozen ELF teacher (official distillation branch).")
