"""Round bookkeeping: where each round starts from, and what its settings depend on."""

from __future__ import annotations

import torch

from elfkit.pipeline.checkpoint import Checkpoint
from elfkit.pipeline.distill.stage import _initial_weights, round_fingerprint
from elfkit.pipeline.distill.teacher import Teacher
from elfkit.recipe.schema import DistillSection


def section(**kw) -> DistillSection:
    return DistillSection(teacher="t", rounds=[{"student_steps": 2, "teacher_substeps": 2},
                                               {"student_steps": 1, "teacher_substeps": 4}], teacher_steps=4, **kw)


def test_rounds_start_from_the_teacher_then_the_previous_students_ema(tmp_path):
    teacher = Teacher(torch.nn.Linear(1, 1), "t", "elfkit", 5, {"w": torch.zeros(1)})
    prev = tmp_path / "last.pt"
    Checkpoint(recipe={}, model={"w": torch.ones(1)}, step=3, ema={"w": torch.full((1,), 2.0)}).save(prev)
    assert _initial_weights(1, section(), teacher, None) is teacher.state
    assert _initial_weights(1, section(init_from_teacher=False), teacher, None) is None
    ema = _initial_weights(2, section(), teacher, prev)
    raw = _initial_weights(2, section(student_use_ema=False), teacher, prev)
    assert ema is not None and raw is not None
    assert float(ema["w"]) == 2.0 and float(raw["w"]) == 1.0


def test_round_fingerprint_ignores_sampling_and_the_report_steps():
    base = {"name": "a", "sample": {"x": 1}, "train": {"steps": 3},
            "distill": {"teacher": "t", "rounds": [1], "compare_steps": [1, 2]}}
    same = {**base, "name": "b", "sample": {"x": 2}, "distill": {**base["distill"], "compare_steps": [4]}}
    other = {**base, "distill": {**base["distill"], "teacher": "u"}}
    assert round_fingerprint(base) == round_fingerprint(same) != round_fingerprint(other)
