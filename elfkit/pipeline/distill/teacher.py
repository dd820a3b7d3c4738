"""The distillation teacher: found, checked against the student's recipe, loaded frozen.

A teacher is an elfkit run directory (or a checkpoint file inside its ``checkpoints/``), or an
official checkpoint (file, folder or hub id, read by the same path as
:func:`~elfkit.components.backbones.official.load_official`). Every check runs before any
training: a missing or unreadable teacher, or one whose architecture or latent space differs
from the student's, is an error naming the file and the differing keys.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from elfkit.components.backbones.official import (
    is_hub_id,
    load_official,
    read_official_state_dict,
    resolve_official_source,
)
from elfkit.errors import CheckpointError, HubUnreachableError, RecipeError
from elfkit.pipeline.build import Components
from elfkit.pipeline.checkpoint import load_checkpoint
from elfkit.pipeline.rundir import RunDir
from elfkit.recipe.load import resolved_dict

# recipe sections that fix the teacher's latent space and architecture (they must match the student's)
MATCHING_SECTIONS = ("embedder", "backbone", "target", "path")
# elfkit checkpoint files (``.pt``: the old pickle format, which loading refuses with the converter command)
_ELFKIT_FILE = re.compile(r"^(last|step_\d+\.safetensors|(last|step_\d+)\.pt)$")


@dataclass(frozen=True)
class Teacher:
    """The frozen teacher backbone, where it came from, and its weights as a state dict."""

    module: nn.Module
    source: str
    kind: str                    # 'elfkit' or 'official'
    step: int | None
    state: dict[str, Tensor]


def elfkit_checkpoint(source: str) -> Path | None:
    """The elfkit checkpoint ``source`` names (run directory or a file in its ``checkpoints/``), else None."""
    p = Path(source).expanduser()
    last = RunDir(p).checkpoints.last
    if p.is_dir() and last.is_file():
        return last
    if p.is_dir() and RunDir(p).checkpoints.has_any():   # no pointer: the newest intact step file, or old files
        return RunDir(p).checkpoints.path
    if p.is_dir() and RunDir(p).stages_file.is_file():
        raise CheckpointError(f"distill.teacher: run directory {p} has no checkpoint yet ({last}); "
                              "finish its training first (rerun its `elfkit run` command)")
    if p.is_file() and p.parent.name == "checkpoints" and _ELFKIT_FILE.match(p.name):
        return p
    return None


def check_source(source: str) -> None:
    """Fail fast (before any model is built) on a teacher that is not there. A missing local path
    that reads like a hub id (``runs/quickstart`` does) is looked up on the hub (cache first)."""
    if elfkit_checkpoint(source) is not None or Path(source).expanduser().exists():
        return
    missing = (f"distill.teacher '{source}' not found: expected an elfkit run directory (e.g. runs/quickstart, "
               "made by `elfkit run recipes/quickstart.yaml`), an official checkpoint file or folder, or a hub id "
               "like embedded-language-flows/ELF-B-owt-torch")
    if not is_hub_id(source):
        raise CheckpointError(missing)
    try:
        resolve_official_source(source)
    except HubUnreachableError as exc:
        raise CheckpointError(f"{missing}. It is no local path, and as a hub id: {exc}") from None


def _differences(theirs: Any, ours: Any, prefix: str) -> list[str]:
    """Keys present on both sides whose values differ (fields one version lacks are not compared)."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        return [d for k in theirs.keys() & ours.keys() for d in _differences(theirs[k], ours[k], f"{prefix}.{k}")]
    return [] if theirs == ours else [f"{prefix}: teacher {theirs!r}, student {ours!r}"]


def _student_copy(components: Components) -> nn.Module:
    if getattr(components.backbone, "tied", False):
        raise RecipeError("distillation needs an untied decoder unembedding (the teacher is a separate copy of the "
                          "backbone); set embedder.tie_unembedding: false")
    return copy.deepcopy(components.backbone)


def load_teacher(source: str, components: Components, *, use_ema: bool = True) -> Teacher:
    """The frozen teacher for ``components``' student, from ``source`` (see the module doc)."""
    module = _student_copy(components)
    ckpt = elfkit_checkpoint(source)
    if ckpt is not None:
        saved = load_checkpoint(ckpt)
        ours = resolved_dict(components.recipe)
        diffs = [d for k in MATCHING_SECTIONS for d in _differences(saved.recipe.get(k), ours.get(k), k)]
        if diffs:
            raise RecipeError(f"distill.teacher {ckpt} was trained in another latent space or with another "
                              "architecture than this recipe's student:\n  " + "\n  ".join(diffs)
                              + "\nmake the student's embedder/backbone/target/path sections match the teacher's")
        state = saved.ema if use_ema and saved.ema else saved.model
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"distill.teacher {ckpt}: weights do not match the student's backbone: "
                                  f"{str(exc).splitlines()[0]}") from None
        kind, step = "elfkit", saved.step
    else:
        check_source(source)
        state = read_official_state_dict(source, use_ema=use_ema)
        load_official(module, state)      # strict: names and shapes (architecture, latent width, vocabulary)
        kind, step = "official", None
    module.eval().requires_grad_(False)
    return Teacher(module, str(source), kind, step, {k: v.detach().clone() for k, v in module.state_dict().items()})
