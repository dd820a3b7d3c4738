"""Collation: token-id examples → a fixed-length :class:`~elfkit.records.Batch`, exactly as ELF builds it.

Per example (ELF ``get_dataloader.collate_fn``):

1. ``seq = condition[:max_input_length] ++ input_ids`` (``cond_len = len(condition)`` after
   the cut), or just ``input_ids`` when the example has no condition;
2. truncate ``seq`` to ``max_length`` (this cuts the *target*), right-pad to ``max_length``
   with the pad id (``pad="pad"``) or the EOS id (``pad="eos"``);
3. masks from ``pos = arange(S)``: ``cond = pos < cond_len``, ``valid = pos < total_len``.

The loss mask is ``(valid if pad == "pad" else 1)·(1 − cond)``: with EOS padding the tail is
trained, which is how a conditional model learns the output length. There is no packing
and no dynamic length: every batch is exactly ``max_length`` wide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from elfkit.errors import DataError
from elfkit.records import Batch

PadMode = Literal["pad", "eos"]


# ----------------------------------------------------------------------------------------
# Pure mask math
# ----------------------------------------------------------------------------------------
def sequence_masks(cond_len: Tensor, total_len: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """``(cond_mask, valid_mask)``, both (B, S) bool, from per-example lengths (B,)."""
    pos = torch.arange(seq_len, device=cond_len.device)
    return pos[None] < cond_len[:, None], pos[None] < total_len[:, None]


def pairwise_mask(cond_mask: Tensor, valid_mask: Tensor) -> Tensor:
    """The encoder's (B, S, S) bool mask: row i may attend column j.

    A condition row sees only condition columns (so condition latents depend on the
    condition alone); every other row, target *and* padding, sees every valid column.
    Padding columns are never attended.
    """
    cond_rows = cond_mask[:, :, None]                                   # (B, S, 1)
    return torch.where(cond_rows, cond_mask[:, None, :], valid_mask[:, None, :])   # (B, S, S)


def loss_mask(valid_mask: Tensor, cond_mask: Tensor, pad: PadMode) -> Tensor:
    """(B, S) float: ``(valid if pad == "pad" else 1)·(1 − cond)`` (EOS padding is trained)."""
    keep = valid_mask if pad == "pad" else torch.ones_like(valid_mask)
    return (keep & ~cond_mask).float()


def draw_label_drop(batch_size: int, prob: float, generator: torch.Generator | None) -> Tensor:
    """(B,) bool, one Bernoulli(prob) per example; draws nothing when ``prob == 0`` (ELF)."""
    if prob <= 0:
        return torch.zeros(batch_size, dtype=torch.bool)
    return torch.rand(batch_size, generator=generator) < prob


# ----------------------------------------------------------------------------------------
# The collator
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Collator:
    """Turns examples ``{"input_ids": [...], "condition_input_ids": [...]?}`` into a Batch.

    ``max_input_length`` cuts the condition (None: no cut). ``pad_id``/``eos_id`` come from
    the tokenizer; ``pad`` picks which one fills the tail. ``label_drop_prob`` is the
    per-example probability of dropping the condition (CFG training); the draw uses the
    generator passed to ``__call__`` so a (seed, epoch, rank) fixes it.
    """

    max_length: int
    pad_id: int
    eos_id: int
    max_input_length: int | None = None
    pad: PadMode = "pad"
    label_drop_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise DataError(f"max_length must be ≥ 1, got {self.max_length}")
        if self.max_input_length is not None and not 0 < self.max_input_length < self.max_length:
            raise DataError(f"max_input_length must be in [1, max_length={self.max_length}), "
                            f"got {self.max_input_length}")
        if self.pad not in ("pad", "eos"):
            raise DataError(f"pad must be 'pad' or 'eos', got {self.pad!r}")
        if not 0.0 <= self.label_drop_prob <= 1.0:
            raise DataError(f"label_drop_prob must be in [0, 1], got {self.label_drop_prob}")

    @property
    def fill_id(self) -> int:
        return self.pad_id if self.pad == "pad" else self.eos_id

    def sequence(self, example: Mapping[str, Any]) -> tuple[list[int], int]:
        """``(seq, cond_len)`` for one example, before truncation to ``max_length``."""
        target = list(example["input_ids"])
        cond = example.get("condition_input_ids")
        if cond is None:
            return target, 0
        cond = list(cond)
        if self.max_input_length is not None:
            cond = cond[: self.max_input_length]
        return cond + target, len(cond)

    def __call__(self, examples: Sequence[Mapping[str, Any]], generator: torch.Generator | None = None,
                 indices: Sequence[int] | None = None) -> Batch:
        if not examples:
            raise DataError("cannot collate an empty list of examples")
        S = self.max_length
        ids = torch.full((len(examples), S), self.fill_id, dtype=torch.long)       # (B, S)
        cond_len = torch.zeros(len(examples), dtype=torch.long)
        total_len = torch.zeros(len(examples), dtype=torch.long)
        for b, ex in enumerate(examples):
            seq, c = self.sequence(ex)
            seq = seq[:S]
            if seq:
                ids[b, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            cond_len[b] = min(c, S)
            total_len[b] = len(seq)
        cond, valid = sequence_masks(cond_len, total_len, S)                     # (B, S) ×2
        conditional = bool(cond.any())
        # an all-True mask carries no information: skip the (B, S, S) tensor for full chunks
        pm = pairwise_mask(cond, valid) if conditional or not bool(valid.all()) else None
        drop = draw_label_drop(len(examples), self.label_drop_prob, generator)
        if not conditional:
            drop = torch.zeros_like(drop)
        return Batch(
            input_ids=ids, valid_mask=valid, cond_mask=cond, loss_mask=loss_mask(valid, cond, self.pad),
            pairwise_mask=pm, label_drop=drop,
            example_index=None if indices is None else torch.as_tensor(list(indices), dtype=torch.long),
        )
