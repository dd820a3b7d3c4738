"""One checkpoint file: the typed record and its on-disk format.

The trainer writes and resumes from it, and sampling and export rebuild a model from it, so
its fields are defined here once. A file is one ``safetensors`` file: every tensor (weights,
EMA, optimiser moments, the torch RNG state) under a flat key, and the rest (step, data
position, Python/numpy RNG state as numbers, the resolved recipe, the format version and a
sha256 of all of it) as JSON in the header's metadata. Reading it never unpickles anything,
and a flipped byte anywhere in the weights or the metadata fails the checksum.

A file written by an older elfkit (a ``torch.save`` pickle) is refused with the command that
converts it (:mod:`elfkit.pipeline.checkpoint.legacy`); a missing, corrupt or foreign file is
a :class:`CheckpointError` naming it, never a torch traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from elfkit.errors import CheckpointError
from elfkit.fileio import atomic_write_bytes
from elfkit.pipeline.checkpoint import codec

FORMAT_VERSION = 2
SUFFIX = ".safetensors"
_META_KEY = "elfkit"
_MAX_HEADER = 256 * 2**20
# first bytes of a torch.save zip archive and of a raw pickle (protocol ≥ 2)
_LEGACY_MAGIC = (b"PK\x03\x04", b"\x80")


class LegacyCheckpointError(CheckpointError):
    """A checkpoint in the pre-safetensors (pickle) format: refused, with the converter command."""


@dataclass
class Checkpoint:
    """Everything a run needs to resume training or to rebuild its model.

    ``recipe`` is the resolved recipe dict; ``model``/``ema`` are plain backbone state dicts
    (raw and averaged weights); ``epoch``/``batches_in_epoch`` are the data position of a rank
    that consumed ``micro_batch`` rows per batch in a run of ``world_size`` processes;
    ``embedder``/``embedder_ema`` exist only for an untied trainable embedder. ``optimizer``,
    ``scheduler`` and ``rng`` may hold tensors and plain values (numbers, strings, lists,
    tuples, dicts) only.
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

    def to_bytes(self) -> bytes:
        """The file's bytes (raises ``TypeError`` naming a field that holds a non-plain value)."""
        tensors: dict[str, Tensor] = {}
        tree = {f.name: codec.split(getattr(self, f.name), tensors, f.name) for f in fields(self)}
        tensors = _unshared(tensors)
        meta = {"format": FORMAT_VERSION, "fields": tree}
        meta["sha256"] = codec.checksum(codec.canonical_json(meta), tensors)
        return st_save(tensors, metadata={_META_KEY: codec.canonical_json(meta)})

    def save(self, path: Path) -> None:
        """Write atomically: the previous file at ``path`` stays intact if this fails."""
        data = self.to_bytes()
        atomic_write_bytes(Path(path), lambda f: f.write(data))

    @classmethod
    def load(cls, path: Path, map_location: str | torch.device = "cpu") -> Checkpoint:
        """Read and verify one checkpoint file (or the file a ``last`` pointer names); any failure
        is a :class:`CheckpointError` naming it."""
        path = Path(path)
        target = pointer_target(path)
        if target is not None:
            path = target
        if not path.exists():
            raise CheckpointError(f"checkpoint not found: {path}")
        if path.is_dir():
            raise CheckpointError(f"{path} is a directory; pass a checkpoint file "
                                  f"(e.g. {path}/checkpoints/step_N{SUFFIX})")
        data = path.read_bytes()
        checkpoint = cls.from_bytes(data, str(path))
        if map_location != "cpu":
            checkpoint = checkpoint.to(map_location)
        return checkpoint

    @classmethod
    def from_bytes(cls, data: bytes, origin: str) -> Checkpoint:
        safetensors_like = data[8:9] == b"{"   # 8 bytes of header size, then the JSON header
        if not safetensors_like and data.startswith(_LEGACY_MAGIC):
            raise LegacyCheckpointError(
                f"{origin} is in the old pickle checkpoint format, which elfkit no longer opens because "
                f"reading a pickle can run code. Convert it once (reads tensors and plain values only) with:\n"
                f"  elfkit checkpoint convert {origin}")
        meta, tensors = _parse(data, origin)
        version = meta.get("format")
        if not isinstance(version, int):
            raise CheckpointError(f"{origin} is not an elfkit checkpoint (no format version in its metadata)")
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{origin} has checkpoint format {version}; this elfkit reads up to "
                                  f"{FORMAT_VERSION}: upgrade elfkit")
        stored = meta.pop("sha256", None)
        if stored != codec.checksum(codec.canonical_json(meta), tensors):
            raise CheckpointError(f"{origin} is corrupt: its sha256 checksum does not match its content"
                                  if stored else f"{origin} has no checksum; it was not written by elfkit")
        try:
            values = codec.join(meta["fields"], tensors)
            missing = [k for k in ("recipe", "model", "step") if values.get(k) is None]
            if missing:
                raise CheckpointError(f"{origin} is incomplete: missing {missing}")
            known = {f.name for f in fields(cls)}
            checkpoint = cls(**{k: v for k, v in values.items() if k in known and v is not None})
            _check_types(checkpoint)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{origin} is not a valid elfkit checkpoint ({type(exc).__name__}: {exc})") from None
        checkpoint.step = int(checkpoint.step)
        return checkpoint

    def to(self, device: str | torch.device) -> Checkpoint:
        """A copy with every tensor moved to ``device``."""
        tensors: dict[str, Tensor] = {}
        tree = {f.name: codec.split(getattr(self, f.name), tensors, f.name) for f in fields(self)}
        moved = {k: t.to(device) for k, t in tensors.items()}
        return type(self)(**codec.join(tree, moved))


