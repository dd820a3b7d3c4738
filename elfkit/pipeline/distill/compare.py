"""Teacher vs student at a few sampling steps: samples, metrics, ``report.md`` and the frontier plot.

Both models are sampled with the recipe's own sample section (sampler, guidance, seeds), only
the number of steps changing, and scored by the same evaluators, so every difference in the
table is the distillation's. Reference rows (real text) are scored once, in the first setting.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from elfkit.fileio import atomic_write_text
from elfkit.pipeline.distill.stage import ROUNDS_DIR, round_dir
from elfkit.pipeline.evaluate import evaluate_stage, read_metrics
from elfkit.pipeline.report.aggregate import MetricRow
from elfkit.pipeline.report.plots import frontier_plot
from elfkit.pipeline.report.table import GPT2_ENTROPY_JUDGE, FrontierPoint, fmt, frontier_point, md_table, pick
from elfkit.pipeline.rundir import RunDir
from elfkit.pipeline.sample import sample_stage
from elfkit.recipe.load import apply_overrides, resolved_dict, validate_recipe
from elfkit.recipe.schema import Recipe
from elfkit.registry import Registry, default_registry

COMPARE_DIR = "compare"
OFFICIAL_PD = {1: (136.10, 5.26), 2: (68.25, 5.24), 4: (34.33, 5.16), 8: (23.18, 5.07), 16: (22.12, 5.06),
               32: (21.32, 5.04)}
"""ELF-B-PD-owt-torch (official README): Gen. PPL (GPT-2 Large) / entropy per sampling steps."""
OFFICIAL_TEACHER_32 = (24.1, 5.15)


def _at_steps(recipe: Recipe, steps: int, references: bool, registry: Registry) -> Recipe:
    data = apply_overrides(resolved_dict(recipe), [f"sample.sampler.steps={steps}",
                                                   f"eval.references={json.dumps(references)}"])
    return validate_recipe(data, source=f"{recipe.name} ({steps} sampling steps)", registry=registry)


def compare(recipe: Recipe, run_dir: Path, teacher_ckpt: Path,
            student_ckpt: Path) -> dict[str, dict[int, list[MetricRow]]]:
    """Sample and evaluate both models at every ``distill.compare_steps``; {model: {steps: rows}}."""
    assert recipe.distill is not None
    run = RunDir(Path(run_dir))
    registry = default_registry(recipe.plugins)
    out: dict[str, dict[int, list[MetricRow]]] = {"teacher": {}, "student": {}}
    first = True
    for model, ckpt in (("teacher", teacher_ckpt), ("student", student_ckpt)):
        for n in recipe.distill.compare_steps:
            sub = RunDir(run.root / COMPARE_DIR / f"{model}-{n}step")
            s_recipe = _at_steps(recipe, n, first and recipe.eval.references, registry)
            sub.write_recipe(s_recipe)
            if first and run.references.is_file() and not sub.references.is_file():
                shutil.copyfile(run.references, sub.references)
            samples = sample_stage(ckpt, sub.root, s_recipe)
            if recipe.eval.evaluators:
                out[model][n] = read_metrics(evaluate_stage(samples, sub.root, s_recipe, registry))
            first = False
    return out


def write_distill_report(recipe: Recipe, run_dir: Path, results: dict[str, dict[int, list[MetricRow]]]) -> Path:
    """``report.md``: the curriculum, teacher vs student per steps, the frontier plot, official numbers."""
    assert recipe.distill is not None
    d, run = recipe.distill, RunDir(Path(run_dir))
    lines = [f"# {recipe.name}: progressive distillation", "", recipe.description, "",
             f"Teacher: `{d.teacher}` ({'EMA' if d.teacher_use_ema else 'raw'} weights, frozen, the same in every "
             "round). Each round starts from the previous round's student "
             f"({'EMA' if d.student_use_ema else 'raw'} weights, fresh optimiser and EMA).", "",
             "## Curriculum", ""]
    body = []
    for i, rnd in enumerate(d.rounds, 1):
        info = round_dir(run, i, rnd).stages().get("train", {})
        body.append([str(i), str(rnd.student_steps), f"1/{rnd.student_steps}", str(rnd.teacher_substeps),
                     f"1/{rnd.student_steps * rnd.teacher_substeps}", str(info.get("steps", "—")),
                     fmt(info.get("final_loss")), str(info.get("stopped", "—")),
                     f"`{ROUNDS_DIR}/{i}-{rnd.student_steps}step/`"])
    lines += [md_table(["round", "student steps", "Δ", "K", "Δ/K", "optimiser steps", "final loss", "ended",
                        "run"], body), ""]
    sample = recipe.sample
    sampler = {k: v for k, v in sample.sampler.params.items() if k != "steps"}
    lines += ["## Teacher vs student", "",
              f"Same sampler (`{sample.sampler.name}`, {json.dumps(sampler)}), guidance "
              f"(`{sample.guidance.name}`, {json.dumps(sample.guidance.params)}), "
              f"{sample.num_samples} samples per seed, "
              f"seeds {sample.seeds}; only the number of steps changes. Mean ± standard error over seeds.", ""]
    judge = next((m.judge for rows in results["teacher"].values() if (m := pick(rows, "gen_ppl"))), None)
    body, curves = [], {"teacher": [], "student": []}
    for n in d.compare_steps:
        cells = [str(n)]
        for model in ("teacher", "student"):
            rows = results[model].get(n, [])
            ppl, ent = pick(rows, "gen_ppl"), pick(rows, "entropy", prefer_judge=GPT2_ENTROPY_JUDGE)
            cells += [fmt(ppl.mean, ppl.stderr) if ppl else "—", fmt(ent.mean, ent.stderr) if ent else "—"]
            p = frontier_point(rows, label=f"{n}")
            if p is not None:
                curves[model].append(p)
        off = OFFICIAL_PD.get(n)
        cells.append(f"{off[0]} / {off[1]}" if off else "—")
        body.append(cells)
    lines += [md_table(["steps", f"teacher Gen. PPL ({judge or '?'})", "teacher entropy",
                        f"student Gen. PPL ({judge or '?'})", "student entropy",
                        "official PD student (GPT-2 L) PPL / entropy"], body), ""]
    refs = [m for rows in results["teacher"].values() for m in rows if m.row != "samples"]
    real = next((p for rows in results["teacher"].values() if (p := frontier_point(rows, "real text"))), None)
    plot = None
    if any(curves.values()):
        points: dict[str, FrontierPoint] = {"real text": real} if real else {}
        plot = frontier_plot({k: v for k, v in curves.items() if v}, run.root / "frontier.png", judge=judge,
                             reference_entropy=real.entropy if real else None, reference_points=points,
                             title="Teacher vs distilled student (labels: sampling steps)")
    if plot is not None:
        lines += ["![Gen. PPL vs entropy](frontier.png)", ""]
    if refs:
        lines += ["Reference rows (held-out real text and a token-shuffled copy, same evaluators):", "",
                  md_table(["rows", "metric", "judge", "mean"], [[m.row, m.metric, m.judge or "—", fmt(m.mean)]
                                                                for m in refs]), ""]
    lines += [f"The official numbers (ELF-B on OpenWebText, GPT-2 Large judge, 1000 samples) are for scale only: "
              f"their 32-step teacher scores {OFFICIAL_TEACHER_32[0]} / {OFFICIAL_TEACHER_32[1]}.", "",
              "Per-setting samples, metrics and reports: `compare/<model>-<N>step/`.", ""]
    atomic_write_text(run.report, "\n".join(lines))
    return run.report
