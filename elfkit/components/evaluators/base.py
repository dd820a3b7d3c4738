"""The checks every evaluator shares (the contract is :class:`~elfkit.contracts.Evaluator`)."""

from __future__ import annotations

from collections.abc import Sequence

from elfkit.contracts import Evaluator
from elfkit.errors import DataError
from elfkit.records import SampleRecord

__all__ = ["NO_MODEL", "Evaluator", "references_for", "seed_of"]

NO_MODEL = "n/a"
"""``precision`` of records computed without a model (counts, string matching)."""


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
        references = [s.reference for s in samples if s.reference is not None]   # all of them (checked above)
    if len(references) != len(samples):
        raise DataError(f"{evaluator}: {len(samples)} samples but {len(references)} references")
    return list(references)