def write_pointer(pointer: Path, target: Path, step: int) -> None:
    """Write ``pointer`` (e.g. ``checkpoints/last``): a small JSON file naming ``target`` in its folder."""
    atomic_write_bytes(pointer, lambda f: f.write((json.dumps({"file": target.name, "step": step}) + "\n").encode()))


def pointer_target(path: Path) -> Path | None:
    """The file a pointer names (always inside the pointer's folder), or None if ``path`` is no pointer."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
        name = json.loads(head)["file"] if head[:1] == b"{" else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return path.parent / Path(str(name)).name if name else None


def _check_types(checkpoint: Checkpoint) -> None:
    """A well-formed file whose values have the wrong types (hand-made) fails here, not deep in torch."""
    if not isinstance(checkpoint.recipe, dict) or not isinstance(checkpoint.step, int):
        raise TypeError("'recipe' must be a mapping and 'step' an integer")
    for name in ("model", "ema", "embedder", "embedder_ema"):
        sd = getattr(checkpoint, name)
        if sd is not None and not (isinstance(sd, dict) and all(isinstance(v, Tensor) for v in sd.values())):
            raise TypeError(f"'{name}' must map names to tensors")


def _unshared(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """safetensors refuses tensors that share storage (tied weights, views): copy all but the first."""
    seen: set[int] = set()
    out = {}
    for key, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        whole = t.untyped_storage().nbytes() == t.numel() * t.element_size()
        out[key] = t if (ptr not in seen and whole) or t.numel() == 0 else t.clone()
        seen.add(ptr)
    return out


def _parse(data: bytes, origin: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The elfkit metadata and the tensors of a safetensors file, or a CheckpointError."""
    corrupt = f"cannot read checkpoint {origin}: the file is truncated, corrupt or not an elfkit checkpoint"
    if len(data) < 8:
        raise CheckpointError(f"{corrupt} ({len(data)} bytes)")
    size = int.from_bytes(data[:8], "little")
    if size > min(len(data) - 8, _MAX_HEADER):
        raise CheckpointError(f"{corrupt} (header of {size} bytes in a file of {len(data)})")
    try:
        header = json.loads(data[8:8 + size])
        meta = json.loads(header["__metadata__"][_META_KEY])
        tensors = st_load(data)
    except Exception as exc:   # json, key or safetensors errors: all mean the same to the user
        raise CheckpointError(f"{corrupt} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                              ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{corrupt} (metadata is not a JSON object)")
    return meta, tensors
