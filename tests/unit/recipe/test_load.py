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
    with pytest.raises(RecipeError, match="is a directory; pass a recipe YAML file"):
        load_recipe(tmp_path, registry=registry)
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
    ("  lr: true", "r.yaml:11: train.lr: expects a number, got true (a boolean is not a number here)"),
    ("  ema_decay: false", "r.yaml:11: train.ema_decay: expects a number, got false"),
    ("  adam_betas: [0.9, true]", "r.yaml:11: train.adam_betas: item 1 expects a number, got true"),
    ("  max_spike_steps: true", "r.yaml:11: train.max_spike_steps: expects a whole number, got true"),
])
def test_non_finite_or_non_positive_lr_and_boolean_counts_name_file_line_and_key(tmp_path, registry, line, needle):
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, GOOD + line + "\n"), registry=registry)
    assert needle in str(e.value)


def test_a_boolean_is_not_a_step_count(tmp_path, registry):
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, GOOD.replace("steps: 10", "steps: true")), registry=registry)
    assert str(e.value) == (f"{tmp_path / 'r.yaml'}:10: train.steps: expects a whole number, got true "
                            "(a boolean is not a number here)")
    with pytest.raises(RecipeError, match="train.steps: expects a whole number, got false"):
        load_recipe(write(tmp_path, GOOD), ["train.steps=false"], registry=registry)
    with pytest.raises(RecipeError, match="seed: expects a whole number, got true"):
        load_recipe(write(tmp_path, GOOD + "seed: true\n"), registry=registry)
    with pytest.raises(RecipeError, match=r"sample.seeds: item 1 expects a whole number, got true"):
        load_recipe(write(tmp_path, GOOD), ["sample.seeds=[0, true]"], registry=registry)
    ok = load_recipe(write(tmp_path, GOOD), ["sample.use_ema=false"],
                     registry=registry)
    assert ok.sample.use_ema is False          # a boolean where a boolean is meant still passes


def test_a_boolean_is_not_a_number_in_a_component_config(tmp_path, registry):
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, GOOD), ["sample.sampler.size=true"], registry=registry)
    assert str(e.value).endswith("sample.sampler.size: expects a whole number, got true "
                                 "(a boolean is not a number here)")
    ok = load_recipe(write(tmp_path, GOOD), ["sample.sampler.size=3"], registry=registry)
    assert ok.sample.sampler.config.size == 3


def test_accepts_bool_reads_unions_and_literals():
    from typing import Any, Literal

    from elfkit.config import accepts_bool
    assert accepts_bool(bool) and accepts_bool(int | bool) and accepts_bool(Any) and accepts_bool(Literal[True, "x"])
    assert not accepts_bool(int) and not accepts_bool(float | None) and not accepts_bool(Literal["a", 1])


def test_bool_for_number_finds_a_boolean_in_any_number_slot():
    from typing import Any, Literal

    from elfkit.config import bool_for_number
    whole, number = "expects a whole number, got true", "expects a number, got false"
    assert bool_for_number(True, int).startswith(whole)
    assert bool_for_number(False, float | None).startswith(number)
    assert bool_for_number(True, int | float).startswith("expects a number")
    assert bool_for_number([1, 2, True], list[int]).startswith("item 2 " + whole)
    assert bool_for_number((0.9, False), tuple[float, float]).startswith("item 1 " + number)
    assert bool_for_number([0.5, False], tuple[float, ...] | None).startswith("item 1 " + number)
    assert bool_for_number({"a": True}, dict[str, float]).startswith("key 'a' expects a number, got true")
    assert bool_for_number([[1], [True]], list[list[int]]).startswith("item 1 item 0 " + whole)
    # where a boolean is allowed, or the slot is not a number (pydantic names that type error itself)
    for value, annotation in [(True, bool), (True, int | bool), (True, Any), (True, Literal[True, "x"]),
                              (True, str), (True, list[int]), ([True], list[Any]), ([True], list[bool]),
                              ({"a": [True]}, dict[str, list[Any]]), (3, int), ([1, 2.5], list[float])]:
        assert bool_for_number(value, annotation) is None, (value, annotation)


def test_exporter_specs_refuse_a_boolean_size_too():
    from pydantic import ValidationError

    from elfkit.components.exporters.spec import DimRange
    with pytest.raises(ValidationError, match="expects a whole number, got true"):
        DimRange(min=True, opt=4, max=8)


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


