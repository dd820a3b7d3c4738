"""Sweeps: the cartesian product of a grid of recipe settings, trained and sampled economically.

Grid keys are dotted recipe keys, with the command-line short forms (``target`` for
``target.name``, ``sampler.steps`` for ``sample.sampler.steps``, ``guidance.scale`` for
``sample.guidance.scale``). Keys under ``sample.*`` and ``eval.*`` are *sampling* settings;
all others are *training* settings. Each distinct training setting is trained once, in
``OUT/<slug>-<hash>/``; each sampling setting is sampled and evaluated from that checkpoint in
``OUT/<train>/sampling/<slug>-<hash>/``. The training hash covers the resolved training
settings and the sampling hash the resolved sample section, so editing the base recipe gives
new directories instead of silently reusing old results (eval-only changes re-evaluate in
place). Every stage skips finished work and resumes half-finished work, so rerunning a sweep
resumes it. The held-out reference texts (written into the training directory when the data
is prepared) are copied into each sampling directory for its reference rows.

Outputs: ``sweep.md`` (table + plot), ``sweep.csv`` (one row per setting: the grid keys,
then ``<metric>`` and ``<metric>_stderr`` per metric) and ``frontier.png`` (Gen. PPL vs
entropy: the swept step count as the points of a line, one line per setting of the other keys
— one per sampler when the grid sweeps ``sampler`` and ``sampler.steps`` —, real and shuffled
text as reference markers, the real-text entropy as a reference line).
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elfkit.errors import RecipeError
from elfkit.fileio import atomic_write_text
from elfkit.pipeline.evaluate import evaluate_stage, read_metrics
from elfkit.pipeline.interrupts import interruptible
from elfkit.pipeline.report.aggregate import MetricRow
from elfkit.pipeline.report.document import write_report
from elfkit.pipeline.report.plots import frontier_plot
from elfkit.pipeline.report.table import GPT2_ENTROPY_JUDGE, FrontierPoint, fmt, frontier_point, md_table, pick
from elfkit.pipeline.rundir import RunDir, fingerprint, training_fingerprint
from elfkit.pipeline.sample import sample_stage
from elfkit.pipeline.train.guard import TrainingDiverged
from elfkit.pipeline.train.stage import train_stage
from elfkit.recipe.load import canonical_key, load_recipe, resolved_dict
from elfkit.recipe.schema import Recipe
from elfkit.registry import Registry, default_registry

log = logging.getLogger(__name__)

SAMPLING_PREFIXES = ("sample.", "eval.")
SAMPLING_DIR = "sampling"


# ----------------------------------------------------------------------------------------
# The grid
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridKey:
    label: str       # as the user wrote it (column name)
    key: str         # canonical dotted recipe key
    values: tuple[Any, ...]

    @property
    def sampling(self) -> bool:
        return self.key.startswith(SAMPLING_PREFIXES) or self.key in ("sample", "eval")


def parse_grid(grid: dict[str, Sequence[Any]]) -> list[GridKey]:
    out: list[GridKey] = []
    seen: dict[str, str] = {}
    for label, values in grid.items():
        key = canonical_key(str(label))
        if key in seen:
            raise RecipeError(f"sweep grid: '{label}' and '{seen[key]}' both set {key}; keep one")
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
            raise RecipeError(f"sweep grid: '{label}' needs a non-empty list of values, got {values!r}")
        seen[key] = str(label)
        out.append(GridKey(str(label), key, tuple(values)))
    return out


def check_grid(recipe_path: Path, grid: Mapping[str, Sequence[Any]], overrides: Sequence[str] = (), *,
               registry: Registry | None = None) -> None:
    """Validate every value of every grid key as the sweep would apply it; raise one
    :class:`RecipeError` listing each bad key or value (``recipe validate`` runs this)."""
    problems: list[str] = []
    try:
        keys = parse_grid(dict(grid))
    except RecipeError as exc:
        raise RecipeError(f"{recipe_path}: {exc}") from None
    for k in keys:
        for i, v in enumerate(k.values):
            try:
                load_recipe(recipe_path, [*overrides, *to_overrides({k.label: v}, [k])], registry=registry)
            except RecipeError as exc:
                hint = ""
                if k.key.endswith(".name") and isinstance(v, dict):
                    hint = (f" ('{k.label}' is short for {k.key}, a name; to sweep whole component configs "
                            f"use the key {k.key.removesuffix('.name')})")
                first = str(exc).splitlines()[0]
                problems.append(f"sweep.grid.{k.label}[{i}] = {json.dumps(v)} (as {k.key}){hint}: {first}")
    if problems:
        raise RecipeError(f"{recipe_path}: the sweep grid has values that do not validate:\n" + "\n".join(problems))


def combos(keys: Sequence[GridKey]) -> list[dict[str, Any]]:
    """Cartesian product as {label: value} dicts, in grid order (one empty dict for no keys)."""
    labels = [k.label for k in keys]
    return [dict(zip(labels, vals, strict=True)) for vals in itertools.product(*[k.values for k in keys])]


def to_overrides(setting: dict[str, Any], keys: Sequence[GridKey]) -> list[str]:
    by_label = {k.label: k.key for k in keys}
    # JSON is valid YAML, so strings, numbers, lists and component dicts all round-trip through --set
    return [f"{by_label[label]}={json.dumps(v)}" for label, v in setting.items()]


def _short(v: Any) -> str:
    if isinstance(v, dict):
        name = str(v.get("name", ""))
        rest = "-".join(f"{k}{_short(x)}" for k, x in v.items() if k != "name")
        return "-".join(p for p in (name, rest) if p)
    if isinstance(v, list | tuple):
        return "+".join(_short(x) for x in v)
    return str(v)


def slug(setting: dict[str, Any], fp: str) -> str:
    """A readable, filesystem-safe directory name: ``target=v_embedder=minilm-3fa2c1d0``."""
    text = "_".join(f"{label.split('.')[-1]}={_short(v)}" for label, v in setting.items()) or "base"
    text = re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-")[:60]
    return f"{text}-{fp[:8]}"


def describe(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in setting.items()) or "base"


def _steps_in(value: Any) -> Any:
    return value.get("steps") if isinstance(value, dict) else None


def frontier_curves(results: Sequence[SettingResult],
                    keys: Sequence[GridKey]) -> tuple[dict[str, list[FrontierPoint]], str]:
    """The frontier's lines and what their points are.

    The point axis is the swept step count (a ``*.steps`` key, or the ``steps`` of whole
    sampler configs); without one, the last sampling key. Every other key's value names the
    line, so sweeping ``sampler`` × ``sampler.steps`` gives one line per sampler with its step
    counts as labelled points, in step order.
    """
    sampling = [k for k in keys if k.sampling]
    axis = next((k for k in sampling if k.key.endswith(".steps")), None)
    whole = None if axis is not None else next(
        (k for k in sampling if all(_steps_in(v) is not None for v in k.values)), None)
    if axis is None and whole is None and sampling:
        axis = sampling[-1]
    curves: dict[str, list[tuple[float, FrontierPoint]]] = {}
    for r in results:
        setting = {**r.train, **r.sample}
        line, label, order = [], "", 0.0
        for k in keys:
            v = setting[k.label]
            if k is axis:
                label = f"{_short(v)}" if k.key.endswith(".steps") else f"{k.label.split('.')[-1]}={_short(v)}"
                order = float(v) if isinstance(v, int | float) else 0.0
            elif k is whole:
                label, order = f"{_steps_in(v)}", float(_steps_in(v))
                line.append(f"{k.label}={_short({kk: vv for kk, vv in v.items() if kk != 'steps'})}")
            else:
                line.append(f"{k.label}={_short(v)}")
        p = frontier_point(r.rows, label=label)
        if p is not None:
            curves.setdefault(", ".join(line) or "samples", []).append((order, p))
    points = "steps" if (axis is not None and axis.key.endswith(".steps")) or whole is not None else (
        axis.label if axis is not None else "settings")
    return {name: [p for _, p in sorted(pts, key=lambda op: op[0])] for name, pts in curves.items()}, points


# ----------------------------------------------------------------------------------------
# Running the settings
# ----------------------------------------------------------------------------------------
def _share_references(train_dir: Path, sample_dir: Path) -> None:
    """The held-out texts are written where the data is prepared (the training directory);
    each sampling directory gets a copy so its evaluation can score the reference rows."""
    src, dst = RunDir(train_dir).references, RunDir(sample_dir).references
    if src.is_file() and (not dst.is_file() or dst.read_bytes() != src.read_bytes()):
        atomic_write_text(dst, src.read_text(encoding="utf-8"))


@dataclass
class SettingResult:
    """One sampled setting's metrics; ``diverged`` holds the divergence guard's message when its
    training setting diverged (then ``rows`` is empty and ``run_dir`` is the training directory)."""

    train: dict[str, Any]
    sample: dict[str, Any]
    run_dir: Path
    rows: list[MetricRow]
    diverged: str | None = None


# ----------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------
def _sweep_kept(args: Mapping[str, Any]) -> str:
    return (f"Finished settings in {args['out_dir']} are kept; rerun the same command to continue with the rest "
            "(finished ones are skipped).")


@interruptible("sweep", _sweep_kept)
def run_sweep(recipe_path: Path, grid: dict[str, list], out_dir: Path, *, overrides: Sequence[str] = (),
              seeds: Sequence[int] | None = None, registry: Registry | None = None) -> Path:
    """Run (or resume) the sweep; returns the path of ``sweep.md``.

    ``grid`` adds to (and overrides keys of) the recipe's ``sweep.grid``; ``overrides`` are
    ``--set`` items applied to every setting; ``seeds`` sets ``sample.seeds``.
    """
    recipe_path, out_dir = Path(recipe_path), Path(out_dir)
    base_overrides = [*overrides, *([f"sample.seeds={json.dumps(list(seeds))}"] if seeds else [])]
    base = load_recipe(recipe_path, base_overrides, registry=registry)
    merged = {**(base.sweep.grid if base.sweep else {}), **(grid or {})}
    if not merged:
        raise RecipeError(f"{recipe_path}: nothing to sweep; add a `sweep: {{grid: {{KEY: [v1, v2]}}}}` section "
                          "or pass --grid KEY=v1,v2")
    keys = parse_grid(merged)
    train_keys = [k for k in keys if not k.sampling]
    sample_keys = [k for k in keys if k.sampling]
    registry = registry or default_registry(base.plugins)

    # resolve every setting before training anything, so a bad value fails in seconds, not hours
    plan: list[tuple[dict[str, Any], Recipe, Path, list[tuple[dict[str, Any], Recipe, Path]]]] = []
    for tset in combos(train_keys):
        t_over = base_overrides + to_overrides(tset, train_keys)
        t_recipe = load_recipe(recipe_path, t_over, registry=registry)
        t_dir = out_dir / slug(tset, training_fingerprint(resolved_dict(t_recipe)))
        subs = []
        for sset in combos(sample_keys):
            s_recipe = load_recipe(recipe_path, t_over + to_overrides(sset, sample_keys), registry=registry)
            # samples depend on the sample section only; eval settings are re-checked by evaluate_stage
            s_fp = fingerprint({"sample": resolved_dict(s_recipe)["sample"], "setting": sset})
            subs.append((sset, s_recipe, t_dir / SAMPLING_DIR / slug(sset, s_fp)))
        plan.append((tset, t_recipe, t_dir, subs))
    n = sum(len(p[3]) for p in plan)
    log.info("sweep: %d training setting(s), %d sampled setting(s) in %s", len(plan), n, out_dir)

    results: list[SettingResult] = []
    for tset, t_recipe, t_dir, subs in plan:
        log.info("training setting: %s", describe(tset))
        t_dir.mkdir(parents=True, exist_ok=True)
        try:
            ckpt = train_stage(t_recipe, t_dir)
        except TrainingDiverged as exc:   # one bad setting (an LR too high) must not cost the others
            write_report(t_dir)           # how it diverged: loss curve, skipped and spike steps
            log.warning("training setting %s diverged; going on with the others", describe(tset))
            results += [SettingResult(tset, sset, t_dir, [], diverged=str(exc)) for sset, _, _ in subs]
            continue
        write_report(t_dir)  # the training side: loss curve and settings
        for sset, s_recipe, s_dir in subs:
            log.info("sampling setting: %s / %s", describe(tset), describe(sset))
            RunDir(s_dir).write_recipe(s_recipe)
            _share_references(t_dir, s_dir)
            samples = sample_stage(ckpt, s_dir, s_recipe)
            metrics = evaluate_stage(samples, s_dir, s_recipe, registry)
            write_report(s_dir)
            results.append(SettingResult(tset, sset, s_dir, read_metrics(metrics)))
    md = write_sweep_outputs(results, keys, out_dir)
    diverged = {describe(r.train): r.run_dir for r in results if r.diverged is not None}
    if diverged:
        raise TrainingDiverged(
            f"{len(diverged)} of {len(plan)} training setting(s) diverged: "
            + "; ".join(f"{name} (see {path / 'report.md'})" for name, path in diverged.items())
            + f". The other settings finished; the table, with those rows marked 'diverged', is in {md}.")
    return md


# ----------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------
def _metric_columns(results: Sequence[SettingResult]) -> list[tuple[str, str, str | None]]:
    """(column label, metric, judge) for every samples metric; judge-qualified when ambiguous."""
    pairs: list[tuple[str, str | None]] = []
    for r in results:
        for m in r.rows:
            if m.row == "samples" and (m.metric, m.judge) not in pairs:
                pairs.append((m.metric, m.judge))
    names = [m for m, _ in pairs]
    return [(m if names.count(m) == 1 else f"{m}[{j}]", m, j) for m, j in pairs]


def _cell(rows: Sequence[MetricRow], metric: str, judge: str | None) -> MetricRow | None:
    return next((m for m in rows if m.row == "samples" and m.metric == metric and m.judge == judge), None)


def write_sweep_outputs(results: Sequence[SettingResult], keys: Sequence[GridKey], out_dir: Path) -> Path:
    """``sweep.csv``, ``frontier.png`` and ``sweep.md`` from the per-setting metrics."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = _metric_columns(results)
    labels = [k.label for k in keys]

    # CSV: machine-readable, full precision, empty cell = no value
    header = ["setting", *labels, *[c for label, _, _ in columns for c in (label, f"{label}_stderr")], "seeds",
              "status"]
    lines = []
    for r in results:
        setting = {**r.train, **r.sample}
        row = [str(r.run_dir.relative_to(out_dir)), *[json.dumps(setting[lab]) if isinstance(setting[lab], dict | list)
                                                     else setting[lab] for lab in labels]]
        for _, metric, judge in columns:
            m = _cell(r.rows, metric, judge)
            row += [m.mean if m else "", m.stderr if m and m.stderr is not None else ""]
        row.append(max((len(m.seeds) for m in r.rows if m.row == "samples"), default=0))
        row.append("diverged" if r.diverged is not None else "ok")
        lines.append(row)
    csv_path = out_dir / "sweep.csv"
    with open(csv_path.with_suffix(".csv.tmp"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(lines)
    csv_path.with_suffix(".csv.tmp").replace(csv_path)

    # frontier: one line per setting of the non-step keys, the step counts as its points
    curves, points = frontier_curves(results, keys)
    real = next((p for r in results if (p := frontier_point(r.rows, "real text"))), None)
    shuffled = next((p for r in results if (p := frontier_point(r.rows, "shuffled text"))), None)
    real_entropy = real.entropy if real else next(
        (e.mean for r in results if (e := pick(r.rows, "entropy", "real text", GPT2_ENTROPY_JUDGE))), None)
    plot = None
    if curves:
        judge = next((m.judge for r in results if (m := pick(r.rows, "gen_ppl"))), None)
        refs = {name: p for name, p in (("real text", real), ("shuffled text", shuffled)) if p is not None}
        plot = frontier_plot(curves, out_dir / "frontier.png", reference_entropy=real_entropy, judge=judge,
                             reference_points=refs, sort_by_entropy=False,
                             title=f"Gen. PPL vs entropy; points: {points}")

    # markdown
    body = []
    for r in results:
        setting = {**r.train, **r.sample}
        cells = [_short(setting[lab]) for lab in labels]
        for _, metric, judge in columns:
            m = _cell(r.rows, metric, judge)
            cells.append("diverged" if r.diverged is not None else fmt(m.mean, m.stderr) if m else "—")
        body.append([*cells, f"[report]({(r.run_dir / 'report.md').relative_to(out_dir)})"])
    parts = ["# Sweep", "", f"{len(results)} settings; grid: " + "; ".join(
        f"`{k.label}` ∈ {{{', '.join(_short(v) for v in k.values)}}}" + (" (sampling)" if k.sampling else " (training)")
        for k in keys), "", md_table([*labels, *[c for c, _, _ in columns], "details"], body), ""]
    refs = next(([m for m in r.rows if m.row != "samples"] for r in results if r.rows), [])
    if refs:
        parts += ["Reference rows (held-out real text and a token-shuffled copy, same evaluators):", "",
                  md_table(["rows", "metric", "judge", "mean"], [[m.row, m.metric, m.judge or "—", fmt(m.mean)]
                                                                for m in refs]), ""]
    if plot is not None:
        parts += ["![Gen. PPL vs entropy](frontier.png)", ""]
    parts += ["Values are mean ± standard error over sampling seeds; `sweep.csv` has the full-precision numbers.", ""]
    md = out_dir / "sweep.md"
    atomic_write_text(md, "\n".join(parts))
    return md
