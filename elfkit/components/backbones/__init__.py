"""Built-in backbones: the ELF transformer (``elf``), its runner and official-checkpoint loading."""

from __future__ import annotations

from typing import TYPE_CHECKING

from elfkit.components.backbones.elf import (
    PRESETS,
    BackboneInputError,
    ELFBackbone,
    ELFBackboneConfig,
    build_elf_backbone,
)
from elfkit.components.backbones.official import (
    config_from_state_dict,
    load_official,
    official_state_dict,
    read_official_state_dict,
)
from elfkit.components.backbones.runner import DecodeModule, DenoiseModule, EagerRunner
from elfkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from elfkit.registry import ComponentRegistrar

__all__ = [
    "PRESETS", "BackboneInputError", "DecodeModule", "DenoiseModule", "ELFBackbone", "ELFBackboneConfig",
    "EagerRunner", "build_elf_backbone", "config_from_state_dict", "load_official", "official_state_dict",
    "read_official_state_dict",
]


@hookimpl
def elfkit_register_components(registry: ComponentRegistrar) -> None:
    registry.add("backbone", "elf", build_elf_backbone, ELFBackboneConfig)
