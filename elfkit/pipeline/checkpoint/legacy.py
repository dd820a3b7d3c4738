"""``elfkit checkpoint convert``: an old pickle checkpoint (``torch.save`` dict) → the safetensors format.

Old files are read with ``torch.load(weights_only=True)``, whose unpickler builds tensors and
plain containers only; the one extra it allows is what numpy's RNG state needs (an ndarray of
uint32 and its dtype). A file holding anything else is refused: converting never runs code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from elfkit.errors import CheckpointError
from elfkit.pipeline.checkpoint.record import FORMAT_VERSION, SUFFIX, Checkpoint

_multiarray = getattr(np, "_core", None) or np.core   # numpy 2 renamed numpy.core
_reconstruct = _multiarray.multiarray._reconstruct   # pyright: ignore[reportAttributeAccessIssue]
# (object, the name old files spell it by): numpy 1 and 2 pickles name the same function differently
ALLOWED_GLOBALS: list[Any] = [
    (_reconstruct, "numpy.core.multiarray._reconstruct"),
    (_reconstruct, "numpy._core.multiarray._reconstruct"),
    np.ndarray, np.dtype, type(np.dtype(np.uint32)),
]


def read_legacy(path: Path) -> dict[str, Any]:
    """The payload dict of an old checkpoint, read without running code (or a CheckpointError)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = next((line for line in str(exc).splitlines() if "Unsupported global" in line), "")
        raise CheckpointError(
            f"refusing to convert {path}: it is not an old elfkit checkpoint made of tensors and plain values "
            f"only, so reading it could run code{f' ({first.strip()})' if first else ''}. Nothing was loaded."
        ) from None
    version = payload.get("format") if isinstance(payload, dict) else None
    if not isinstance(version, int) or version >= FORMAT_VERSION:
        raise CheckpointError(f"{path} is not an old elfkit checkpoint (no 'format' key of version < {FORMAT_VERSION})")
    return payload


def _plain(value: Any) -> Any:
    """numpy arrays and scalars (numpy's RNG state) as Python lists and numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def convert(old: Path, new: Path | None = None) -> Path:
    """Write ``old``'s content as a new checkpoint (default: ``step_N.safetensors`` beside it); returns it."""
    old = Path(old)
    payload = _plain(read_legacy(old))
    known = {"recipe", "model", "step", "ema", "optimizer", "scheduler", "epoch", "batches_in_epoch",
             "world_size", "micro_batch", "loss", "rng", "tokenizer", "embedder", "embedder_ema"}
    try:
        checkpoint = Checkpoint(**{k: v for k, v in payload.items() if k in known and v is not None})
        target = Path(new) if new is not None else old.with_name(f"step_{int(checkpoint.step)}{SUFFIX}")
        if target.exists():
            raise CheckpointError(f"{target} exists; pass another output path (nothing is overwritten)")
        checkpoint.save(target)
    except TypeError as exc:
        raise CheckpointError(f"cannot convert {old}: {exc}") from None
    Checkpoint.load(target)   # verify what was written
    return target
