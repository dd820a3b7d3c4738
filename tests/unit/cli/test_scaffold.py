"""`elfkit plugins new sampler NAME`: the generated plugin registers and its generated test passes as is."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from elfkit.cli.scaffold import new_sampler_plugin
from elfkit.errors import ElfkitError
from elfkit.registry import build_registry
from tests.fixtures import REPO


def _run_generated_tests(test_file, monkeypatch=None, syspath=None):
    if syspath is not None:
        monkeypatch.syspath_prepend(str(syspath))
    spec = importlib.util.spec_from_file_location(f"generated_{test_file.stem}", test_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ran = [name for name in dir(module) if name.startswith("test_")]
    for name in ran:
        getattr(module, name)()
    return ran


def test_one_file_plugin_is_conformant_as_generated(tmp_path):
    files = new_sampler_plugin("my-sampler", tmp_path)
    assert [p.name for p in files] == ["my_sampler.py", "test_my_sampler.py"]
    assert _run_generated_tests(tmp_path / "test_my_sampler.py") == ["test_conformance", "test_registered"]
    registry = build_registry([tmp_path / "my_sampler.py"], entry_points=False)
    spec = registry.get("sampler", "my-sampler")
    assert spec.config.__name__ == "MySamplerConfig" and spec.build({"steps": 4}).nfe(4) == 4


def test_package_plugin_is_conformant_as_generated(tmp_path, monkeypatch):
    files = new_sampler_plugin("fast-ode", tmp_path, package=True)
    root = tmp_path / "elfkit-fast-ode"
    assert {p.relative_to(root).as_posix() for p in files} == {
        "pyproject.toml", "README.md", "elfkit_fast_ode.py", "tests/test_elfkit_fast_ode.py"}
    pyproject = (root / "pyproject.toml").read_text()
    assert '[project.entry-points.elfkit]\nfast-ode = "elfkit_fast_ode"' in pyproject
    try:
        ran = _run_generated_tests(root / "tests" / "test_elfkit_fast_ode.py", monkeypatch, syspath=root)
    finally:
        sys.modules.pop("elfkit_fast_ode", None)
    assert ran == ["test_conformance", "test_registered"]


def test_bad_names_and_overwrites_are_refused(tmp_path):
    for bad in ("My-Sampler", "1st", "a--b", "import", "x_y"):
        with pytest.raises(ElfkitError, match="invalid plugin name"):
            new_sampler_plugin(bad, tmp_path)
    new_sampler_plugin("mine", tmp_path)
    with pytest.raises(ElfkitError, match="overwrite"):
        new_sampler_plugin("mine", tmp_path)


def test_contributing_tutorial_code_runs(tmp_path):
    """The sampler and test written in CONTRIBUTING.md's tutorial work exactly as printed."""
    text = (REPO / "CONTRIBUTING.md").read_text(encoding="utf-8")
    blocks = {}
    for block in text.split("```python\n")[1:]:
        code = block.split("\n```", 1)[0]
        first = code.splitlines()[0]
        if first.startswith("# ") and first.endswith(".py") and "/" not in first:
            blocks[first[2:]] = code + "\n"
    assert set(blocks) == {"my_sampler.py", "test_my_sampler.py"}
    for name, code in blocks.items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    assert _run_generated_tests(tmp_path / "test_my_sampler.py") == ["test_my_sampler_conforms"]
    registry = build_registry([tmp_path / "my_sampler.py"], entry_points=False)
    assert set(registry.get("sampler", "my-sampler").config.model_fields) == {"steps", "gamma"}


def test_contributing_k_diffusion_port_passes_the_kit(tmp_path):
    """The worked port of k-diffusion's sample_euler_ancestral in CONTRIBUTING.md runs as printed."""
    from elfkit.registry import load_file_plugin
    from elfkit.testing import check_sampler

    text = (REPO / "CONTRIBUTING.md").read_text(encoding="utf-8")
    (code,) = [b.split("\n```", 1)[0] for b in text.split("```python\n")[1:] if b.startswith("# port of k-diffusion")]
    (tmp_path / "euler_ancestral.py").write_text(code + "\n", encoding="utf-8")
    plugin = load_file_plugin(tmp_path / "euler_ancestral.py")
    assert "transport" in check_sampler(plugin.EulerAncestral, order=False)
    assert "order" in check_sampler(plugin.EulerAncestral, {"eta": 0.0}, transport=False)
    registry = build_registry([tmp_path / "euler_ancestral.py"], entry_points=False)
    assert set(registry.get("sampler", "euler-ancestral").config.model_fields) == {"steps", "eta"}
