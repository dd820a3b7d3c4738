"""Recipe loading: every kind of bad input gets a clear error with file, line, key and a hint."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from elfkit.errors import RecipeError
from elfkit.recipe.load import apply_overrides, duplicate_keys, load_recipe, resolved_dict
from elfkit.registry import build_registry
from tests.fixtures import fake_components

GOOD = """\
name: t
data: {name: fake-dataset, size: 8}
embedder: {name: fake-embedder}
backbone: {name: fake-backbone}
objective: {name: fake-objective}
sample:
  sampler: {name: fake-sampler}
  guidance: {name: fake-guidance}
train:
  steps: 10
"""


@pytest.fixture(scope="module")
def registry():
    return build_registry(entry_points=False, extra_plugins=[fake_components])


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_good_recipe_resolves_defaults(tmp_path, registry):
    r = load_recipe(write(tmp_path, GOOD), registry=registry)
    d = resolved_dict(r)
    assert d["data"] == {"name": "fake-dataset", "size": 8, "prob": 0.5}
    assert d["train"]["steps"] == 10 and d["train"]["ema_decay"] == 0.9999
    assert d["target"] == {"name": "x", "loss_space": "v"}
    assert d["path"]["noise_scale"] == 2.0


def test_unknown_component_lists_registered_names(tmp_path, registry):
    p = write(tmp_path, GOOD.replace("fake-backbone", "fake-backbon"))
    with pytest.raises(RecipeError) as e:
        load_recipe(p, registry=registry)
    msg = str(e.value)
    assert "r.yaml:4" in msg and "unknown backbone 'fake-backbon'" in msg
    assert "fake-backbone" in msg and "Did you mean 'fake-backbone'" in msg


def test_misspelt_section_key_has_line_and_suggestion(tmp_path, registry):
    p = write(tmp_path, GOOD.replace("  steps: 10", "  stesp: 10"))
    with pytest.raises(RecipeError) as e:
        load_recipe(p, registry=registry)
    msg = str(e.value)
    assert "r.yaml:10" in msg and "train.stesp" in msg and "Did you mean 'steps'" in msg


def test_misspelt_component_key_has_line_and_suggestion(tmp_path, registry):
    p = write(tmp_path, GOOD.replace("size: 8", "sise: 8"))
    with pytest.raises(RecipeError) as e:
        load_recipe(p, registry=registry)
    msg = str(e.value)
    assert "r.yaml:2" in msg and "data.sise" in msg and "Did you mean 'size'" in msg


@pytest.mark.parametrize("override, needle", [
    ("train.steps=0", "train.steps"),
    ("train.steps=abc", "train.steps"),
    ("data.prob=1.5", "data.prob"),
    ("data.size=-3", "data.size"),
    ("path.noise_scale=-1", "path.noise_scale"),
    ("train.ema_decay=2", "train.ema_decay"),
])
def test_wrong_type_and_out_of_range(tmp_path, registry, override, needle):
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, GOOD), [override], registry=registry)
    assert needle in str(e.value)


def test_set_override_and_aliases(tmp_path, registry):
    r = load_recipe(write(tmp_path, GOOD), ["train.steps=7", "target=eps"], registry=registry)
    assert r.train.steps == 7 and r.target.name == "eps"
    d = apply_overrides({"sample": {"sampler": "euler"}}, ["sampler.steps=8"])
    assert d["sample"]["sampler"] == {"name": "euler", "steps": 8}


def test_bad_override_syntax(tmp_path, registry):
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        load_recipe(write(tmp_path, GOOD), ["train.steps"], registry=registry)


def test_missing_file_empty_file_and_bad_yaml(tmp_path, registry):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml", registry=registry)
    with pytest.raises(RecipeError, match="empty"):
        load_recipe(write(tmp_path, ""), registry=registry)
    with pytest.raises(RecipeError, match="invalid YAML"):
        load_recipe(write(tmp_path, "name: [unclosed\n"), registry=registry)


def test_missing_required_section(tmp_path, registry):
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith("backbone"))
    with pytest.raises(RecipeError, match="backbone: required key is missing"):
        load_recipe(write(tmp_path, text), registry=registry)


def test_switching_component_name_starts_from_its_defaults():
    d = apply_overrides({"sample": {"sampler": {"name": "sde", "steps": 32, "gamma": 1.5}}},
                        ["sampler=euler", "sampler.steps=8"])
    assert d["sample"]["sampler"] == {"name": "euler", "steps": 8}
    same = apply_overrides({"sample": {"sampler": {"name": "sde", "gamma": 1.5}}}, ["sampler=sde"])
    assert same["sample"]["sampler"] == {"name": "sde", "gamma": 1.5}


def test_schema_defaults_come_from_the_components(tmp_path):
    """Default slots and the path section read the components' own defaults (declared once)."""
    from elfkit.components.guidance import SelfCondConfig
    from elfkit.components.objectives import ElfObjectiveConfig
    from elfkit.components.samplers import SdeConfig
    from elfkit.components.targets import TargetConfig
    from elfkit.components.time import LogitNormalConfig
    from elfkit.core.flow import FlowPath
    from elfkit.recipe.schema import PathSection, SampleSection

    registry = build_registry(entry_points=False, extra_plugins=[fake_components])
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith(("objective", "sample", "train", "  ")))
    d = resolved_dict(load_recipe(write(tmp_path, text), registry=registry))
    assert d["sample"]["sampler"] == {"name": "sde", **SdeConfig().model_dump()}
    assert d["sample"]["guidance"] == {"name": "self-cond", **SelfCondConfig().model_dump()}
    assert d["target"] == {"name": "x", **TargetConfig().model_dump()}
    assert d["time"] == {"name": "logit-normal", **LogitNormalConfig().model_dump()}
    assert d["objective"] == {"name": "elf", **ElfObjectiveConfig().model_dump()}
    assert PathSection().flow_path() == FlowPath() == FlowPath(noise_scale=2.0, t_eps=0.05, t_min=0.05)
    assert SampleSection().sampler.params == SdeConfig().model_dump()


