"""Provenance: the resolved recipe records which plugin provided each component, validation says
which one is missing, and an installed plugin passed again as a file is a notice, not a crash."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from elfkit.errors import RecipeError
from elfkit.recipe.load import dump_yaml, load_recipe, resolved_dict
from elfkit.registry import build_registry, missing_sources

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "recipes" / "tiny.yaml"
HEUN = REPO / "plugins" / "elfkit-heun" / "elfkit_heun.py"

PLUGIN = '''
from elfkit import hookimpl
from elfkit.components.samplers import EulerConfig, EulerSampler


@hookimpl
def elfkit_register_components(registry):
    registry.add("sampler", "file-euler", EulerSampler, EulerConfig)
'''


def _plugin_file(tmp_path: Path) -> Path:
    path = tmp_path / "file_euler.py"
    path.write_text(PLUGIN, encoding="utf-8")
    return path


def test_a_plugin_file_is_recorded_with_its_sha256_and_reloaded_from_the_run_recipe(tmp_path):
    plugin = _plugin_file(tmp_path)
    registry = build_registry([plugin], entry_points=False)
    recipe = load_recipe(TINY, ["sample.sampler.name=file-euler"], registry=registry)
    resolved = resolved_dict(recipe)
    digest = hashlib.sha256(plugin.read_bytes()).hexdigest()
    assert resolved["provenance"] == [{"component": "sampler/file-euler", "file": str(plugin.resolve()),
                                       "sha256": digest}]
    assert str(plugin.resolve()) in resolved["plugins"]
    run_recipe = tmp_path / "run" / "recipe.yaml"
    run_recipe.parent.mkdir()
    run_recipe.write_text(dump_yaml(resolved), encoding="utf-8")
    assert load_recipe(run_recipe).sample.sampler.name == "file-euler"     # validates as written
    plugin.rename(tmp_path / "moved.py")
    with pytest.raises(RecipeError) as err:
        load_recipe(run_recipe)
    assert "provenance: sampler/file-euler came from the plugin file" in str(err.value)
    assert "missing" in str(err.value) and digest[:12] in str(err.value)


def test_builtins_leave_no_provenance():
    resolved = resolved_dict(load_recipe(TINY, registry=build_registry(entry_points=False)))
    assert "provenance" not in resolved


def test_an_entry_point_plugin_is_recorded_with_its_distribution_and_version():
    pytest.importorskip("elfkit_heun")
    registry = build_registry()
    if "heun" not in registry.names("sampler"):
        pytest.skip("elfkit-heun is not installed as a distribution")
    resolved = resolved_dict(load_recipe(TINY, ["sample.sampler.name=heun"], registry=registry))
    (entry,) = resolved["provenance"]
    assert entry["component"] == "sampler/heun" and entry["distribution"] == "elfkit-heun" and entry["version"]


def test_missing_distribution_says_what_to_install():
    msgs = missing_sources([{"component": "sampler/x", "distribution": "no-such-elfkit-plugin", "version": "1.2"}])
    assert msgs == ["sampler/x came from the distribution no-such-elfkit-plugin 1.2, which is not installed: "
                    "pip install 'no-such-elfkit-plugin==1.2'"]


def test_installed_and_passed_as_a_file_is_a_notice(tmp_path):
    registry = build_registry()
    if "heun" not in registry.names("sampler") or registry.get("sampler", "heun").source is None:
        pytest.skip("elfkit-heun is not installed as a distribution")
    copy = tmp_path / "elfkit_heun.py"
    shutil.copyfile(HEUN, copy)
    both = build_registry([copy])                                       # no RegistryError
    spec = both.get("sampler", "heun")
    assert spec.source is not None and spec.source.file == str(copy.resolve())
    notes = [p.message for p in both.problems if "heun" in p.message]
    assert notes and "also provided by the installed elfkit-heun" in notes[0] and "using the file" in notes[0]


def test_unknown_sampler_from_set_blames_the_set_item_and_names_the_plugin_routes():
    with pytest.raises(RecipeError) as err:
        load_recipe(TINY, ["sample.sampler.name=my-sampler"], registry=build_registry(entry_points=False))
    msg = str(err.value)
    assert msg.startswith("--set sample.sampler.name=my-sampler (applied to ") and "tiny.yaml:" not in msg
    assert "--plugin" in msg and "entry point" in msg


def test_unknown_sampler_in_yaml_blames_its_line(tmp_path):
    data = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    data["sample"]["sampler"] = {"name": "my-sampler"}
    path = tmp_path / "r.yaml"
    path.write_text(dump_yaml(data), encoding="utf-8")
    with pytest.raises(RecipeError) as err:
        load_recipe(path, registry=build_registry(entry_points=False))
    assert str(err.value).startswith(f"{path}:") and "--set" not in str(err.value)


def test_unknown_key_from_set_blames_the_set_item():
    with pytest.raises(RecipeError) as err:
        load_recipe(TINY, ["sample.sampler.gama=0.5"], registry=build_registry(entry_points=False))
    assert str(err.value).startswith("--set sample.sampler.gama=0.5 (applied to ") and "Did you mean 'gamma'" in str(
        err.value)
