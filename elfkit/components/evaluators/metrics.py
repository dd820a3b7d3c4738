"""Metric math, exactly as the ELF reference protocol computes it. Pure functions, no models.

Gen. PPL (elf-official-code.md §7.1): samples are retokenised with the judge's tokenizer (no
BOS), truncated, right-padded with EOS; the first token of each row is never scored (it has no
context); a target is weighted 1 if it is not EOS *or* it is the row's first EOS, so a sample
that ends before the padding is charged for predicting its end once; the corpus PPL is
token-weighted, ``exp(Σ NLL·w / Σ w)``, not a mean of per-sample PPLs.

Entropy: per sample, the unigram entropy (natural log) of its own token ids over its
non-padding length, then the mean over samples. BLEU and ROUGE follow §7.2.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

from elfkit.errors import MissingDependencyError


# ----------------------------------------------------------------------------------------
# Generative perplexity
# ----------------------------------------------------------------------------------------
def pad_right(seqs: Sequence[Sequence[int]], pad_id: int, width: int) -> tuple[Tensor, Tensor]:
    """Right-pad id lists to ``width``: ids (B, W) long and attention mask (B, W) long (1 = real)."""
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        n = min(len(s), width)
        ids[i, :n] = torch.as_tensor(list(s[:n]), dtype=torch.long)
        mask[i, :n] = 1
    return ids, mask


def ppl_weights(ids: Tensor, eos_id: int) -> Tensor:
    """Weights of the targets ``ids[:, 1:]``: non-EOS tokens and the first EOS of each row.

    Args:
        ids: (B, S) padded judge token ids (padding is EOS).
    Returns:
        (B, S−1) float; position j weighs the prediction of ``ids[:, j+1]``.
    """
    is_eos = ids == eos_id                                   # (B, S)
    first_eos = is_eos & (is_eos.cumsum(-1) == 1)            # (B, S) only the first EOS
    return (~is_eos | first_eos)[:, 1:].float()              # (B, S-1)


def nll_totals(nll: Tensor, weights: Tensor) -> tuple[float, float]:
    """(Σ NLL·w, Σ w) in float64, for summing over batches before the one exp."""
    if nll.shape != weights.shape:
        raise ValueError(f"nll {tuple(nll.shape)} and weights {tuple(weights.shape)} must have the same shape")
    return float((nll.double() * weights.double()).sum()), float(weights.double().sum())


def ppl_from_totals(nll_sum: float, count: float) -> float:
    """Token-weighted corpus perplexity ``exp(Σ NLL·w / Σ w)``."""
    if count <= 0:
        raise ValueError("no scored tokens: every sample is empty or a single token")
    return math.exp(nll_sum / count)


def corpus_ppl(nll: Tensor, weights: Tensor) -> float:
    """Corpus PPL of one padded batch: nll and weights both (B, S−1)."""
    return ppl_from_totals(*nll_totals(nll, weights))


# ----------------------------------------------------------------------------------------
# Unigram entropy
# ----------------------------------------------------------------------------------------
def unigram_entropy(ids: Sequence[int]) -> float:
    """``−Σ p·ln p`` of the sequence's own token histogram (nats)."""
    if len(ids) == 0:
        raise ValueError("unigram entropy of an empty sequence is undefined (drop empty samples first)")
    n = len(ids)
    return -sum((c / n) * math.log(c / n) for c in Counter(ids).values())


def mean_unigram_entropy(seqs: Sequence[Sequence[int]]) -> float:
    """Average of the per-sample unigram entropies (each sample weighs the same)."""
    if not seqs:
        raise ValueError("no samples to compute entropy over")
    return sum(unigram_entropy(s) for s in seqs) / len(seqs)


# ----------------------------------------------------------------------------------------
# BLEU / ROUGE (conditional tasks)
# ----------------------------------------------------------------------------------------
def _check_pairs(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references; they must pair up one to one")
    if not hyps:
        raise ValueError("no hypotheses to score")


def corpus_bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """sacreBLEU corpus BLEU, lowercased, 13a tokenisation, effective order (0–100)."""
    _check_pairs(hyps, refs)
    try:
        import sacrebleu
    except ImportError as exc:
        raise MissingDependencyError("BLEU needs sacrebleu: pip install 'elfkit[eval]'") from exc
    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)], lowercase=True, use_effective_order=True).score)


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_f1(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean per-example ROUGE-1/2/L F1 ×100 (rouge_score, Porter stemmer; L, not Lsum)."""
    _check_pairs(hyps, refs)
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:
        raise MissingDependencyError("ROUGE needs rouge-score: pip install 'elfkit[eval]'") from exc
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hyp, ref in zip(hyps, refs, strict=True):
        scores = scorer.score(ref, hyp)                      # (target, prediction)
        for k in ROUGE_TYPES:
            sums[k] += scores[k].fmeasure
    return {k: 100.0 * v / len(hyps) for k, v in sums.items()}
