"""The evaluator contract and the checks every evaluator shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

from elfkit.errors import DataError
from elfkit.types import MetricRecord, SampleRecord

NO_MODEL = "n/a"
"""``precision`` of records computed without a model (counts, string matching)."""


@runtime_checkable
class Evaluator(Protocol):
    """``evaluator(samples, references=None) -> list[MetricRecord]`` for ONE seed's samples.

    Every record names the judge (model or scorer), its precision, the sample count and the
    seed. ``needs_references`` says whether the evaluator compares against references (BLEU,
    ROUGE); those are skipped for the real/shuffled reference rows.
    """

    needs_references: ClassVar[bool]

    def __call__(self, samples: list[SampleRecord], *,
                 references: list[str] | None = None) -> list[MetricRecord]: ...


def seed_of(samples: Sequence[SampleRecord], evaluator: str) -> int:
    """The one seed of a sample set (evaluators score one seed at a time)."""
    if not samples:
        raise DataError(f"{evaluator}: no samples to evaluate")
    seeds = {s.seed for s in samples}
    if len(seeds) != 1:
        raise DataError(f"{evaluator}: got samples of seeds {sorted(seeds)}; evaluate one seed at a time "
                        "(the evaluate stage groups samples.jsonl by seed)")
    return next(iter(seeds))


def references_for(samples: Sequence[SampleRecord], references: Sequence[str] | None, evaluator: str) -> list[str]:
    """Explicit references, else each sample's own ``reference`` (conditional tasks)."""
    if references is None:
        missing = [s.index for s in samples if s.reference is None]
        if missing:
            raise DataError(f"{evaluator} needs a reference text per sample, but samples {missing[:5]} have no "
                            "'reference' (only conditional tasks write them); pass references explicitly or "
                            f"remove {evaluator} from eval.evaluators")
        references = [s.reference for s in samples]  # type: ignore[misc]
    if len(references) != len(samples):
        raise DataError(f"{evaluator}: {len(samples)} samples but {len(references)} references")
    return list(references)
