"""``elfkit export``: a checkpoint's denoiser as a deployable artifact, checked for parity.

The exporters work on a backbone and a spec; turning a checkpoint into those (the stored
recipe's components with their EMA weights, CLI ranges parsed) and naming the output
directory is the pipeline's side, here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from elfkit.components.exporters import ExportSpec, export_backbone, parse_range
from elfkit.components.exporters.spec import Precision
from elfkit.errors import ExportError
from elfkit.pipeline.checkpoint import run_root_of
from elfkit.pipeline.interrupts import interruptible
from elfkit.pipeline.trained import load_trained
from elfkit.recipe.load import resolved_dict


def export_spec(precision: str, batch: str, seq: str | None) -> ExportSpec:
    """The CLI's --precision/--batch/--seq as a spec; bad values are an ExportError naming the option."""
    allowed = get_args(Precision)
    if precision not in allowed:
        raise ExportError(f"--precision {precision!r} is not supported; choose one of: {', '.join(allowed)}")
    overrides: dict[str, Any] = {"precision": precision, "batch": parse_range(batch, "--batch")}
    if seq:
        overrides["seq"] = parse_range(seq, "--seq")
    try:
        return ExportSpec(**overrides)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise ExportError(f"invalid export settings: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def _export_kept(args: Mapping[str, Any]) -> str:
    return ("The export was not finished: no manifest.json was written, so nothing will load the partial "
            f"files; the checkpoint {args['checkpoint']} is untouched. Rerun the same command to export again.")


@interruptible("export", _export_kept)
def export_checkpoint(checkpoint: Path, fmt: str, *, precision: str, batch: str, seq: str | None,
                      out_dir: Path | None, plugin_files: Sequence[str] = (), console: Console | None = None) -> Path:
    """Export the checkpoint's (EMA) denoiser; returns the manifest after the parity check passed."""
    spec = export_spec(precision, batch, seq)   # bad options fail before the checkpoint loads
    trained = load_trained(checkpoint, plugin_files=plugin_files)
    out = Path(out_dir) if out_dir else run_root_of(checkpoint) / f"export-{fmt}-{precision}"
    with (console or Console(stderr=True)).status(f"exporting to {escape(fmt)} ({precision}) and checking parity"):
        return export_backbone(trained.components.backbone, fmt, out, spec, trained.components.registry,
                               target=trained.components.target,
                               metadata={"checkpoint": str(Path(checkpoint).resolve()),
                                         "step": trained.step, "recipe": resolved_dict(trained.recipe)})
