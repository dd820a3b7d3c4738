"""The train stage of a run: ``fit`` wrapped in the run directory's bookkeeping.

``fit`` only trains; deciding whether training is already done, refusing a run directory made
by other training settings, and turning how ``fit`` stopped into a message or an error are
the run's business, kept here so ``elfkit train``, ``elfkit run`` and sweeps behave alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from elfkit.errors import CheckpointError, ElfkitError, RecipeError
from elfkit.pipeline.build import build_components
from elfkit.pipeline.interrupts import Interrupted, interruptible, last_signal
from elfkit.pipeline.prepare import data_cache_dir, prepare_data
from elfkit.pipeline.rundir import RunDir, training_fingerprint
from elfkit.pipeline.train.data import make_train_data
from elfkit.pipeline.train.guard import TrainingDiverged
from elfkit.pipeline.train.loop import fit
from elfkit.recipe.schema import Recipe
from elfkit.registry import default_registry


def checkpoint_kept(run_dir: Path) -> str:
    """What an interrupted training leaves: the newest checkpoint, or that none exists yet."""
    ckpts = RunDir(Path(run_dir)).checkpoints
    steps = ckpts.steps()
    if steps:
        return (f"The checkpoint at step {steps[-1][0]} is kept in {ckpts.path}; rerun the same command to resume "
                "from it.")
    if ckpts.last.exists():
        return f"The last checkpoint {ckpts.last} is kept; rerun the same command to resume from it."
    return ("No checkpoint had been written yet, so there is nothing to resume: rerun the same command to start "
            "training again.")


def _train_kept(args: Mapping[str, Any]) -> str:
    return checkpoint_kept(args["run_dir"])


@interruptible("training", _train_kept)
def train_stage(recipe: Recipe, run_dir: Path, console: Console | None = None,
                resume_from: Path | None = None) -> Path:
    """Train (or resume, or skip if finished) holding the run directory's lock; returns the last
    checkpoint. ``resume_from`` picks the checkpoint file to resume from (default: the newest)."""
    console = console or Console(stderr=True)
    if recipe.distill is not None:
        raise RecipeError(f"recipe '{recipe.name}' has a `distill:` section: its rounds need the teacher, so run it "
                          "with `elfkit run` (docs/distillation.md)")
    run = RunDir(Path(run_dir))
    with run.lock("train"):
        return _train(recipe, run, console, resume_from)


def _train(recipe: Recipe, run: RunDir, console: Console, resume_from: Path | None) -> Path:
    resolved = run.write_recipe(recipe)
    fp = training_fingerprint(resolved)
    run.check_same_training(resolved)
    last = run.checkpoints.last
    if run.is_done("train", fp) and last.exists():
        console.print(f"train: already done ({escape(str(last))})")
        return last
    run.mark_done("train-started", fp)
    components = build_components(recipe, default_registry(recipe.plugins))
    splits = prepare_data(components, run, console)
    data = make_train_data(splits, components.embedder, cache_dir=data_cache_dir(recipe))
    result = fit(components, data, run, console=console, resume_from=resume_from)
    if result.stopped == "diverged":
        raise TrainingDiverged(result.message)
    if result.stopped == "interrupted":   # fit stopped cleanly on a signal, after a checkpoint
        raise Interrupted(last_signal())
    if result.stopped == "time-limit":   # a budgeted run: the budget is part of the recipe
        console.print(f"[yellow]train: time budget of {recipe.train.max_minutes} min reached at step "
                      f"{result.steps}/{recipe.train.steps}; continuing with this checkpoint")
    elif result.stopped not in ("completed", "already-done"):
        raise ElfkitError(f"training stopped early ({result.stopped}) at step {result.steps}; "
                          "rerun the same command to continue")
    if result.checkpoint is None:
        raise CheckpointError(f"training finished but wrote no checkpoint in {run.checkpoints.path}")
    if result.spike_steps:
        console.print(f"[yellow]train: the loss spiked above {recipe.train.spike_factor:g}× its running median "
                      f"on {result.spike_steps} step(s); see train_log.jsonl and the report")
    run.mark_done("train", fp, checkpoint=str(result.checkpoint), steps=result.steps,
                  final_loss=result.final_loss, tokens_per_s=result.tokens_per_s, wall_s=round(result.wall_s, 2),
                  skipped_steps=result.skipped_steps, spike_steps=result.spike_steps)
    return result.checkpoint
