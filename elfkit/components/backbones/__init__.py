"""Built-in backbones: the ELF transformer (``elf``), its runner and official-checkpoint loading."""

from __future__ import annotations

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

__all__ = [
    "PRESETS", "BackboneInputError", "DecodeModule", "DenoiseModule", "ELFBackbone", "ELFBackboneConfig",
    "EagerRunner", "build_elf_backbone", "config_from_state_dict", "load_official", "official_state_dict",
    "read_official_state_dict",
]


@hookimpl
def elfkit_register_components(registry) -> None:
    registry.add("backbone", "elf", build_elf_backbone, ELFBackboneConfig)
