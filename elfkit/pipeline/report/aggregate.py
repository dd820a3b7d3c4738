"""Multi-seed aggregation: one metric row per (metric, judge, precision), mean ± standard error.

The paper's Tab. 6 reports mean ± SE over evaluation seeds; SE = sd/√n with the sample
standard deviation (ddof=1) and n the number of seeds. With one seed there is no error to
report, so ``stderr`` is None rather than a misleading 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from elfkit.records import MetricRecord


@dataclass
class MetricRow:
    """One line of ``metrics.json``.

    ``n`` is the number of samples scored, summed over seeds; ``seeds`` the seeds aggregated
    (empty for the reference rows, which are one fixed text set); ``values`` the per-seed
    values in the order of ``seeds`` (one value for a reference row).
    """

    row: str
    metric: str
    mean: float
    stderr: float | None
    n: int
    seeds: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    judge: str | None = None
    precision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetricRow:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def mean_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error sd/√n (sample sd, ddof=1); stderr is None for a single value."""
    if not values:
        raise ValueError("no values to aggregate")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var) / math.sqrt(n)


def aggregate_records(records: Sequence[MetricRecord], row: str) -> list[MetricRow]:
    """Group per-seed records by (name, judge, precision), in first-seen order, and aggregate."""
    groups: dict[tuple[str, str | None, str | None], list[MetricRecord]] = {}
    for rec in records:
        groups.setdefault((rec.name, rec.judge, rec.precision), []).append(rec)
    out = []
    for (name, judge, precision), recs in groups.items():
        seeded = sorted(((r.seed, r) for r in recs if r.seed is not None), key=lambda sr: sr[0])
        seeds = [seed for seed, _ in seeded]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"metric '{name}' ({judge}) has two records for the same seed: {seeds}")
        ordered = [r for _, r in seeded] + [r for r in recs if r.seed is None]
        values = [float(r.value) for r in ordered]
        mean, se = mean_stderr(values)
        out.append(MetricRow(row=row, metric=name, mean=mean, stderr=se, n=sum(r.n for r in ordered),
                             seeds=seeds, values=values, judge=judge, precision=precision))
    return out
