"""Reading metric rows for people: number formatting, markdown tables, frontier points."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from elfkit.pipeline.report.aggregate import MetricRow

GPT2_ENTROPY_JUDGE = "gpt2-tokenizer"


def _decimals(x: float) -> int:
    ax = abs(x)
    if ax >= 1000:
        return 0
    if ax >= 100:
        return 1
    if ax >= 10:
        return 2
    return 3


def fmt(mean: float | None, stderr: float | None = None) -> str:
    """``24.08 ± 0.16``; the error gets the mean's decimals; NaN/None read as '—'."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    d = _decimals(mean)
    s = f"{mean:.{d}f}"
    if stderr is not None:
        s += f" ± {stderr:.{d}f}"
    return s


def md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def metrics_table(rows: Sequence[MetricRow]) -> str:
    """The metrics table of a report: one line per row of metrics.json."""
    body = [[r.row, r.metric, fmt(r.mean, r.stderr), str(r.n), ", ".join(map(str, r.seeds)) or "—",
             r.judge or "—", r.precision or "—"] for r in rows]
    return md_table(["rows", "metric", "mean ± s.e.", "n", "seeds", "judge", "precision"], body)


@dataclass(frozen=True)
class FrontierPoint:
    entropy: float
    entropy_se: float | None
    ppl: float
    ppl_se: float | None
    label: str = ""


def pick(rows: Sequence[MetricRow], metric: str, row: str = "samples",
         prefer_judge: str | None = None) -> MetricRow | None:
    """The row's metric, preferring one judge (entropy: the GPT-2 tokenizer's, the paper's)."""
    found = [r for r in rows if r.row == row and r.metric == metric]
    for r in found:
        if prefer_judge is not None and r.judge == prefer_judge:
            return r
    return found[0] if found else None


def frontier_point(rows: Sequence[MetricRow], row: str = "samples", label: str = "") -> FrontierPoint | None:
    """(entropy, Gen. PPL) of one row set, or None when either metric is missing."""
    ppl = pick(rows, "gen_ppl", row)
    ent = pick(rows, "entropy", row, prefer_judge=GPT2_ENTROPY_JUDGE)
    if ppl is None or ent is None:
        return None
    return FrontierPoint(ent.mean, ent.stderr, ppl.mean, ppl.stderr, label)
