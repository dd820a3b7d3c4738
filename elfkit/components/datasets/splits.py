"""What a dataset component's ``load`` returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from elfkit.components.datasets.collate import Collator

# A split is anything indexable by row that yields {"input_ids": [...], "condition_input_ids": [...]?}:
# a list of dicts, a datasets.Dataset, or (streaming) a datasets.IterableDataset.
Examples = Any


@dataclass(frozen=True)
class EvalPair:
    """One held-out conditional example: the source text, its reference, and the condition ids
    (already ending with EOS, exactly as training sees them)."""

    source: str
    reference: str
    condition_ids: list[int]


@dataclass
class DataSplits:
    """Tokenised train/eval splits plus what evaluation needs.

    train / eval:  examples ``{"input_ids", "condition_input_ids"?}`` (eval may be None).
    collator:      builds Batches for these examples (lengths, pad mode, label drop).
    conditional:   True when examples carry a condition.
    eval_texts:    unconditional: held-out raw texts (reference rows for Gen. PPL etc.).
    eval_pairs:    conditional: held-out (source, reference, condition ids).
    fingerprint:   identity of the tokenised training data (latent-cache key).
    fixed_chunks:  every training example is exactly ``max_length`` tokens, unconditional.
    cache_latents: the dataset config's latent-cache policy ('auto' | 'always' | 'never').
    """

    train: Examples
    eval: Examples | None
    collator: Collator
    conditional: bool
    eval_texts: list[str] = field(default_factory=list)
    eval_pairs: list[EvalPair] = field(default_factory=list)
    fingerprint: str = ""
    fixed_chunks: bool = False
    cache_latents: str = "auto"
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sized(self) -> bool:
        return isinstance(self.train, Sequence) or hasattr(self.train, "__len__")
