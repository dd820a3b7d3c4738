"""The ``exporter`` kind: a trained denoiser → a deployable artifact folder, and back to a runner.

Built-ins: ``torch-export`` (+ AOTInductor) and ``onnx``, both CPU-capable. TensorRT is the
separate ``elfkit-tensorrt`` plugin (``plugins/elfkit-tensorrt``), registered through the
``elfkit`` entry-point group like any third-party exporter. Every exporter implements
:class:`~elfkit.contracts.Exporter`; the machinery they share lives here too and is public
for exporter plugins: :mod:`.spec` (what an export covers), :mod:`.trace` (the traced
modules), :mod:`.build` (trace → files → reopen → parity → manifest), :mod:`.parity`,
:mod:`.manifest` and :mod:`.runner` (artifacts as a :class:`~elfkit.contracts.ModelRunner`).

    target = registry.build("target", "x").bind(FlowPath())     # the model's target, bound to its path
    path = export_backbone(backbone, "onnx", Path("out/onnx"), ExportSpec(precision="fp32"), registry,
                           target=target)
    runner = load_runner(Path("out/onnx"), registry=registry)   # a ModelRunner, like the eager backbone
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from elfkit.components.exporters.manifest import MANIFEST, read_manifest
from elfkit.components.exporters.onnx_export import OnnxConfig, OnnxExporter
from elfkit.components.exporters.parity import Metrics, ParityReport, check_parity, compare
from elfkit.components.exporters.runner import (
    TENSORRT_INSTALL,
    ArtifactRunner,
    export_backbone,
    get_exporter,
    load_runner,
)
from elfkit.components.exporters.spec import PRECISIONS, DimRange, ExportSpec, ParityThresholds, parse_range
from elfkit.components.exporters.torch_export import TorchExportConfig, TorchExportExporter
from elfkit.contracts import Exporter
from elfkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from elfkit.registry import ComponentRegistrar

__all__ = [
    "MANIFEST", "PRECISIONS", "TENSORRT_INSTALL", "ArtifactRunner", "DimRange", "ExportSpec", "Exporter", "Metrics",
    "OnnxConfig", "OnnxExporter", "ParityReport", "ParityThresholds", "TorchExportConfig", "TorchExportExporter",
    "check_parity", "compare", "export_backbone", "get_exporter", "load_runner", "parse_range", "read_manifest",
]


@hookimpl
def elfkit_register_components(registry: ComponentRegistrar) -> None:
    registry.add("exporter", "torch-export", TorchExportExporter, TorchExportConfig)
    registry.add("exporter", "onnx", OnnxExporter, OnnxConfig)
