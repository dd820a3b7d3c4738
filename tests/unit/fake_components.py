"""A plugin module with minimal components, so recipe/registry tests do not depend on real models."""

from __future__ import annotations

from pydantic import Field

from elfkit import hookimpl
from elfkit.config import ComponentConfig


class FakeConfig(ComponentConfig):
    size: int = Field(4, gt=0)
    """A positive size."""
    prob: float = Field(0.5, ge=0, le=1)
    """A probability."""


class Fake:
    def __init__(self, cfg: FakeConfig) -> None:
        self.cfg = cfg


@hookimpl
def elfkit_register_components(registry) -> None:
    for kind in ("dataset", "embedder", "backbone", "objective", "sampler", "guidance", "evaluator"):
        registry.add(kind, f"fake-{kind}", Fake, FakeConfig)
