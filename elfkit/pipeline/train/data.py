"""The :class:`~elfkit.contracts.TrainData` implementation: shuffled, rank-sharded batches + embedding.

Sized data (a list of examples or a ``datasets.Dataset``) follow ``DistributedSampler``
semantics exactly: one permutation of all rows from ``seed + epoch``, cut to a multiple of
``world_size`` (drop_last), rank r takes rows ``r, r + W, r + 2W, …``, then consecutive
groups of ``batch_size`` (the incomplete last batch is dropped). The label-drop draws use a
generator seeded from (seed, epoch, rank), so a given (epoch, seed, rank, world_size)
always yields the same batches and a resumed run can skip the ones already consumed.

Streaming data (``datasets.IterableDataset``) are split with
``datasets.distributed.split_dataset_by_node`` and shuffled with a buffer; their epoch
length is unknown, so ``steps_per_epoch`` returns :data:`UNKNOWN_EPOCH_STEPS` and the run
is bounded by ``train.steps``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from elfkit.components.datasets.collate import Collator
from elfkit.components.datasets.splits import DataSplits
from elfkit.contracts import Embedder
from elfkit.errors import DataError
from elfkit.pipeline.train.latents import LatentCache, cacheable, embed_batch
from elfkit.records import Batch

log = logging.getLogger(__name__)

UNKNOWN_EPOCH_STEPS = 2**40
"""``steps_per_epoch`` of a streaming dataset of unknown size (one epoch outlasts any run)."""

CACHE_AUTO_MAX_BYTES = 4 * 2**30
"""'auto' latent caching only for corpora whose fp16 latents fit in this many bytes."""


def _is_streaming(examples: Any) -> bool:
    try:
        from datasets import IterableDataset
    except ImportError:  # pragma: no cover - datasets is a core dependency
        return False
    return isinstance(examples, IterableDataset)


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (independent streams for different (seed, epoch, rank))."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def shard_indices(n: int, epoch: int, seed: int, rank: int, world_size: int) -> list[int]:
    """DistributedSampler(shuffle=True, drop_last=True) order of rank ``rank``'s rows."""
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world_size {world_size}")
    g = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n, generator=g)
    total = (n // world_size) * world_size
    return order[:total][rank:total:world_size].tolist()


def _rows(examples: Any, idx: Sequence[int]) -> list[dict[str, Any]]:
    if isinstance(examples, Sequence):
        return [examples[i] for i in idx]
    cols = examples[list(idx)]                      # datasets.Dataset → dict of columns
    keys = [k for k in ("input_ids", "condition_input_ids") if k in cols]
    return [{k: cols[k][j] for k in keys} for j in range(len(idx))]


class ExampleTrainData:
    """TrainData over tokenised examples, a collator and an embedder (+ optional latent cache).

    Args:
        examples: list of dicts / ``datasets.Dataset`` / ``datasets.IterableDataset`` with
            ``input_ids`` and optionally ``condition_input_ids``.
        collator: builds each Batch (lengths, pad mode, label-drop probability).
        embedder: turns batches into latents (see :func:`elfkit.pipeline.train.latents.embed_batch`).
        latent_cache: precomputed latents of ``examples`` (rows in the same order), used
            when a batch carries ``example_index`` and drops no label.
        shuffle_buffer: buffer size for streaming shuffles.
    """

    def __init__(self, examples: Any, collator: Collator, embedder: Embedder, *,
                 latent_cache: LatentCache | None = None, shuffle_buffer: int = 10_000) -> None:
        self.examples = examples
        self.collator = collator
        self.embedder = embedder
        self.latent_cache = latent_cache
        self.streaming = _is_streaming(examples)
        self.shuffle_buffer = shuffle_buffer
        if latent_cache is not None and (self.streaming or len(latent_cache) != len(examples)):
            raise DataError("the latent cache does not match the examples (different length or streaming data)")

    # --- TrainData ------------------------------------------------------------------------
    def steps_per_epoch(self, *, batch_size: int, world_size: int = 1) -> int:
        if self.streaming:
            return UNKNOWN_EPOCH_STEPS
        return (len(self.examples) // world_size) // batch_size

    def batches(self, epoch: int, *, batch_size: int, seed: int, rank: int = 0,
                world_size: int = 1) -> Iterator[Batch]:
        if batch_size < 1:
            raise DataError(f"batch_size must be ≥ 1, got {batch_size}")
        gen = torch.Generator().manual_seed(_mix(seed, epoch, rank, world_size))
        if self.streaming:
            yield from self._stream_batches(epoch, batch_size, seed, rank, world_size, gen)
            return
        order = shard_indices(len(self.examples), epoch, seed, rank, world_size)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start: start + batch_size]
            yield self.collator(_rows(self.examples, idx), generator=gen, indices=idx)

    def embed(self, batch: Batch) -> Tensor:
        """x0 (B, S, D); from the latent cache when valid for this batch, else encoded live."""
        dropped = batch.label_drop is not None and bool(batch.label_drop.any())
        if self.latent_cache is not None and batch.example_index is not None and not dropped:
            return self.latent_cache.get(batch.example_index, device=batch.input_ids.device)
        return embed_batch(self.embedder, batch)

    # --- streaming ------------------------------------------------------------------------
    def _stream_batches(self, epoch: int, batch_size: int, seed: int, rank: int, world_size: int,
                        gen: torch.Generator) -> Iterator[Batch]:
        from datasets.distributed import split_dataset_by_node

        ds = split_dataset_by_node(self.examples, rank=rank, world_size=world_size)
        ds = ds.shuffle(seed=seed, buffer_size=self.shuffle_buffer)
        ds.set_epoch(epoch)
        buf: list[dict[str, Any]] = []
        for row in ds:
            buf.append(row)
            if len(buf) == batch_size:
                yield self.collator(buf, generator=gen)
                buf = []


def make_train_data(splits: DataSplits, embedder: Embedder, *, cache_dir: str | Path | None = None,
                    cache_latents: Literal["auto", "always", "never"] | None = None,
                    device: torch.device | str = "cpu") -> ExampleTrainData:
    """TrainData for a dataset's splits; builds (or reuses) a latent cache where the rule allows.

    The cache is built only for frozen embedders on unconditional fixed chunks without label
    drop (see :mod:`elfkit.pipeline.train.latents`), with a ``cache_dir``, and under 'auto' only when
    the fp16 latents fit in :data:`CACHE_AUTO_MAX_BYTES`. Otherwise batches are encoded live.
    ``cache_latents`` None = the dataset config's policy (``splits.cache_latents``).
    """
    cache_latents = cache_latents or splits.cache_latents  # type: ignore[assignment]
    cache = None
    if cache_latents != "never" and cache_dir is not None and splits.sized:
        why_not = cacheable(embedder, conditional=splits.conditional,
                            label_drop_prob=splits.collator.label_drop_prob, fixed_chunks=splits.fixed_chunks)
        size = len(splits.train) * splits.collator.max_length * embedder.dim * 2
        if why_not is None and cache_latents == "auto" and size > CACHE_AUTO_MAX_BYTES:
            why_not = f"the latents would take {size / 2**30:.1f} GiB (> {CACHE_AUTO_MAX_BYTES / 2**30:.0f} GiB)"
        if why_not is None:
            collator = splits.collator

            def collate(rows, idx):
                return collator(rows, indices=idx)

            cache = LatentCache.build(Path(cache_dir) / "latents", embedder, splits.train, collate,
                                      max_length=collator.max_length, fingerprint=splits.fingerprint, device=device)
        elif cache_latents == "always":
            log.warning("latent cache requested but not valid here (%s); encoding live", why_not)
        else:
            log.info("latents encoded live: %s", why_not)
    return ExampleTrainData(splits.train, splits.collator, embedder, latent_cache=cache)

