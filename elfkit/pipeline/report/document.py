"""Reports: ``report.md`` for one run directory, and a side-by-side comparison of several.

A report reads only files in the run directory (``metrics.json``, ``samples.jsonl``,
``recipe.yaml``, ``train_log.jsonl``), so it can be rewritten at any time, and every part is
optional: a run that has only trained gets a training section and nothing else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from elfkit.components.evaluators.judges import PAPER_JUDGE
from elfkit.errors import DataError
from elfkit.fileio import atomic_write_text
from elfkit.pipeline.evaluate import read_metrics, read_samples
from elfkit.pipeline.report.aggregate import MetricRow
from elfkit.pipeline.report.plots import frontier_plot, line_plot
from elfkit.pipeline.report.table import fmt, frontier_point, md_table, metrics_table, pick
from elfkit.pipeline.rundir import RunDir
from elfkit.pipeline.sample import DENOISING_FILE, read_denoising
from elfkit.pipeline.train.monitor import read_log

log = logging.getLogger(__name__)

SHOW_SAMPLES = 5
SAMPLE_CHARS = 600


# ----------------------------------------------------------------------------------------
# Reading a run directory
# ----------------------------------------------------------------------------------------
def _recipe(run: RunDir) -> dict[str, Any] | None:
    if not run.recipe.is_file():
        return None
    try:
        data = yaml.safe_load(run.recipe.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def _metrics(run: RunDir) -> list[MetricRow]:
    return read_metrics(run.metrics) if run.metrics.is_file() else []


def _numeric(d: dict[str, Any], key: str) -> float | None:
    v = d.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _component(ref: Any) -> str:
    """``sde(steps=32, gamma=1.5)`` from a resolved component dict."""
    if not isinstance(ref, dict):
        return str(ref)
    params = ", ".join(f"{k}={v}" for k, v in ref.items() if k != "name")
    return f"{ref.get('name', '?')}({params})" if params else str(ref.get("name", "?"))


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys → leaf values (lists kept whole)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


# ----------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------
def _judge_note(rows: Sequence[MetricRow]) -> str:
    judges = sorted({r.judge for r in rows if r.metric == "gen_ppl" and r.judge})
    other = [j for j in judges if j != PAPER_JUDGE]
    if not other:
        return ""
    return (f"\nGen. PPL here is judged by {', '.join(other)}, not the paper's GPT-2 Large: compare these numbers "
            "with each other, not with the paper's. Entropy judged by `gpt2-tokenizer` is the paper's entropy "
            "exactly.\n")


def _metrics_section(run: RunDir, rows: list[MetricRow]) -> list[str]:
    if not rows:
        if not run.samples.is_file():
            return []  # a training-only directory: nothing to evaluate yet
        return ["## Metrics", "", f"_No metrics yet (`metrics.json` is missing): run `elfkit eval {run.samples}`._"]
    out = ["## Metrics", ""]
    out += [metrics_table(rows), _judge_note(rows)]
    point = frontier_point(rows)
    refs = {name: p for name in ("real text", "shuffled text") if (p := frontier_point(rows, name)) is not None}
    if point is not None and refs:
        ppl = pick(rows, "gen_ppl")
        real = refs.get("real text")
        frontier_plot({"samples": [point]}, run.root / "frontier.png", reference_points=refs,
                      reference_entropy=real.entropy if real else None, judge=ppl.judge if ppl else None,
                      title=f"{run.root.name}: samples vs real and shuffled text")
        out += ["", "![Gen. PPL vs entropy](frontier.png)"]
    return out


def _samples_section(run: RunDir) -> list[str]:
    if not run.samples.is_file():
        return []
    try:
        samples = read_samples(run.samples)
    except DataError as exc:
        return ["## Samples", "", f"_{exc}_"]
    first_seed = min(s.seed for s in samples)
    shown = sorted((s for s in samples if s.seed == first_seed), key=lambda s: s.index)[:SHOW_SAMPLES]
    out = ["## Samples", "", f"The first {len(shown)} of {len(samples)} samples (seed {first_seed}):", ""]
    for s in shown:
        text = s.text if len(s.text) <= SAMPLE_CHARS else s.text[:SAMPLE_CHARS] + " …"
        if s.source is not None:
            out += [f"**source {s.index}:** {s.source.strip()}", ""]
        out += ["```text", text.replace("```", "'''") or "(empty)", "```", ""]
        if s.reference is not None:
            out += [f"**reference:** {s.reference.strip()}", ""]
    return out


DENOISING_CHARS = 160


def _denoising_section(run: RunDir) -> list[str]:
    frames = read_denoising(run.root / DENOISING_FILE)
    if not frames:
        return []
    body = []
    for f in frames:
        text = " ".join(f.text.split())
        text = text if len(text) <= DENOISING_CHARS else text[:DENOISING_CHARS] + " …"
        body.append([f"{f.call + 1} / {f.calls}", f"{f.t:.3f}", text or "(empty)"])
    return ["## Denoising", "",
            "The first sample's clean estimate x̂, decoded at a few denoiser calls along its sampling path "
            "(t = 0 is noise, 1 is data). The sample itself is the final latent, which the step into t = 1 "
            "makes the last x̂.", "", md_table(["call", "t", "decoded x̂"], body)]


LOSS_KEYS = ("l2", "ce")   # the ELF objective's two branch losses, logged next to "loss"
NOT_SUMMARISED = ("step", "time", "epoch")


def _logged(e: dict[str, Any], key: str) -> float | None:
    """``e[key]``, or None where that branch had no rows: the objective logs ``ce`` as 0 for a batch
    without decoder rows (``decoder_frac`` 0) and ``l2`` as 0 for one with only decoder rows."""
    v, frac = _numeric(e, key), _numeric(e, "decoder_frac")
    if frac is not None and ((key == "ce" and frac == 0) or (key == "l2" and frac == 1)):
        return None
    return v


def _training_section(run: RunDir) -> list[str]:
    entries = [e for e in read_log(run.root) if "event" not in e or "loss" in e]
    if not entries:
        return []
    keys: list[str] = []
    for e in entries:
        keys += [k for k in e if k not in keys and k not in NOT_SUMMARISED and _numeric(e, k) is not None]
    last_step = next((s for e in reversed(entries) if (s := _numeric(e, "step")) is not None), None)
    summary = [["log lines", str(len(entries))], ["last step", f"{last_step:g}" if last_step is not None else "—"]]
    loss_keys = [k for k in keys if "loss" in k or k in LOSS_KEYS]
    for k in keys:
        vals = [v for e in entries if (v := _logged(e, k)) is not None]
        if not vals:
            summary.append([k, "—"])
        elif k in loss_keys:
            summary.append([k, f"first {fmt(vals[0])}, min {fmt(min(vals))}, last {fmt(vals[-1])}"])
        else:
            summary.append([k, f"last {vals[-1]:.4g}"])
    out = ["## Training", "", md_table(["", "value"], summary)]
    xs = [s if (s := _numeric(e, "step")) is not None else float(i) for i, e in enumerate(entries)]
    series = {}
    for k in loss_keys:
        pairs = [(x, v) for x, e in zip(xs, entries, strict=True) if (v := _logged(e, k)) is not None]
        if len(pairs) > 1:
            series[k] = ([p[0] for p in pairs], [p[1] for p in pairs])
    if series:
        line_plot(series, run.root / "loss.png", xlabel="step", ylabel="loss", title="training loss",
                  logy=all(v > 0 for _, ys in series.values() for v in ys))
        out += ["", "![training loss](loss.png)"]
    return out


def _settings_section(recipe: dict[str, Any] | None) -> list[str]:
    if recipe is None:
        return []
    train = recipe.get("train", {}) or {}
    sample = recipe.get("sample", {}) or {}
    evals = (recipe.get("eval", {}) or {}).get("evaluators", []) or []
    lines = [
        ["data", _component(recipe.get("data"))], ["embedder", _component(recipe.get("embedder"))],
        ["backbone", _component(recipe.get("backbone"))], ["target", _component(recipe.get("target"))],
        ["time", _component(recipe.get("time"))], ["objective", _component(recipe.get("objective"))],
        ["train", ", ".join(f"{k}={train[k]}" for k in ("steps", "batch_size", "blr", "lr", "optimizer",
                                                          "precision") if train.get(k) is not None)],
        ["sampler", _component(sample.get("sampler"))], ["guidance", _component(sample.get("guidance"))],
        ["samples", f"{sample.get('num_samples', '?')} per seed, seeds {sample.get('seeds', '?')}"],
        ["evaluators", ", ".join(_component(e) for e in evals) or "—"],
    ]
    return ["## Settings", "", md_table(["", "value"], lines), "",
            "<details><summary>resolved recipe.yaml</summary>", "", "```yaml",
            yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).rstrip(), "```", "", "</details>"]


# ----------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------
def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.md`` (+ ``frontier.png``, ``loss.png`` where there is data)."""
    run = RunDir(Path(run_dir))
    if not run.root.is_dir():
        raise DataError(f"run directory not found: {run.root}")
    recipe = _recipe(run)
    name = (recipe or {}).get("name") or run.root.name
    parts = [f"# {name}", ""]
    if recipe and recipe.get("description"):
        parts += [str(recipe["description"]).strip(), ""]
    parts += [f"Run directory: `{run.root}`", ""]
    for section in (_metrics_section(run, _metrics(run)), _samples_section(run), _denoising_section(run),
                    _training_section(run), _settings_section(recipe)):
        if section:
            parts += section + [""]
    atomic_write_text(run.report, "\n".join(parts).rstrip() + "\n")
    return run.report


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    names = [p.name for p in run_dirs]
    return names if len(set(names)) == len(names) else [str(p) for p in run_dirs]


