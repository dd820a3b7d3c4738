"""``elfkit run``: every stage of a run in order, in one run directory.

prepare data → train → sample → evaluate → report. A diverged training stops the run (exit
code ≠ 0) after writing a report of its training; a model whose samples are all empty stops
it before evaluation: neither gets metrics. Each stage records a fingerprint of the
settings it used (``stages.json``), so rerunning skips finished stages, resumes an interrupted
training from its last checkpoint, and redoes only the stages whose settings changed (a new
sampler re-samples and re-evaluates without retraining).
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from elfkit.pipeline.distill.compare import compare, write_distill_report
from elfkit.pipeline.distill.stage import distill_stage
from elfkit.pipeline.evaluate import evaluate_stage, read_samples, require_text
from elfkit.pipeline.report.document import write_report
from elfkit.pipeline.rundir import RunDir
from elfkit.pipeline.sample import sample_stage
from elfkit.pipeline.train.guard import TrainingDiverged
from elfkit.pipeline.train.stage import train_stage
from elfkit.recipe.schema import Recipe
from elfkit.registry import default_registry


def run_recipe(recipe: Recipe, run_dir: Path, console: Console | None = None,
               resume_from: Path | None = None) -> Path:
    """prepare → train → sample → evaluate → report (with a ``distill:`` section: rounds, then teacher
    vs student), holding the run directory's lock; returns report.md. ``resume_from`` picks the
    checkpoint training resumes from."""
    console = console or Console(stderr=True)
    run = RunDir(Path(run_dir))
    with run.lock("run"):
        return _run(recipe, run, console, resume_from)


def _run(recipe: Recipe, run: RunDir, console: Console, resume_from: Path | None) -> Path:
    console.rule(f"[bold]{escape(recipe.name)}[/] → {escape(str(run.root))}")
    if recipe.distill is not None:   # progressive distillation: rounds, then teacher vs student
        return _distill(recipe, run, console)
    try:
        ckpt = train_stage(recipe, run.root, console, resume_from=resume_from)
    except TrainingDiverged:
        if int(os.environ.get("RANK", "0")) == 0:   # the report shows how it diverged; no samples, no metrics
            write_report(run.root)
        raise
    if int(os.environ.get("RANK", "0")) != 0:   # under torchrun: rank 0 samples, evaluates, reports
        return run.report
    sample_stage(ckpt, run.root, recipe, console)
    require_text(read_samples(run.samples), run.samples)
    if recipe.eval.evaluators:
        with console.status("evaluating"):
            evaluate_stage(run.samples, run.root, recipe, default_registry(recipe.plugins))
    return write_report(run.root)


def _distill(recipe: Recipe, run: RunDir, console: Console) -> Path:
    teacher, student = distill_stage(recipe, run.root, console)
    if int(os.environ.get("RANK", "0")) != 0:
        return run.report
    with console.status("sampling and evaluating teacher and student"):
        results = compare(recipe, run.root, teacher, student)
    return write_distill_report(recipe, run.root, results)
