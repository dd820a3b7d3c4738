"""Atomic checkpoint files: write to a temp file in the same folder, fsync, rename.

A crash mid-write leaves the previous checkpoint intact and readable; a corrupt or
foreign file gives a :class:`CheckpointError` naming it, never a torch traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from elfkit.errors import CheckpointError
from elfkit.fileio import atomic_write_bytes

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "recipe", "model", "capabilities", "step")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Save a checkpoint dict atomically (adds the format version)."""
    payload = {"format": FORMAT_VERSION, **payload}
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}")
    atomic_write_bytes(Path(path), lambda f: torch.save(payload, f))


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and sanity-check an elfkit checkpoint; any failure is a CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; pass a checkpoint file (e.g. {path}/checkpoints/last.pt)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupt or not a torch checkpoint "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") is None:
        raise CheckpointError(f"{path} is not an elfkit checkpoint (no 'format' key)")
    if payload["format"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {payload['format']}; this elfkit reads "
                              f"up to {FORMAT_VERSION}: upgrade elfkit")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {missing}")
    return payload
