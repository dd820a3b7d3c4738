"""Deploying a trained denoiser: export to an artifact folder, check parity, run it.

Formats are ``exporter`` components (registry kind "exporter"): ``torch-export`` and
``onnx`` ship with elfkit, ``tensorrt`` is the ``elfkit-tensorrt`` plugin. Every exporter
implements :class:`Exporter`; everything else here is shared by them.

    path = export_backbone(backbone, "onnx", Path("out/onnx"), ExportSpec(precision="fp32"))
    runner = load_runner(Path("out/onnx"))          # a ModelRunner, like the eager backbone
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from elfkit.export.manifest import MANIFEST, read_manifest
from elfkit.export.parity import Metrics, ParityReport, check_parity, compare
from elfkit.export.runner import (
    TENSORRT_INSTALL,
    ArtifactRunner,
    export_backbone,
    get_exporter,
    load_runner,
    spec_from_recipe,
)
from elfkit.export.spec import PRECISIONS, DimRange, ExportSpec, ParityThresholds, parse_range
from elfkit.types import ModelRunner


@runtime_checkable
class Exporter(Protocol):
    """The ``exporter`` kind: backbone → artifact folder, and back to a runner.

    ``export`` writes the files and a ``manifest.json`` (only after parity against eager
    fp32 passed; otherwise :class:`~elfkit.errors.ExportError`) and returns the manifest
    path. ``load`` opens a folder this exporter wrote on ``device``. ``metadata`` is
    copied into the manifest (``"source"``).
    """

    format: str

    def export(self, backbone: nn.Module, out_dir: Path, spec: ExportSpec, *,
               metadata: dict[str, Any] | None = None) -> Path: ...

    def load(self, artifact_dir: Path, device: torch.device | str) -> ModelRunner: ...


__all__ = [
    "MANIFEST", "PRECISIONS", "TENSORRT_INSTALL", "ArtifactRunner", "DimRange", "ExportSpec", "Exporter", "Metrics",
    "ParityReport", "ParityThresholds", "check_parity", "compare", "export_backbone", "get_exporter", "load_runner",
    "parse_range", "read_manifest", "spec_from_recipe",
]
