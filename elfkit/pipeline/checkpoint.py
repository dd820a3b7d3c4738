"""Training checkpoints: one typed record, and the one place that knows the ``checkpoints/`` layout.

The trainer writes and resumes from it, and sampling and export rebuild a model from it, so
its fields and file names are defined here once. Files are written atomically (a crash
mid-write leaves the previous checkpoint readable); a missing, corrupt or foreign file is a
:class:`CheckpointError` naming it, never a torch traceback.

On disk a checkpoint is a ``torch.save``'d dict whose keys are the field names plus
``format``. Keys this code does not know (older files carry ``capabilities`` and ``target``)
are ignored when reading.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from elfkit.errors import CheckpointError
from elfkit.fileio import atomic_write_bytes

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "recipe", "model", "step")
LAST = "last.pt"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
# written only when set: a tied or frozen embedder has no state of its own
_OPTIONAL_KEYS = ("embedder", "embedder_ema")


@dataclass
class Checkpoint:
    """Everything a run needs to resume training or to rebuild its model.

    ``recipe`` is the resolved recipe dict; ``model``/``ema`` are plain backbone state dicts
    (raw and averaged weights); ``epoch``/``batches_in_epoch`` are the data position of a rank
    that consumed ``micro_batch`` rows per batch in a run of ``world_size`` processes;
    ``embedder``/``embedder_ema`` exist only for an untied trainable embedder.
    """

    recipe: dict[str, Any]
    model: dict[str, Tensor]
    step: int
    ema: dict[str, Tensor] | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    epoch: int = 0
    batches_in_epoch: int = 0
    world_size: int = 1
    micro_batch: int | None = None
    loss: float | None = None
    rng: dict[str, Any] | None = None
    tokenizer: str | None = None
    embedder: dict[str, Tensor] | None = None
    embedder_ema: dict[str, Tensor] | None = None

    def save(self, path: Path) -> None:
        """Write atomically (the previous file at ``path`` stays intact if this fails): ``format``
        then every field, the optional embedder ones only when set."""
        payload: dict[str, Any] = {"format": FORMAT_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None or f.name not in _OPTIONAL_KEYS:
                payload[f.name] = value
        atomic_write_bytes(Path(path), lambda f: torch.save(payload, f))

    @classmethod
    def load(cls, path: Path, map_location: str | torch.device = "cpu") -> Checkpoint:
        """Read and sanity-check a checkpoint file; any failure is a :class:`CheckpointError`."""
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
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in payload.items() if k in known and v is not None}
        values["step"] = int(values["step"])
        return cls(**values)


@dataclass(frozen=True)
class CheckpointDir:
    """``step_{N}.pt`` files (the newest ``keep`` are kept) and ``last.pt``, a hard link to (or,
    on filesystems without hard links, a copy of) the newest."""

    path: Path

    @property
    def last(self) -> Path:
        return self.path / LAST

    def step_file(self, step: int) -> Path:
        return self.path / f"step_{step}.pt"

    def write(self, checkpoint: Checkpoint, keep: int) -> Path:
        """Write ``step_{N}.pt``, point ``last.pt`` at it, prune older step files; returns ``last.pt``."""
        path = self.step_file(checkpoint.step)
        checkpoint.save(path)
        _atomic_link(path, self.last)
        steps = sorted((int(m.group(1)), p) for p in self.path.iterdir() if (m := _STEP_FILE.match(p.name)))
        for _, old in steps[:-keep]:
            old.unlink(missing_ok=True)
        return self.last

    def read_last(self) -> Checkpoint | None:
        """``last.pt`` (tensors on CPU), or None when nothing was saved yet."""
        return Checkpoint.load(self.last) if self.last.exists() else None


def _atomic_link(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:   # filesystems without hard links
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