# ---------------------------------------------------------------------------- bad numbers, duplicate keys
@pytest.mark.parametrize("line, needle", [
    ("  lr: .inf", "r.yaml:11: train.lr: Input should be a finite number (got inf)"),
    ("  lr: .nan", "r.yaml:11: train.lr: Input should be a finite number"),
    ("  lr: -.inf", "r.yaml:11: train.lr: Input should be a finite number"),
    ("  lr: 0", "r.yaml:11: train.lr: Input should be greater than 0 (got 0)"),
    ("  blr: .inf", "r.yaml:11: train.blr: Input should be a finite number (got inf)"),
    ("  blr: -1.0e-3", "r.yaml:11: train.blr: Input should be greater than 0"),
    ("  checkpoint_every: true", "r.yaml:11: train.checkpoint_every: expects a whole number, got true"),
])
def test_non_finite_or_non_positive_lr_and_boolean_counts_name_file_line_and_key(tmp_path, registry, line, needle):
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, GOOD + line + "\n"), registry=registry)
    assert needle in str(e.value)


def test_a_boolean_is_not_a_step_count(tmp_path, registry):
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, GOOD.replace("steps: 10", "steps: true")), registry=registry)
    assert str(e.value) == (f"{tmp_path / 'r.yaml'}:10: train.steps: expects a whole number, got true "
                            "(a boolean is not a count)")
    with pytest.raises(RecipeError, match="train.steps: expects a whole number, got false"):
        load_recipe(write(tmp_path, GOOD), ["train.steps=false"], registry=registry)
    with pytest.raises(RecipeError, match="seed"):
        load_recipe(write(tmp_path, GOOD + "seed: true\n"), registry=registry)


@pytest.mark.parametrize("extra, needle", [
    ("train:\n  steps: 5\n", "r.yaml:11: train: duplicate key (first set on line 9); keep one"),
    ("  steps: 20\n", "r.yaml:11: train.steps: duplicate key (first set on line 10); keep one"),
    ("sweep:\n  grid:\n    train.steps: [1]\n    train.steps: [2]\n",
     "r.yaml:14: sweep.grid.train.steps: duplicate key (first set on line 13); keep one"),
    ("eval:\n  evaluators:\n  - {name: entropy, name: gen-ppl}\n",
     "r.yaml:13: eval.evaluators.0.name: duplicate key (first set on line 13)"),
])
def test_a_duplicate_key_is_an_error_at_its_line(tmp_path, registry, extra, needle):
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, GOOD + extra), registry=registry)
    assert needle in str(e.value)


def test_duplicate_keys_walks_the_whole_document_and_lets_merge_keys_override():
    assert duplicate_keys(yaml.compose("a: &x {k: 1}\nb:\n  <<: *x\n  k: 2\n")) == []
    assert duplicate_keys(yaml.compose("a: 1\nb: {c: 1, c: 2}\nl: [{d: 1, d: 2}]\na: 3\n")) == [
        (("b", "c"), 2, 2), (("l", 0, "d"), 3, 3), (("a",), 1, 4)]
