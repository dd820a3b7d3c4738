"""The distill stage: a recipe's ``distill:`` curriculum as one resumable command.

Layout in the run directory::

    teacher/checkpoints/last           the frozen teacher's weights as an elfkit checkpoint (for sampling)
    rounds/<i>-<N>step/                one ordinary training run per round (checkpoints/, train_log.jsonl)
    compare/<teacher|student>-<N>step/ samples and metrics at each distill.compare_steps
    report.md, frontier.png            teacher vs student

Each round trains with the ordinary loop (:func:`~elfkit.pipeline.train.loop.fit`): its
recipe is the run's recipe with the round's ``student_steps``/``teacher_substeps`` in the
objective and its ``steps`` in ``train.steps``. A round starts from the previous round's student
(EMA weights preferred, weights only: a fresh optimiser and a fresh EMA of those weights);
round 1 from the teacher. A finished round (same settings, ``stages.json``) is skipped, an
interrupted one resumes from its own last checkpoint, and every round's checkpoints stay.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn

from elfkit.errors import CheckpointError, ElfkitError
from elfkit.pipeline.build import Components, build_components
from elfkit.pipeline.checkpoint import Checkpoint, CheckpointDir
from elfkit.pipeline.distill.teacher import Teacher, check_source, load_teacher
from elfkit.pipeline.interrupts import Interrupted, interruptible, last_signal
from elfkit.pipeline.prepare import data_cache_dir, prepare_data
from elfkit.pipeline.rundir import RunDir, fingerprint
from elfkit.pipeline.train.data import make_train_data
from elfkit.pipeline.train.guard import TrainingDiverged
from elfkit.pipeline.train.loop import fit
from elfkit.recipe.load import apply_overrides, resolved_dict, validate_recipe
from elfkit.recipe.schema import DistillRound, DistillSection, Recipe
from elfkit.registry import Registry, default_registry

TEACHER_DIR = "teacher"
ROUNDS_DIR = "rounds"


def round_dir(run: RunDir, index: int, rnd: DistillRound) -> RunDir:
    return RunDir(run.root / ROUNDS_DIR / f"{index}-{rnd.student_steps}step")


def round_recipe(recipe: Recipe, index: int, registry: Registry) -> Recipe:
    """Round ``index`` (1-based) as an ordinary recipe: its Δ and K in the objective, its steps in
    ``train.steps``, and the curriculum up to this round (what its weights depend on)."""
    d = _section(recipe)
    rnd = d.rounds[index - 1]
    data = apply_overrides(resolved_dict(recipe), [
        f"objective.student_steps={rnd.student_steps}", f"objective.teacher_substeps={rnd.teacher_substeps}",
        f"train.steps={rnd.steps or recipe.train.steps}"])
    data["distill"]["rounds"] = data["distill"]["rounds"][:index]
    return validate_recipe(data, source=f"{recipe.name} (distillation round {index})", registry=registry)


def round_fingerprint(resolved: dict[str, Any]) -> str:
    """Training settings of a round: everything but sampling, evaluation and the report's steps."""
    keep = {k: v for k, v in resolved.items() if k not in ("name", "description", "sample", "eval", "sweep")}
    keep["distill"] = {k: v for k, v in keep["distill"].items() if k != "compare_steps"}
    return fingerprint(keep)


def _section(recipe: Recipe) -> DistillSection:
    if recipe.distill is None:
        raise ElfkitError(f"recipe '{recipe.name}' has no `distill:` section")
    return recipe.distill


def teacher_checkpoint(run: RunDir, recipe: Recipe, teacher: Teacher) -> Path:
    """The teacher's weights as an elfkit checkpoint of this recipe, so it samples like a student
    (written once per teacher; rank 0 writes it under torchrun)."""
    d = _section(recipe)
    ckpts = CheckpointDir(run.root / TEACHER_DIR / "checkpoints")
    fp = fingerprint({"teacher": d.teacher, "use_ema": d.teacher_use_ema, "step": teacher.step,
                      "training": round_fingerprint(resolved_dict(recipe))})
    if (run.is_done("teacher", fp) and ckpts.last.exists()) or int(os.environ.get("RANK", "0")) != 0:
        return ckpts.last
    ckpts.path.mkdir(parents=True, exist_ok=True)
    last = ckpts.write(Checkpoint(recipe=resolved_dict(recipe), model=teacher.state, step=teacher.step or 0), keep=1)
    run.mark_done("teacher", fp, source=teacher.source, kind=teacher.kind, step=teacher.step)
    return last


