"""The run directory: where every stage reads and writes, and which stages are done.

A person can read it: ``recipe.yaml`` (resolved), ``checkpoints/`` (laid out by
:class:`~elfkit.pipeline.checkpoint.CheckpointDir`), ``train_log.jsonl``,
``references.jsonl``, ``samples.jsonl``, ``metrics.json``, ``report.md`` and its plots.
``stages.json`` records each finished stage with the fingerprint of the settings it used,
so a rerun skips finished stages and redoes only those whose settings changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elfkit.errors import RecipeError
from elfkit.fileio import atomic_write_text
from elfkit.pipeline.checkpoint import CheckpointDir
from elfkit.recipe.load import dump_yaml, resolved_dict
from elfkit.recipe.schema import Recipe

# recipe sections that do not change what training produces
NON_TRAINING_KEYS = ("name", "description", "sample", "eval", "sweep", "plugins", "provenance")


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def training_fingerprint(resolved: dict[str, Any]) -> str:
    return fingerprint({k: v for k, v in resolved.items() if k not in NON_TRAINING_KEYS})


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def checkpoints(self) -> CheckpointDir:
        return CheckpointDir(self.root / "checkpoints")

    @property
    def train_log(self) -> Path:
        return self.root / "train_log.jsonl"

    @property
    def samples(self) -> Path:
        return self.root / "samples.jsonl"

    @property
    def references(self) -> Path:
        return self.root / "references.jsonl"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def stages_file(self) -> Path:
        return self.root / "stages.json"

    def write_recipe(self, recipe: Recipe) -> dict[str, Any]:
        """Write the resolved ``recipe.yaml`` (left untouched when it already says the same); returns the dict."""
        resolved = resolved_dict(recipe)
        text = dump_yaml(resolved)
        if not self.recipe.is_file() or self.recipe.read_text(encoding="utf-8") != text:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.recipe, text)
        return resolved

    def stages(self) -> dict[str, Any]:
        if not self.stages_file.exists():
            return {}
        try:
            return json.loads(self.stages_file.read_text())
        except json.JSONDecodeError:
            return {}

    def is_done(self, stage: str, fp: str) -> bool:
        return self.stages().get(stage, {}).get("fingerprint") == fp

    def mark_done(self, stage: str, fp: str, **info: Any) -> None:
        stages = self.stages()
        stages[stage] = {"fingerprint": fp, **info}
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.stages_file, json.dumps(stages, indent=2))

    def forget(self, *stage_names: str) -> None:
        stages = self.stages()
        for s in stage_names:
            stages.pop(s, None)
        if self.stages_file.exists():
            atomic_write_text(self.stages_file, json.dumps(stages, indent=2))

    def check_same_training(self, resolved: dict[str, Any]) -> None:
        """Refuse to resume a run directory made by a recipe with other training settings."""
        old = self.stages().get("train-started", {}).get("fingerprint")
        if old and old != training_fingerprint(resolved) and self.checkpoints.last.exists():
            raise RecipeError(
                f"run directory {self.root} holds a run trained with different settings "
                f"(recipe.yaml there differs from this recipe outside sample/eval). Use --out to pick "
                f"another directory, or delete {self.root} to start over.")
