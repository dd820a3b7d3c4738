"""Generative perplexity and entropy of a text set under a judge (the reference protocol).

Texts are retokenised with the judge's tokenizer (no BOS) and truncated to ``max_length``;
texts with no tokens are dropped. The reference pads *all* samples to the longest one; we
batch longest-first and pad each batch to ``min(longest overall, longest in batch + 1)``,
which gives every row that the reference pads at least its first padding EOS, so the scored
set (and the number) is the same while short batches cost less.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from elfkit.errors import DataError
from elfkit.eval.judges import Judge
from elfkit.eval.metrics import mean_unigram_entropy, nll_totals, pad_right, ppl_from_totals, ppl_weights
from elfkit.types import TextTokenizer


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