def _initial_weights(index: int, d: DistillSection, teacher: Teacher, previous: Path | None) -> dict[str, Any] | None:
    """The weights round ``index`` starts from: the previous student (EMA preferred) or the teacher."""
    if previous is not None:
        saved = Checkpoint.load(previous)
        return saved.ema if d.student_use_ema and saved.ema else saved.model
    return teacher.state if d.init_from_teacher else None


def _distill_kept(args: Mapping[str, Any]) -> str:
    return (f"Finished rounds in {args['run_dir']} are kept, and the interrupted round resumes from its last "
            "checkpoint if it wrote one; rerun the same command to continue.")


@interruptible("distillation", _distill_kept)
def distill_stage(recipe: Recipe, run_dir: Path, console: Console | None = None) -> tuple[Path, Path]:
    """Run (or resume) every round; returns (teacher checkpoint, last round's checkpoint)."""
    console = console or Console(stderr=True)
    d = _section(recipe)
    run = RunDir(Path(run_dir))
    run.write_recipe(recipe)
    registry = default_registry(recipe.plugins)
    # every check before any work: the curriculum (schema), the teacher, every round's recipe
    rounds = [round_recipe(recipe, i, registry) for i in range(1, len(d.rounds) + 1)]
    check_source(d.teacher)
    components = build_components(recipe, registry)
    teacher = load_teacher(d.teacher, components, use_ema=d.teacher_use_ema)
    teacher_ckpt = teacher_checkpoint(run, recipe, teacher)
    console.print(f"distill: teacher {teacher.source} ({teacher.kind}"
                  + (f", step {teacher.step}" if teacher.step is not None else "") + f"), {len(rounds)} round(s)")
    splits = prepare_data(components, run, console)
    data = make_train_data(splits, components.embedder, cache_dir=data_cache_dir(recipe))

    previous: Path | None = None
    for i, (rnd, r_recipe) in enumerate(zip(d.rounds, rounds, strict=True), 1):
        r_run = round_dir(run, i, rnd)
        resolved = r_run.write_recipe(r_recipe)
        # a retrained teacher (same path, new step) retrains the rounds
        fp = fingerprint({"round": round_fingerprint(resolved), "teacher_step": teacher.step})
        last = r_run.checkpoints.last
        title = f"round {i}/{len(rounds)}: {rnd.student_steps} student step(s), K={rnd.teacher_substeps}"
        if r_run.is_done("train", fp) and last.exists():
            console.print(f"distill: {title}: already done ({last})")
            previous = last
            continue
        started = r_run.stages().get("train-started", {}).get("fingerprint")
        if started is not None and started != fp and last.exists():
            raise ElfkitError(f"{r_run.root} holds a round trained with other settings; delete it (or the run "
                              "directory) to retrain, or use another --out")
        r_run.mark_done("train-started", fp)
        console.rule(f"distill: {title}")
        student = _round_components(components, r_recipe, registry, teacher)
        init = _initial_weights(i, d, teacher, previous)
        if init is not None and not last.exists():     # a resumed round loads its own checkpoint in fit
            student.backbone.load_state_dict(init, strict=True)
        result = fit(student, data, r_run, console=console)
        if result.stopped == "diverged":
            raise TrainingDiverged(f"{title}: {result.message}")
        if result.stopped == "interrupted":   # fit stopped cleanly on a signal, after a checkpoint
            raise Interrupted(last_signal())
        if result.stopped not in ("completed", "already-done", "time-limit"):
            raise ElfkitError(f"{title} stopped early ({result.stopped}) at step {result.steps}; "
                              "rerun the same command to continue")
        if result.checkpoint is None:
            raise CheckpointError(f"{title} finished but wrote no checkpoint in {r_run.checkpoints.path}")
        r_run.mark_done("train", fp, checkpoint=str(result.checkpoint), steps=result.steps,
                        final_loss=result.final_loss, tokens_per_s=result.tokens_per_s, stopped=result.stopped)
        previous = result.checkpoint
    assert previous is not None
    return teacher_ckpt, previous


def _round_components(base: Components, recipe: Recipe, registry: Registry, teacher: Teacher) -> Components:
    """The run's components with a fresh student backbone and this round's objective (teacher attached)."""
    objective = registry.build("objective", recipe.objective.name, recipe.objective.config)
    attach = getattr(objective, "attach_teacher", None)
    if attach is None:
        raise ElfkitError(f"objective '{recipe.objective.name}' cannot take a teacher (no attach_teacher)")
    attach(teacher.module)
    backbone: nn.Module = copy.deepcopy(base.backbone)
    return replace(base, recipe=recipe, backbone=backbone, objective=objective)
