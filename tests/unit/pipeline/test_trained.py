"""load_trained: the stored recipe's components with the checkpoint's weights; sections of the
current recipe replace the stored ones as validated objects, user ``--set`` items as strings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from elfkit.errors import RecipeError
from elfkit.pipeline.build import build_components
from elfkit.pipeline.checkpoint import Checkpoint
from elfkit.pipeline.trained import load_trained
from elfkit.recipe.load import resolved_dict, validate_recipe
from elfkit.registry import default_registry


def _recipe(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    return {
        "name": "trained", "seed": 0,
        "data": {"name": "local", "data_files": str(tmp_path / "data.txt"), "max_length": 8},
        "embedder": {"name": "learned-table", "dim": 8},
        "backbone": {"name": "elf", "preset": None, "depth": 1, "width": 16, "heads": 2, "bottleneck_dim": 4,
                     "decoder_hidden": 8},
        "sample": {"sampler": {"name": "euler", "steps": 2}, "num_samples": 2, "batch_size": 2},
        **sections,
    }


def _save(tmp_path: Path, data: dict[str, Any], name: str = "c.pt") -> tuple[Path, dict[str, torch.Tensor]]:
    recipe = validate_recipe(_recipe(tmp_path))
    torch.manual_seed(0)
    backbone = build_components(recipe, default_registry(), with_dataset=False).backbone
    raw = {k: v.clone() for k, v in backbone.state_dict().items()}
    ema = {k: v + 1 if v.is_floating_point() else v.clone() for k, v in raw.items()}
    path = tmp_path / name
    Checkpoint(recipe=data, model=raw, ema=ema, step=3).save(path)
    return path, ema


def test_sections_replace_the_stored_ones_as_resolved_objects(tmp_path: Path) -> None:
    path, ema = _save(tmp_path, resolved_dict(validate_recipe(_recipe(tmp_path))))
    current = validate_recipe(_recipe(tmp_path, sample={"sampler": {"name": "sde", "steps": 5}, "seeds": [1, 2]},
                                      eval={"evaluators": ["entropy"], "num_references": 4}))
    trained = load_trained(path, sample=current.sample, evaluation=current.eval)
    assert trained.recipe.sample is current.sample and trained.recipe.eval is current.eval
    assert trained.recipe.sample.sampler.config.steps == 5                 # the resolved config came along
    assert trained.recipe.eval.evaluators[0].config is current.eval.evaluators[0].config
    assert resolved_dict(trained.recipe)["sample"] == resolved_dict(current)["sample"]
    assert trained.step == 3 and trained.recipe.backbone.config.width == 16
    for name, t in trained.components.backbone.state_dict().items():   # EMA weights (sample.use_ema)
        assert torch.equal(t, ema[name]), name


def test_a_replaced_stored_section_is_not_validated(tmp_path: Path) -> None:
    stored = resolved_dict(validate_recipe(_recipe(tmp_path)))
    stored["sample"]["sampler"] = {"name": "a-plugin-sampler-not-loaded-here"}
    path, _ = _save(tmp_path, stored)
    current = validate_recipe(_recipe(tmp_path))
    assert load_trained(path, sample=current.sample).recipe.sample.sampler.name == "euler"
    with pytest.raises(RecipeError, match="a-plugin-sampler-not-loaded-here"):
        load_trained(path)


def test_user_overrides_apply_to_the_stored_recipe(tmp_path: Path) -> None:
    path, _ = _save(tmp_path, resolved_dict(validate_recipe(_recipe(tmp_path))))
    trained = load_trained(path, ["sampler.steps=7", "sample.seeds=[4, 5]"], use_ema=False)
    assert trained.recipe.sample.sampler.config.steps == 7 and trained.recipe.sample.seeds == [4, 5]
