"""Every recipe shipped in recipes/ loads and validates against the built-in registry.

Validation only: no data, tokenizer or model is loaded, so this is fast and needs no optional
wheel. One-file plugins a recipe names are loaded relative to the recipe, as ``load_recipe``
does. A recipe with a ``sweep:`` section must also name real recipe keys in its grid, each value
of which must validate at that key (what ``elfkit sweep`` will ``--set``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from elfkit.pipeline.sweep import parse_grid, to_overrides
from elfkit.recipe.load import load_recipe, read_yaml, resolved_dict
from elfkit.registry import Registry, build_registry
from tests.fixtures import REPO

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.fixture(scope="module")
def builtin_registry() -> Registry:
    return build_registry(entry_points=False)


def registry_for(path: Path, builtin: Registry) -> Registry:
    """The built-in registry, plus the one-file plugins the recipe names (paths relative to it)."""
    data, _ = read_yaml(path)
    files = [str((path.parent / p).resolve()) for p in data.get("plugins") or []]
    return build_registry(files, entry_points=False) if files else builtin


def has_key(tree: dict[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_the_recipes_folder_is_found():
    assert RECIPES, f"no recipes found in {REPO / 'recipes'}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(path, builtin_registry):
    registry = registry_for(path, builtin_registry)
    recipe = load_recipe(path, registry=registry)
    if recipe.sweep is None:
        return
    keys = parse_grid(recipe.sweep.grid)
    assert keys, f"{path.name}: the sweep section has an empty grid"
    resolved = resolved_dict(recipe)
    for key in keys:
        assert has_key(resolved, key.key), f"{path.name}: sweep grid key '{key.label}' ({key.key}) is not a recipe key"
        for value in key.values:
            load_recipe(path, to_overrides({key.label: value}, keys), registry=registry)


def test_official_distillation_recipe_holds_the_branch_values(builtin_registry: Registry) -> None:
    """recipes/elf-owt-distill.yaml: the distillation branch's curriculum and hyperparameters."""
    r = load_recipe(REPO / "recipes" / "elf-owt-distill.yaml", registry=builtin_registry)
    assert r.distill is not None and r.distill.teacher == "embedded-language-flows/ELF-B-owt-torch"
    assert [(x.student_steps, x.teacher_substeps) for x in r.distill.rounds] == [(16, 4), (8, 8), (4, 16), (2, 32),
                                                                                (1, 64)]
    assert (r.distill.teacher_use_ema, r.distill.init_from_teacher, r.distill.student_use_ema) == (True, True, True)
    t = r.train
    assert (t.steps, t.batch_size, t.blr, t.warmup_steps, t.ema_decay, t.optimizer) == (19017, 512, 1e-3, 1901,
                                                                                       0.9999, "muon")
    o = r.objective.config
    assert (o.decoder_prob, o.decoder_noise_scale, o.self_cond_prob, o.guidance_min, o.guidance_max) == (
        0.2, 5.0, 0.5, 0.5, 5.0)
    assert (r.time.config.mean, r.time.config.std, r.path.noise_scale) == (-1.5, 0.8, 2.0)
    assert r.sample.sampler.name == "sde" and r.sample.sampler.config.gamma == 1.5
    assert r.sample.guidance.config.scale == 2.5 and r.distill.compare_steps == [1, 2, 4, 8]


def test_a_distill_section_needs_the_distillation_objective(builtin_registry: Registry) -> None:
    from elfkit.errors import RecipeError
    with pytest.raises(RecipeError, match="objective 'progressive-distillation'"):
        load_recipe(REPO / "recipes" / "elf-owt-distill.yaml", ["objective.name=elf"], registry=builtin_registry)
