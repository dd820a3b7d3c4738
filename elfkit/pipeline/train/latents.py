"""The embedding step of training: batch → clean latents x0, with ELF's label drop; and a
latent cache for frozen encoders on small corpora.

Label drop (condition CFG training, reference §2/§4.5) happens in two places:

1. *before* encoding, the (non-condition row, condition column) entries of the pairwise
   mask are zeroed for dropped examples, so their target latents are the encoder's
   unconditional encoding of the target (condition rows keep seeing the condition);
2. *after* encoding, the condition positions of x0 are zeroed for dropped examples (the
   objective also zeroes them in z).

Latent cache rule: cached latents are valid only when the latent of an example is a pure
function of its token ids, i.e. (a) the embedder is frozen, (b) the data are unconditional
fixed chunks (every example the same length, no condition, so no pairwise mask and nothing
label drop could change), and (c) ``label_drop_prob == 0``. Anything else (conditional data,
label drop, a trainable table) is encoded live every step. Latents are stored normalised,
in fp16, in one ``.npy`` opened memory-mapped, under a directory keyed by the embedder's
identity, the tokenizer name, ``max_length`` and the data fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from torch import Tensor

from elfkit.contracts import Embedder
from elfkit.errors import DataError
from elfkit.records import Batch

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------
# Label drop + embedding
# ----------------------------------------------------------------------------------------
def drop_condition_attention(pairwise: Tensor, cond_mask: Tensor, label_drop: Tensor) -> Tensor:
    """Zero (non-condition row, condition column) of the (B, S, S) mask for dropped rows (B,)."""
    block = (~cond_mask)[:, :, None] & cond_mask[:, None, :]              # (B, S, S)
    return pairwise & ~(label_drop[:, None, None] & block)


def embed_batch(embedder: Embedder, batch: Batch) -> Tensor:
    """x0 (B, S, D) for a collated batch, label drop applied before and after encoding.

    Frozen encoders run under ``torch.inference_mode()``; the result is cloned outside it so
    later autograd code can save it for backward (inference tensors cannot be).
    """
    mask = batch.pairwise_mask
    drop = batch.label_drop if batch.label_drop is not None and bool(batch.label_drop.any()) else None
    if drop is not None and mask is not None:
        mask = drop_condition_attention(mask, batch.cond_mask, drop)
    if getattr(embedder, "trainable", False):
        x0 = embedder.embed(batch.input_ids, mask)
    else:
        with torch.inference_mode():
            x0 = embedder.embed(batch.input_ids, mask)
        x0 = x0.clone()
    if drop is not None:
        zero_cond = drop.to(x0.device)[:, None, None] & batch.cond_mask.to(x0.device)[:, :, None]   # (B, S, 1)
        x0 = x0.masked_fill(zero_cond, 0.0)
    return x0


# ----------------------------------------------------------------------------------------
# Latent cache
# ----------------------------------------------------------------------------------------
def cache_key(embedder_identity: str, tokenizer_name: str, max_length: int, fingerprint: str) -> str:
    raw = json.dumps([embedder_identity, tokenizer_name, max_length, fingerprint])
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def cacheable(embedder: Embedder, *, conditional: bool, label_drop_prob: float, fixed_chunks: bool) -> str | None:
    """None if a latent cache is valid here, else the reason it is not (for the log)."""
    if getattr(embedder, "trainable", False):
        return "the embedder is trainable"
    if conditional:
        return "the data are conditional (pairwise masks, label drop)"
    if label_drop_prob > 0:
        return "label drop changes the latents from step to step"
    if not fixed_chunks:
        return "examples are not fixed-length chunks"
    if not getattr(embedder, "identity", None):
        return "the embedder has no `identity` to key the cache"
    return None


class LatentCache:
    """Normalised fp16 latents of every example, (N, S, D), memory-mapped from disk."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self._data = np.load(self.path / "latents.npy", mmap_mode="r")          # (N, S, D) fp16

    def __len__(self) -> int:
        return int(self._data.shape[0])

    def get(self, indices: Tensor, device: torch.device | str = "cpu") -> Tensor:
        """Latents (B, S, D) fp32 of the given example rows."""
        idx = indices.detach().cpu().numpy()
        return torch.from_numpy(np.ascontiguousarray(self._data[idx])).to(device).float()

    @classmethod
    def build(cls, root: str | Path, embedder: Embedder, examples: Sequence[dict[str, Any]],
              collate: Callable[[Sequence[dict[str, Any]], Sequence[int]], Batch], *, max_length: int,
              fingerprint: str, batch_size: int = 32, device: torch.device | str = "cpu") -> LatentCache:
        """Encode every example once (or reuse a finished cache with the same key).

        The array is written to a temporary name and renamed when complete, so an
        interrupted build is never mistaken for a finished one.
        """
        identity = getattr(embedder, "identity", None)   # optional Embedder member (see cacheable)
        if not identity:
            raise DataError("cannot key a latent cache: the embedder has no `identity`")
        key = cache_key(identity, embedder.tokenizer.name, max_length, fingerprint)
        path = Path(root) / f"latents-{key}"
        if (path / "meta.json").is_file():
            cache = cls(path)
            if len(cache) == len(examples):
                log.info("latent cache hit: %s", path)
                return cache
        if len(examples) == 0:
            raise DataError("cannot build a latent cache for an empty dataset")
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f"latents.{os.getpid()}.tmp.npy"
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                        shape=(len(examples), max_length, embedder.dim))
        log.info("building latent cache (%d examples) at %s", len(examples), path)
        starts = range(0, len(examples), batch_size)
        for start in track(starts, description="encoding latents (once)", console=Console(stderr=True),
                           transient=True):
            idx = list(range(start, min(start + batch_size, len(examples))))
            batch = collate([examples[i] for i in idx], idx).to(device)
            out[start: start + len(idx)] = embed_batch(embedder, batch).cpu().numpy().astype(np.float16)
        out.flush()
        del out
        os.replace(tmp, path / "latents.npy")
        meta = {"embedder": identity, "tokenizer": embedder.tokenizer.name, "max_length": max_length,
                "fingerprint": fingerprint, "n": len(examples), "dim": embedder.dim, "dtype": "float16"}
        (path / "meta.json").write_text(json.dumps(meta, indent=1))
        return cls(path)