def compare_runs(run_dirs: list[Path], out: Path) -> Path:
    """Side-by-side ``out`` (markdown): metrics per run, settings that differ, one frontier plot."""
    runs = [RunDir(Path(p)) for p in run_dirs]
    for r in runs:
        if not r.root.is_dir():
            raise DataError(f"run directory not found: {r.root}")
    labels = _labels([r.root for r in runs])
    metrics = [_metrics(r) for r in runs]
    out = Path(out)
    parts = [f"# Comparison of {len(runs)} runs", ""]
    parts += [md_table(["run", "directory"], [[lab, str(r.root)] for lab, r in zip(labels, runs, strict=True)]), ""]

    # metrics: one line per (row, metric, judge), one column per run
    keys: list[tuple[str, str, str | None]] = []
    for rows in metrics:
        for m in rows:
            if (m.row, m.metric, m.judge) not in keys:
                keys.append((m.row, m.metric, m.judge))
    if keys:
        body = []
        for row, metric, judge in keys:
            cells = []
            for rows in metrics:
                hit = next((m for m in rows if (m.row, m.metric, m.judge) == (row, metric, judge)), None)
                cells.append(fmt(hit.mean, hit.stderr) if hit else "—")
            body.append([row, metric, judge or "—", *cells])
        parts += ["## Metrics", "", md_table(["rows", "metric", "judge", *labels], body),
                  _judge_note([m for rows in metrics for m in rows]), ""]
    else:
        parts += ["_None of these runs has metrics.json yet._", ""]

    # training: last logged loss
    logs = [read_log(r.root) for r in runs]
    if any(logs):
        last = [fmt(_numeric(lg[-1], "loss")) if lg else "—" for lg in logs]
        steps = [f"{_numeric(lg[-1], 'step') or 0:g}" if lg else "—" for lg in logs]
        parts += ["## Training", "", md_table(["", *labels], [["last step", *steps], ["last loss", *last]]), ""]

    # settings that differ
    flat = [flatten(_recipe(r) or {}) for r in runs]
    diff_keys = sorted({k for f in flat for k in f if k not in ("name", "description")
                        and len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1})
    if diff_keys:
        body = [[k, *[("—" if k not in f else str(f[k])) for f in flat]] for k in diff_keys]
        parts += ["## Settings that differ", "", md_table(["key", *labels], body), ""]

    # frontier
    curves = {lab: [p] for lab, rows in zip(labels, metrics, strict=True) if (p := frontier_point(rows, label=lab))}
    if curves:
        real = next((p for rows in metrics if (p := frontier_point(rows, "real text"))), None)
        judge = next((p.judge for rows in metrics if (p := pick(rows, "gen_ppl"))), None)
        plot = frontier_plot(curves, out.with_name(out.stem + "-frontier.png"),
                             reference_entropy=real.entropy if real else None,
                             reference_points={"real text": real} if real else {}, judge=judge)
        parts += ["## Gen. PPL vs entropy", "", f"![frontier]({plot.name})", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(parts).rstrip() + "\n")
    return out