# ----------------------------------------------------------------------------------------
# Inputs that used to escape as tracebacks or blame the wrong place
# ----------------------------------------------------------------------------------------
def test_binary_recipe_file_names_the_file_line_and_byte(tmp_path, registry):
    p = tmp_path / "r.yaml"
    p.write_bytes(b"name: t\n\xff\xfe\x00garbage\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(p, registry=registry)
    assert "r.yaml:2: not a UTF-8 text file (byte 0xff at offset 8)" in str(e.value)


@pytest.mark.parametrize("item, needle", [
    ("=3", "--set '=3': the key before '=' is empty"),
    ("  =3", "the key before '=' is empty"),
    (".steps=3", "'.steps' has an empty part between dots"),
    ("train..steps=3", "'train..steps' has an empty part between dots"),
    ("train.steps.x=3", "--set train.steps.x: 'train.steps' holds a value (10), not a section"),
])
def test_malformed_set_items_blame_the_option(tmp_path, registry, item, needle):
    with pytest.raises(RecipeError) as e:
        load_recipe(write(tmp_path, GOOD), [item], registry=registry)
    assert needle in str(e.value)
    assert "r.yaml:1" not in str(e.value)


@pytest.mark.parametrize("item, needle", [
    ("train.steps=abc", "train.steps: Input should be a valid integer"),
    ("data.prob=1.5", "data.prob: Input should be less than or equal to 1"),
    ("data.sise=3", "data.sise: unknown key 'sise'"),
    ("foo.bar=1", "foo: unknown key 'foo'"),
    ("sampler=nope", "sample.sampler.name: unknown sampler 'nope'"),
    ("data={name: fake-dataset, size: -1}", "data.size"),
])
def test_values_that_fail_validation_say_they_came_from_set(tmp_path, registry, item, needle):
    p = write(tmp_path, GOOD)
    with pytest.raises(RecipeError) as e:
        load_recipe(p, [item], registry=registry)
    assert f"--set {item} (applied to {p}): {needle}" in str(e.value), str(e.value)


def test_errors_in_the_file_still_name_the_line_next_to_set_items(tmp_path, registry):
    p = write(tmp_path, GOOD.replace("size: 8", "size: -8"))
    with pytest.raises(RecipeError) as e:
        load_recipe(p, ["train.steps=0"], registry=registry)
    msg = str(e.value)
    assert f"--set train.steps=0 (applied to {p}): train.steps" in msg
    # the data line is reported after the schema error is fixed
    with pytest.raises(RecipeError, match=r"r.yaml:2: data.size"):
        load_recipe(p, ["train.steps=5"], registry=registry)


def test_setting_the_recipe_name_keeps_the_recipe(tmp_path, registry):
    r = load_recipe(write(tmp_path, GOOD), ["name=[red]renamed:b:"], registry=registry)
    assert r.name == "[red]renamed:b:" and r.data.name == "fake-dataset" and r.train.steps == 10


def test_check_sampling_overrides_allows_only_sample_and_eval():
    from elfkit.recipe.load import check_sampling_overrides
    check_sampling_overrides(["sampler=euler", "sampler.steps=8", "sample.num_samples=4", "eval.references=false",
                              "guidance.scale=2"])
    with pytest.raises(RecipeError) as e:
        check_sampling_overrides(["sampler.steps=8", "train.steps=5"])
    msg = str(e.value)
    assert "--set 'train.steps=5'" in msg and "only sample.* and eval.* keys" in msg
    assert "trained with the recipe stored in its checkpoint" in msg
    with pytest.raises(RecipeError, match="not 'target.name'"):
        check_sampling_overrides(["target=eps"])


# ----------------------------------------------------------------------------------------
# Plugin paths: relative to the recipe's folder, never outside it
# ----------------------------------------------------------------------------------------
PLUGIN = """\
from pathlib import Path
Path({marker!r}).write_text("ran")
"""


def _plugin_recipe(tmp_path: Path, entry: str) -> Path:
    folder = tmp_path / "shared" / "recipes"
    folder.mkdir(parents=True)
    p = folder / "r.yaml"
    p.write_text(GOOD.replace("name: t\n", f"name: t\nplugins: [{entry}]\n"))
    return p


def test_plugin_path_escaping_the_recipe_folder_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran.txt"
    (tmp_path / "evil.py").write_text(PLUGIN.format(marker=str(marker)))
    p = _plugin_recipe(tmp_path, "../../evil.py")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)      # no registry given: plugins would be loaded
    msg = str(e.value)
    assert "r.yaml:2: plugins: '../../evil.py' resolves to" in msg and "outside the recipe's folder" in msg
    assert "Nothing was run" in msg
    assert not marker.exists()


