"""elfkit-tensorrt: the ``tensorrt`` exporter, registered through the ``elfkit`` entry point.

Importing this package never imports torch_tensorrt; that happens when an export or a
load runs, and any failure there is a :class:`~elfkit.errors.MissingDependencyError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from elfkit.hookspecs import hookimpl
from elfkit_tensorrt._import import require_torch_tensorrt, unavailable_reason
from elfkit_tensorrt.exporter import TensorRTConfig, TensorRTExporter

if TYPE_CHECKING:
    from elfkit.registry import ComponentRegistrar

__all__ = ["TensorRTConfig", "TensorRTExporter", "require_torch_tensorrt", "unavailable_reason"]
__version__ = "0.1.0"


@hookimpl
def elfkit_register_components(registry: ComponentRegistrar) -> None:
    registry.add("exporter", "tensorrt", TensorRTExporter, TensorRTConfig)
