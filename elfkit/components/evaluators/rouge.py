"""``rouge``: ROUGE-1/2/L (rouge_score, Porter stemmer), mean per-example F1 ×100 (XSum metric)."""

from __future__ import annotations

from typing import ClassVar

from elfkit.components.evaluators.base import NO_MODEL, references_for, seed_of
from elfkit.components.evaluators.metrics import rouge_f1
from elfkit.config import ComponentConfig
from elfkit.records import MetricRecord, SampleRecord

SCORER = "rouge_score-stemmed"


class ROUGEConfig(ComponentConfig):
    """No settings: rouge1/rouge2/rougeL (not Lsum) with stemming, as the reference."""


class ROUGEEvaluator:
    needs_references: ClassVar[bool] = True

    def __init__(self, cfg: ROUGEConfig) -> None:
        self.cfg = cfg

    def __call__(self, samples: list[SampleRecord], *, references: list[str] | None = None) -> list[MetricRecord]:
        seed = seed_of(samples, "rouge")
        refs = references_for(samples, references, "rouge")
        scores = rouge_f1([s.text for s in samples], refs)
        return [MetricRecord(name=k, value=v, n=len(samples), seed=seed, judge=SCORER, precision=NO_MODEL)
                for k, v in scores.items()]
