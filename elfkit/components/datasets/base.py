"""What every dataset component shares: the common config and the collator it implies.

A dataset component is built from its config and does its work in
``load(tokenizer, cache_dir=None) -> DataSplits``; the tokenizer comes from the embedder
(the embedder owns it), so the same data section works with any embedder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import Field, model_validator

from elfkit.components.datasets.collate import Collator
from elfkit.components.datasets.splits import DataSplits
from elfkit.config import ComponentConfig
from elfkit.contracts import TextTokenizer
from elfkit.errors import DataError


def default_cache_dir() -> Path:
    """``$ELFKIT_CACHE`` or ``~/.cache/elfkit`` (tokenised data, latents, fetched corpora)."""
    return Path(os.environ.get("ELFKIT_CACHE", Path.home() / ".cache" / "elfkit")).expanduser()


class DatasetConfig(ComponentConfig):
    max_length: int = Field(default=128, gt=1)
    """Sequence length S of every batch (condition + target + padding)."""
    max_input_length: int | None = Field(default=None, gt=0)
    """Conditional data: the condition is cut to this many tokens; None = unconditional."""
    pad: Literal["pad", "eos"] = "pad"
    """Fill the tail with the pad id ('pad': tail excluded from the loss) or EOS ('eos': trained)."""
    label_drop_prob: float = Field(default=0.0, ge=0, le=1)
    """Per-example probability of dropping the condition (CFG training; ELF De-En/XSum: 0.1)."""
    eval_size: int = Field(default=256, ge=0)
    """Held-out examples (or reference texts) kept for evaluation."""
    cache_dir: str | None = None
    """Tokenised data / latents / fetched corpora; None = $ELFKIT_CACHE or ~/.cache/elfkit."""
    streaming: bool = False
    """Stream from the source (datasets.IterableDataset) instead of materialising it."""
    cache_latents: Literal["auto", "always", "never"] = "auto"
    """Precompute frozen-encoder latents (unconditional fixed chunks without label drop only)."""
    max_train_examples: int | None = Field(default=None, gt=0)
    """Train on a fixed random subset of this many examples (CPU-sized runs); None = all."""

    @model_validator(mode="after")
    def _lengths(self) -> DatasetConfig:
        if self.max_input_length is not None and self.max_input_length >= self.max_length:
            raise ValueError(f"max_input_length ({self.max_input_length}) must be smaller than max_length "
                             f"({self.max_length}): the target needs room")
        return self


class UnconditionalConfig(DatasetConfig):
    @model_validator(mode="after")
    def _unconditional(self) -> UnconditionalConfig:
        if self.max_input_length is not None:
            raise ValueError("this dataset is unconditional: leave max_input_length unset")
        if self.label_drop_prob > 0:
            raise ValueError("label_drop_prob needs a condition; this dataset is unconditional")
        return self


class ConditionalConfig(DatasetConfig):
    @model_validator(mode="after")
    def _conditional(self) -> ConditionalConfig:
        if self.max_input_length is None:
            raise ValueError("conditional data need max_input_length (the condition's share of max_length)")
        return self


ConfigT = TypeVar("ConfigT", bound=DatasetConfig)


class TextDataset(Generic[ConfigT]):
    """Base of the built-in datasets (:class:`~elfkit.contracts.Dataset`): config, cache directory
    and collator. Generic in its config so each dataset reads its own fields typed."""

    conditional: ClassVar[bool] = False

    def __init__(self, cfg: ConfigT) -> None:
        self.cfg = cfg

    def cache_root(self, cache_dir: str | Path | None = None) -> Path:
        if self.cfg.cache_dir:
            root = Path(self.cfg.cache_dir)
        else:
            root = Path(cache_dir) if cache_dir else default_cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        return root

    def collator(self, tokenizer: TextTokenizer) -> Collator:
        c = self.cfg
        return Collator(max_length=c.max_length, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id,
                        max_input_length=c.max_input_length, pad=c.pad, label_drop_prob=c.label_drop_prob)

    def fingerprint(self, tokenizer: TextTokenizer, *extra: Any) -> str:
        """Identity of the tokenised data: config + tokenizer + whatever identifies the source."""
        skip = {"cache_dir", "cache_latents", "max_train_examples", "streaming"}
        cfg = self.cfg.model_dump(mode="json", exclude=skip)
        raw = json.dumps([type(self).__name__, cfg,
                          tokenizer.name, [str(e) for e in extra]], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def load(self, tokenizer: TextTokenizer, cache_dir: str | Path | None = None) -> DataSplits:
        raise NotImplementedError


def require_t5_ids(tokenizer: TextTokenizer, dataset_id: str) -> None:
    """Pre-tokenised official data hold T5 ids (V=32100, pad 0, EOS 1): other tokenizers would
    read garbage, so refuse them."""
    if (tokenizer.vocab_size, tokenizer.pad_id, tokenizer.eos_id) != (32100, 0, 1):
        raise DataError(f"'{dataset_id}' is pre-tokenised with the T5 tokenizer, but the embedder's tokenizer is "
                        f"{tokenizer.name} (V={tokenizer.vocab_size}); use the t5 embedder, or `source: raw` to "
                        "tokenise the raw text with this tokenizer")
