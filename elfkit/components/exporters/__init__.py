"""Built-in exporters: ``torch-export`` (+ AOTInductor) and ``onnx``, both CPU-capable.

TensorRT lives in the separate ``elfkit-tensorrt`` plugin (``plugins/elfkit-tensorrt``),
registered through the ``elfkit`` entry-point group like any third-party exporter.
Shared machinery (spec, tracing, parity, manifest, runner) is in :mod:`elfkit.export`.
"""

from __future__ import annotations

from elfkit.components.exporters.onnx_export import OnnxConfig, OnnxExporter
from elfkit.components.exporters.torch_export import TorchExportConfig, TorchExportExporter
from elfkit.hookspecs import hookimpl

__all__ = ["OnnxConfig", "OnnxExporter", "TorchExportConfig", "TorchExportExporter"]


@hookimpl
def elfkit_register_components(registry) -> None:
    registry.add("exporter", "torch-export", TorchExportExporter, TorchExportConfig)
    registry.add("exporter", "onnx", OnnxExporter, OnnxConfig)
