"""``elfkit export``: a checkpoint's denoiser as a deployable artifact, checked for parity.

The exporters work on a backbone and a spec; turning a checkpoint into those (the stored
recipe's components with their EMA weights, CLI ranges parsed) and naming the output
directory is the pipeline's side, here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from elfkit.components.exporters import ExportSpec, export_backbone, parse_range
from elfkit.pipeline.checkpoint import run_root_of
from elfkit.pipeline.trained import load_trained
from elfkit.recipe.load import resolved_dict


def export_checkpoint(checkpoint: Path, fmt: str, *, precision: str, batch: str, seq: str | None,
                      out_dir: Path | None, plugin_files: Sequence[str] = (), console: Console | None = None) -> Path:
    """Export the checkpoint's (EMA) denoiser; returns the manifest after the parity check passed."""
    trained = load_trained(checkpoint, plugin_files=plugin_files)
    overrides: dict[str, Any] = {"precision": precision, "batch": parse_range(batch, "--batch")}
    if seq:
        overrides["seq"] = parse_range(seq, "--seq")
    spec = ExportSpec(**overrides)
    out = Path(out_dir) if out_dir else run_root_of(checkpoint) / f"export-{fmt}-{precision}"
    with (console or Console(stderr=True)).status(f"exporting to {fmt} ({precision}) and checking parity"):
        return export_backbone(trained.components.backbone, fmt, out, spec, trained.components.registry,
                               target=trained.components.target,
                               metadata={"checkpoint": str(Path(checkpoint).resolve()),
                                         "step": trained.step, "recipe": resolved_dict(trained.recipe)})
