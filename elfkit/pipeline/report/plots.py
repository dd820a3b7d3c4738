"""PNG plots for reports and sweeps (matplotlib's Agg canvas; no display, no pyplot state)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

from elfkit.errors import MissingDependencyError
from elfkit.pipeline.report.table import FrontierPoint


def _figure(width: float = 6.4, height: float = 4.6):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError("plots need matplotlib: pip install 'elfkit[eval]'") from exc
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def frontier_plot(curves: Mapping[str, Sequence[FrontierPoint]], path: Path, *,
                  reference_entropy: float | None = None, reference_points: Mapping[str, FrontierPoint] = {},
                  judge: str | None = None, title: str = "Gen. PPL vs entropy",
                  sort_by_entropy: bool = True) -> Path:
    """Gen. PPL (log y) against unigram entropy: one curve per setting, each point labelled.

    Points are joined in entropy order, or as given (``sort_by_entropy=False``, e.g. by step
    count). ``reference_entropy`` draws the real-text entropy as a vertical line (the paper's
    data entropy: samples far below it are repetitive); ``reference_points`` are extra markers
    (real text, shuffled text). Long titles wrap to fit the figure.
    """
    fig = _figure()
    ax = fig.add_subplot()
    for name, pts in curves.items():
        pts = sorted(pts, key=lambda p: p.entropy) if sort_by_entropy else list(pts)
        if not pts:
            continue
        line = ax.errorbar([p.entropy for p in pts], [p.ppl for p in pts],
                           xerr=[p.entropy_se or 0.0 for p in pts], yerr=[p.ppl_se or 0.0 for p in pts],
                           marker="o", ms=4, capsize=2, label=name)
        color = line[0].get_color()
        for p in pts:
            if p.label:
                ax.annotate(p.label, (p.entropy, p.ppl), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color=color)
    for name, p in reference_points.items():
        ax.plot([p.entropy], [p.ppl], marker="*", ms=10, linestyle="none", label=name)
    if reference_entropy is not None:
        ax.axvline(reference_entropy, color="0.4", linestyle="--", linewidth=1,
                   label=f"real-text entropy ({reference_entropy:.2f})")
    ax.set_yscale("log")
    ax.set_xlabel("unigram entropy (nats) →  more diverse")
    ax.set_ylabel(f"Gen. PPL{f' ({judge})' if judge else ''}, log scale  ↓ better")
    ax.set_title("\n".join(textwrap.wrap(title, 64)), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def line_plot(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: Path, *, xlabel: str,
              ylabel: str, title: str = "", logy: bool = False) -> Path:
    """Simple curves (training losses against step)."""
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, linewidth=1.2, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 64)), fontsize=9)
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    """Lay out and write a figure, creating its folder."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
