"""Evaluation: metric math, judges (the LMs behind Gen. PPL) and multi-seed aggregation.

Kept apart from the evaluator components so the numbers can be checked with a stub judge
and reused outside a run (``elfkit.eval.metrics`` is pure; ``judges`` loads models lazily).
"""

from elfkit.eval.aggregate import MetricRow, aggregate_records, mean_stderr
from elfkit.eval.metrics import (
    corpus_bleu,
    corpus_ppl,
    mean_unigram_entropy,
    ppl_weights,
    rouge_f1,
    unigram_entropy,
)

__all__ = [
    "MetricRow", "aggregate_records", "corpus_bleu", "corpus_ppl", "mean_stderr", "mean_unigram_entropy",
    "ppl_weights", "rouge_f1", "unigram_entropy",
]