def test_plugin_symlink_leaving_the_folder_is_refused(tmp_path):
    marker = tmp_path / "ran.txt"
    (tmp_path / "evil.py").write_text(PLUGIN.format(marker=str(marker)))
    p = _plugin_recipe(tmp_path, "inside.py")
    (p.parent / "inside.py").symlink_to(tmp_path / "evil.py")
    with pytest.raises(RecipeError, match="outside the recipe's folder"):
        load_recipe(p)
    assert not marker.exists()


def test_plugin_paths_resolve_relative_to_the_recipe_and_absolute_ones_are_allowed(tmp_path):
    from elfkit.recipe.load import resolve_plugin_paths
    p = _plugin_recipe(tmp_path, "sub/mine.py")
    (p.parent / "sub").mkdir()
    (p.parent / "sub" / "mine.py").write_text("")
    (tmp_path / "abs.py").write_text("")
    assert resolve_plugin_paths(["sub/mine.py", "./sub/../sub/mine.py"], p) == [(p.parent / "sub" / "mine.py")] * 2
    assert resolve_plugin_paths([str(tmp_path / "abs.py")], p) == [tmp_path / "abs.py"]
    with pytest.raises(RecipeError, match="file not found"):
        resolve_plugin_paths(["missing.py"], p)
    with pytest.raises(RecipeError, match="expected a list of plugin file paths"):
        resolve_plugin_paths("mine.py", p)


# ----------------------------------------------------------------------------------------
# Embedder ↔ backbone widths, checked at validation
# ----------------------------------------------------------------------------------------
DIMS = """\
name: d
data: {name: local, data_files: x.txt, max_length: 16}
embedder: {name: gaussian-table, dim: 16}
backbone: {name: elf, preset: null, depth: 1, width: 32, heads: 2, latent_dim: 24}
"""


def test_embedder_width_that_the_backbone_cannot_take_is_refused_with_both_keys(tmp_path):
    registry = build_registry(entry_points=False)
    p = tmp_path / "r.yaml"
    p.write_text(DIMS)
    with pytest.raises(RecipeError) as e:
        load_recipe(p, registry=registry)
    msg = str(e.value)
    assert "r.yaml:4: backbone.latent_dim is 24" in msg
    assert "the embedder 'gaussian-table' (embedder.name, " in msg and "r.yaml:3) produces 16-d latents" in msg
    with pytest.raises(RecipeError, match=r"--set backbone.latent_dim=8 \(applied to .*\): backbone.latent_dim is 8"):
        load_recipe(p, ["backbone.latent_dim=8"], registry=registry)
    assert load_recipe(p, ["backbone.latent_dim=16"], registry=registry).backbone.config.latent_dim == 16
    assert load_recipe(p, ["backbone.latent_dim=null"], registry=registry).backbone.config.latent_dim is None


def test_known_embedder_widths_need_no_model():
    from elfkit.components.embedders import GaussianTableConfig
    from elfkit.components.embedders.t5 import T5EmbedderConfig
    assert GaussianTableConfig(dim=12).expected_dim() == 12
    assert T5EmbedderConfig().expected_dim() == 512
    assert T5EmbedderConfig(model="google-t5/t5-base").expected_dim() == 768
    assert T5EmbedderConfig(model="someone/unknown-t5").expected_dim() is None


def test_a_local_model_directory_gives_its_width(tmp_path):
    from elfkit.components.embedders.minilm import MiniLMEmbedderConfig
    from elfkit.components.embedders.t5 import T5EmbedderConfig
    (tmp_path / "config.json").write_text('{"hidden_size": 96, "d_model": 80}')
    assert MiniLMEmbedderConfig(path=str(tmp_path)).expected_dim() == 96
    assert T5EmbedderConfig(model=str(tmp_path)).expected_dim() == 80
    assert MiniLMEmbedderConfig(path=str(tmp_path / "missing")).expected_dim() is None
