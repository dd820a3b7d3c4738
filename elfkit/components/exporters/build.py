"""The export sequence every exporter shares: trace → build files → reopen → parity → manifest.

An exporter supplies two functions: ``build(traced, out_dir) -> Built`` writes its files,
``open_runner(out_dir, manifest, device) -> ModelRunner`` runs them. Opening the files
just written (rather than the in-memory graph) means parity checks exactly what a user
will load. The manifest is written last and only when parity passed, so a refused
export can never be loaded by mistake; its figures go to ``parity-failed.json``. It records
the resolved target and flow path the outputs are to be read with (``target``, ``path``).
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from elfkit.components.exporters.manifest import MANIFEST, MANIFEST_VERSION, library_versions, write_manifest
from elfkit.components.exporters.parity import check_parity
from elfkit.components.exporters.runner import eager_reference_runner
from elfkit.components.exporters.spec import DTYPES, ExportSpec
from elfkit.components.exporters.trace import TracedBackbone, backbone_config, trace_backbone
from elfkit.components.targets import Target
from elfkit.contracts import ModelRunner

PARITY_FAILED = "parity-failed.json"


@dataclass
class Built:
    """What an exporter's build step wrote: ``files`` maps a role (denoise, decode, ...)
    to a file name inside the artifact folder; ``extra`` goes into the manifest as is."""

    files: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


def export_artifact(backbone: nn.Module, out_dir: Path, spec: ExportSpec, *, target: Target, fmt: str,
                    exporter_config: BaseModel, default_device: str,
                    build: Callable[[TracedBackbone, Path], Built],
                    open_runner: Callable[[Path, dict[str, Any], torch.device], ModelRunner],
                    metadata: Mapping[str, Any] | None = None, trace_precision: str | None = None,
                    extra_versions: tuple[str, ...] = ()) -> Path:
    """Run the shared sequence; returns the manifest path.

    ``target`` is the model's target bound to its flow path: parity derives v̂ with it and
    the manifest records both. ``trace_precision`` overrides the dtype the graph is traced in (TensorRT autocast
    traces fp32 and lowers precision inside the engine); the manifest still records
    ``spec.precision`` and the artifact's input dtype separately.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (MANIFEST, PARITY_FAILED):  # a failed re-export must not leave an old manifest behind
        (out_dir / stale).unlink(missing_ok=True)
    device = torch.device(spec.device or default_device)
    trace_spec = spec if trace_precision is None else spec.model_copy(update={"precision": trace_precision})

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    traced = trace_backbone(backbone, trace_spec, device)
    timings["trace_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    built = build(traced, out_dir)
    timings["build_s"] = time.perf_counter() - t0

    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "format": fmt,
        "exporter_config": exporter_config.model_dump(mode="json"),
        "files": built.files,
        "precision": spec.precision,
        "io_dtype": dtype_name(traced.dtype),
        "device": str(device),
        "shapes": {"batch": traced.batch.model_dump(), "seq": traced.seq.model_dump(),
                   "latent_dim": traced.capabilities.latent_dim, "vocab_size": traced.capabilities.vocab_size},
        "io": traced.input_layout(),
        "capabilities": traced.capabilities.to_dict(),
        "backbone": {"class": f"{type(backbone).__module__}.{type(backbone).__qualname__}",
                     "config": backbone_config(backbone)},
        **target.describe(),
        "versions": library_versions(extra_versions),
        "source": dict(metadata or {}),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **built.extra,
    }

    parity = None
    if spec.check_parity:
        t0 = time.perf_counter()
        runner = open_runner(out_dir, manifest, device)
        reference = eager_reference_runner(traced.reference_denoise, traced.reference_decode,
                                           traced.capabilities, device)
        report = check_parity(runner, reference, spec, traced.batch, traced.seq, target, device)
        timings["parity_s"] = time.perf_counter() - t0
        parity = report.to_dict()
        if not report.passed:
            (out_dir / PARITY_FAILED).write_text(json.dumps(parity, indent=2) + "\n")
            report.raise_if_failed(f"{fmt} export to {out_dir}")
    manifest["parity"] = parity
    manifest["timings"] = {k: round(v, 3) for k, v in timings.items()}
    return write_manifest(out_dir, manifest)
