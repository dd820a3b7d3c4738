"""The distillation teacher: found, checked against the student, loaded frozen; bad input is clear."""

from __future__ import annotations

import pytest
import torch

from elfkit.components.backbones import official_state_dict
from elfkit.errors import CheckpointError, RecipeError
from elfkit.pipeline.checkpoint import Checkpoint, CheckpointDir
from elfkit.pipeline.distill.teacher import load_teacher
from elfkit.recipe.load import resolved_dict
from elfkit.recipe.schema import DistillSection
from tests.fixtures.train_fixtures import make_components, tiny_elf


def trained_run(tmp_path, components, **recipe_changes) -> str:
    """A run directory whose last checkpoint holds perturbed weights (raw) and their EMA."""
    torch.manual_seed(1)
    model = tiny_elf(latent_dim=8, vocab_size=16, max_length=8)
    ema = {k: v + 0.01 for k, v in model.state_dict().items()}
    recipe = resolved_dict(components.recipe)
    for section, change in recipe_changes.items():
        recipe[section] = {**recipe[section], **change}
    CheckpointDir(tmp_path / "teacher" / "checkpoints").write(
        Checkpoint(recipe=recipe, model=model.state_dict(), step=42, ema=ema), keep=1)
    return str(tmp_path / "teacher")


def test_elfkit_run_directory_teacher_is_frozen_ema(tmp_path):
    comps, _ = make_components()
    source = trained_run(tmp_path, comps)
    teacher = load_teacher(source, comps)
    assert (teacher.kind, teacher.step) == ("elfkit", 42)
    saved = Checkpoint.load(tmp_path / "teacher" / "checkpoints" / "last")
    assert saved.ema is not None
    for k, v in teacher.module.state_dict().items():
        assert torch.equal(v, saved.ema[k])
    assert not any(p.requires_grad for p in teacher.module.parameters()) and not teacher.module.training
    assert teacher.module is not comps.backbone                       # a copy: the student is untouched
    raw = load_teacher(source, comps, use_ema=False)
    assert torch.equal(raw.state["final_layer.linear.bias"], saved.model["final_layer.linear.bias"])


def test_teacher_in_another_latent_space_is_refused(tmp_path):
    comps, _ = make_components()
    source = trained_run(tmp_path, comps, embedder={"name": "minilm"}, path={"noise_scale": 1.0})
    with pytest.raises(RecipeError) as err:
        load_teacher(source, comps)
    msg = str(err.value)
    assert "embedder.name: teacher 'minilm', student 'table'" in msg and "path.noise_scale" in msg


def test_teacher_with_other_shapes_is_refused(tmp_path):
    comps, _ = make_components(backbone={"latent_dim": 4})
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_teacher(trained_run(tmp_path, comps), comps)


def test_official_teacher_file_and_mismatch(tmp_path):
    comps, _ = make_components()
    torch.manual_seed(3)
    src = tiny_elf(latent_dim=8, vocab_size=16, max_length=8)
    torch.save({"params": official_state_dict(src), "ema_params1": official_state_dict(src)}, tmp_path / "checkpoint_9")
    teacher = load_teacher(str(tmp_path / "checkpoint_9"), comps)
    assert teacher.kind == "official"
    assert torch.equal(teacher.state["blocks.0.attn.qkv.weight"], src.state_dict()["blocks.0.attn.qkv.weight"])
    other, _ = make_components(backbone={"vocab_size": 20})
    with pytest.raises(CheckpointError, match="unembed_bias"):
        load_teacher(str(tmp_path / "checkpoint_9"), other)


def test_missing_or_unreadable_teacher_is_clear(tmp_path):
    comps, _ = make_components()
    with pytest.raises(CheckpointError, match=r"not found.*elfkit run recipes/quickstart.yaml"):
        load_teacher(str(tmp_path / "runs" / "quickstart"), comps)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_teacher(str(tmp_path / "notes.txt"), comps)
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "stages.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no checkpoint yet"):
        load_teacher(str(tmp_path / "unfinished"), comps)


def test_curriculum_checks():
    ok = DistillSection(teacher="t", rounds=[{"student_steps": 16, "teacher_substeps": 4},
                                             {"student_steps": 8, "teacher_substeps": 8}])
    assert ok.teacher_steps == 64
    with pytest.raises(ValueError, match=r"student_steps × teacher_substeps = 8 × 4 = 32.*set teacher_substeps to 8"):
        DistillSection(teacher="t", rounds=[{"student_steps": 16, "teacher_substeps": 4},
                                            {"student_steps": 8, "teacher_substeps": 4}])
    DistillSection(teacher="t", strict=False, rounds=[{"student_steps": 16, "teacher_substeps": 4},
                                                      {"student_steps": 8, "teacher_substeps": 4}])
    with pytest.raises(ValueError, match="does not divide the previous round's 8"):
        DistillSection(teacher="t", strict=False, rounds=[{"student_steps": 8, "teacher_substeps": 2},
                                                          {"student_steps": 3, "teacher_substeps": 2}])
    with pytest.raises(ValueError):
        DistillSection(teacher="t", rounds=[])
