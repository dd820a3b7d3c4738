"""Tiny, fast pieces for training tests: the real ELF backbone at toy size, an in-memory
``TrainData`` over random tokens with a frozen random embedding table (or a learned one),
and a ``Components`` builder. Shared by the objective, trainer and distributed tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from elfkit.components.embedders import LearnedTable, LearnedTableConfig
from elfkit.components.objectives import ElfObjective, ElfObjectiveConfig
from elfkit.components.targets import TargetConfig, XTarget
from elfkit.components.time import LogitNormalConfig, LogitNormalTime
from elfkit.core.flow import FlowPath
from elfkit.pipeline.build import Components, tie_unembedding
from elfkit.recipe.schema import Recipe, TrainSection
from elfkit.registry import build_registry
from elfkit.types import Batch


def tiny_elf(latent_dim: int = 8, vocab_size: int = 16, max_length: int = 8, **kw: Any) -> nn.Module:
    """The real ELF backbone (registry ``backbone/elf``) at toy size."""
    cfg = {"preset": None, "depth": 2, "width": 32, "heads": 4, "bottleneck_dim": 8, "decoder_hidden": 24,
           "latent_dim": latent_dim, "vocab_size": vocab_size, "max_length": max_length, **kw}
    return build_registry(entry_points=False).build("backbone", "elf", cfg)


class TableEmbedder(nn.Module):
    """Frozen random token table: x0 = table[ids] (a stand-in for a real embedder)."""

    def __init__(self, vocab_size: int, dim: int, seed: int = 123) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Embedding(vocab_size, dim)
        with torch.no_grad():
            self.table.weight.copy_(torch.randn(vocab_size, dim, generator=g))
        self.dim = dim
        self.trainable = False
        self.tokenizer = SimpleNamespace(name="random-table", vocab_size=vocab_size, eos_id=1, pad_id=0)

    def embed(self, input_ids: Tensor, pairwise_mask: Tensor | None = None) -> Tensor:
        return self.table(input_ids)


class MemoryData:
    """Random token rows; an epoch is a seeded permutation cut into global blocks of
    ``batch_size·world_size`` rows, and rank r takes block ``i·world_size + r`` as its i-th
    batch, so 2 ranks × 1 micro-batch see the same rows as 1 rank × 2 micro-batches."""

    def __init__(self, embedder: TableEmbedder, n: int = 64, seq: int = 8, cond_len: int = 0,
                 label_drop_every: int = 0, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.embedder = embedder
        self.ids = torch.randint(2, embedder.tokenizer.vocab_size, (n, seq), generator=g)
        self.n, self.seq, self.cond_len, self.label_drop_every = n, seq, cond_len, label_drop_every
        self.fetched = 0   # batches handed out (tests hook into this)

    def steps_per_epoch(self, *, batch_size: int, world_size: int = 1) -> int:
        return self.n // (batch_size * world_size)

    def batch_for(self, idx: Tensor) -> Batch:
        ids = self.ids[idx]
        pos = torch.arange(self.seq)[None].expand(len(idx), -1)
        cond = pos < self.cond_len
        valid = torch.ones_like(cond)
        drop = None
        if self.label_drop_every:
            drop = (idx % self.label_drop_every) == 0
        return Batch(input_ids=ids, valid_mask=valid, cond_mask=cond, loss_mask=(valid & ~cond).float(),
                     label_drop=drop)

    def batches(self, epoch: int, *, batch_size: int, seed: int, rank: int = 0,
                world_size: int = 1) -> Iterator[Batch]:
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for i in range(self.steps_per_epoch(batch_size=batch_size, world_size=world_size)):
            block = i * world_size + rank
            self.fetched += 1
            yield self.batch_for(perm[block * batch_size:(block + 1) * batch_size])

    def embed(self, batch: Batch) -> Tensor:
        return self.embedder.embed(batch.input_ids)


def learned_table(vocab_size: int, dim: int, *, tie: bool) -> LearnedTable:
    """A ``learned-table`` embedder over a toy tokenizer (N(0, 1) init from the torch RNG)."""
    tok = SimpleNamespace(name="toy", vocab_size=vocab_size, eos_id=1, pad_id=0)
    return LearnedTable(LearnedTableConfig(dim=dim, tie_unembedding=tie), tokenizer=tok)


def make_components(*, seed: int = 0, objective: dict | None = None, backbone: dict | None = None,
                    n: int = 64, seq: int = 8, cond_len: int = 0, label_drop_every: int = 0,
                    table: Literal["frozen", "tied", "untied"] = "frozen",
                    **train: Any) -> tuple[Components, MemoryData]:
    """Components + data for a tiny run; ``train`` keys override :class:`TrainSection`.

    ``table``: the frozen :class:`TableEmbedder`, or a ``learned-table`` tied to the decoder's
    unembedding (``decoder_hidden`` then defaults to ``latent_dim``) or untied."""
    bb_kw = {"latent_dim": 8, "vocab_size": 16, "max_length": seq, **(backbone or {})}
    if table == "tied":
        bb_kw.setdefault("decoder_hidden", bb_kw["latent_dim"])
    torch.manual_seed(seed)
    net = tiny_elf(**bb_kw)
    if table == "frozen":
        emb = TableEmbedder(bb_kw["vocab_size"], bb_kw["latent_dim"])
    else:
        emb = learned_table(bb_kw["vocab_size"], bb_kw["latent_dim"], tie=table == "tied")
        tie_unembedding(emb, net)
    data = MemoryData(emb, n=n, seq=seq, cond_len=cond_len, label_drop_every=label_drop_every, seed=seed)
    train_kw = {"steps": 10, "batch_size": 8, "checkpoint_every": 5, "log_every": 1, "warmup_steps": 2, **train}
    recipe = Recipe(name="tiny", seed=seed, data={"name": "memory"}, embedder={"name": "table"},
                    backbone={"name": "tiny"}, objective={"name": "elf", **(objective or {})},
                    train=TrainSection(**train_kw))
    comps = Components(recipe=recipe, registry=None, dataset=data, embedder=emb, backbone=net,
                       target=XTarget(TargetConfig(loss_space="v")),
                       time=LogitNormalTime(LogitNormalConfig(mean=-1.5, std=0.8)),
                       objective=ElfObjective(ElfObjectiveConfig(**(objective or {}))), path=FlowPath(noise_scale=2.0))
    return comps, data
