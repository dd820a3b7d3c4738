"""The registry: built-ins via the same hook, duplicates, hook typos, plugins that raise."""

from __future__ import annotations

import types

import pytest

from elfkit import hookimpl
from elfkit.config import ComponentConfig
from elfkit.errors import RegistryError
from elfkit.registry import KINDS, build_registry, load_file_plugin
from tests.fixtures import fake_components


def test_builtins_register_through_the_hook():
    reg = build_registry(entry_points=False)
    assert {"x", "eps", "v"} <= set(reg.names("target"))
    assert reg.get("target", "x").provider == "elfkit.components.targets"
    assert set(KINDS) >= {"dataset", "embedder", "backbone", "target", "time", "sampler", "guidance",
                          "objective", "evaluator", "exporter"}


def test_unknown_name_lists_registered_and_suggests():
    reg = build_registry(entry_points=False)
    with pytest.raises(RegistryError) as e:
        reg.get("target", "epss")
    assert "Registered targets: eps, v, x" in str(e.value) and "Did you mean 'eps'" in str(e.value)


def _plugin(name: str, kind: str = "sampler", comp: str = "fake-sampler"):
    mod = types.ModuleType(name)

    @hookimpl
    def elfkit_register_components(registry):
        registry.add(kind, comp, fake_components.Fake, fake_components.FakeConfig)
    mod.elfkit_register_components = elfkit_register_components
    return mod


def test_duplicate_names_both_providers():
    reg = build_registry(entry_points=False, extra_plugins=[_plugin("plug_a"), _plugin("plug_b")])
    assert len(reg.problems) == 1
    msg = reg.problems[0].message
    assert "duplicate sampler 'fake-sampler'" in msg and "plug_a" in msg and "plug_b" in msg
    with pytest.raises(RegistryError, match="duplicate"):
        build_registry(entry_points=False, extra_plugins=[_plugin("plug_a"), _plugin("plug_b")], strict=True)


def test_misspelt_hook_is_reported_with_suggestion_and_rest_works():
    mod = types.ModuleType("typo_plugin")

    @hookimpl
    def elfkit_register_component(registry):  # missing trailing 's'
        raise AssertionError("must never be called")
    mod.elfkit_register_component = elfkit_register_component
    reg = build_registry(entry_points=False, extra_plugins=[mod])
    assert "unknown hook 'elfkit_register_component'" in reg.problems[0].message
    assert "did you mean 'elfkit_register_components'" in reg.problems[0].message
    assert "x" in reg.names("target")


def test_unknown_kind_and_bad_config_class():
    reg = build_registry(entry_points=False, extra_plugins=[_plugin("bad_kind", kind="samplr")])
    assert "unknown kind 'samplr'" in reg.problems[0].message

    mod = types.ModuleType("bad_cfg")

    @hookimpl
    def elfkit_register_components(registry):
        registry.add("sampler", "x1", object, dict)
    mod.elfkit_register_components = elfkit_register_components
    reg = build_registry(entry_points=False, extra_plugins=[mod])
    assert "pydantic BaseModel" in reg.problems[0].message


def test_file_plugin_raising_at_import_is_named(tmp_path):
    bad = tmp_path / "boom.py"
    bad.write_text("raise RuntimeError('kaboom')\n")
    with pytest.raises(RegistryError) as e:
        load_file_plugin(bad)
    assert "boom.py" in str(e.value) and "kaboom" in str(e.value)
    with pytest.raises(RegistryError, match="not found"):
        load_file_plugin(tmp_path / "missing.py")


def test_file_plugin_registers(tmp_path):
    f = tmp_path / "my_plugin.py"
    f.write_text(
        "from elfkit import hookimpl\n"
        "from elfkit.config import ComponentConfig\n"
        "class C(ComponentConfig):\n    k: int = 1\n"
        "class S:\n    def __init__(self, cfg):\n        self.cfg = cfg\n"
        "@hookimpl\n"
        "def elfkit_register_components(registry):\n"
        "    registry.add('sampler', 'mine', S, C)\n")
    reg = build_registry([f], entry_points=False)
    spec = reg.get("sampler", "mine")
    assert spec.provider == f"file:{f}" and spec.build({"k": 3}).cfg.k == 3


def test_config_must_be_pydantic_and_component_config_is_strict():
    class C(ComponentConfig):
        a: int = 1
    with pytest.raises(Exception, match="Extra inputs"):
        C(b=2)
