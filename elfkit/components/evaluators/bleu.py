"""``bleu``: sacreBLEU corpus BLEU, lowercased, effective order (the reference's De-En metric)."""

from __future__ import annotations

from typing import ClassVar

from elfkit.components.evaluators.base import NO_MODEL, references_for, seed_of
from elfkit.components.evaluators.metrics import corpus_bleu
from elfkit.config import ComponentConfig
from elfkit.records import MetricRecord, SampleRecord

SCORER = "sacrebleu-13a-lowercase"


class BLEUConfig(ComponentConfig):
    """No settings: the protocol (13a tokenisation, lowercase, effective order) is fixed."""


class BLEUEvaluator:
    needs_references: ClassVar[bool] = True

    def __init__(self, cfg: BLEUConfig) -> None:
        self.cfg = cfg

    def __call__(self, samples: list[SampleRecord], *, references: list[str] | None = None) -> list[MetricRecord]:
        seed = seed_of(samples, "bleu")
        refs = references_for(samples, references, "bleu")
        score = corpus_bleu([s.text for s in samples], refs)
        return [MetricRecord(name="bleu", value=score, n=len(samples), seed=seed, judge=SCORER, precision=NO_MODEL)]
