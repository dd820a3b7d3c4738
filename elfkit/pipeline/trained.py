"""A trained model back from its checkpoint: the stored recipe's components with its weights.

Sampling, ``elfkit sample`` and export all start from a checkpoint and must rebuild exactly
what was trained (ties, filled-in dimensions, an untied embedder's own weights) and pick the
EMA or raw weights the same way; this module is that one path.

A checkpoint's stored recipe may list one-file plugins. They are never loaded from there
(that would run code a checkpoint names): only plugins the caller passes explicitly (``--plugin``,
or the recipe being run) are. A stored recipe that needs a missing plugin is an error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from elfkit.errors import CheckpointError, RecipeError, RegistryError
from elfkit.pipeline.build import Components, build_components
from elfkit.pipeline.checkpoint import load_checkpoint
from elfkit.recipe.load import apply_overrides, check_sampling_overrides, override_locations, validate_recipe
from elfkit.recipe.schema import EvalSection, Recipe, SampleSection
from elfkit.registry import default_registry, env_plugin_files


@dataclass
class Trained:
    """The recipe it was rebuilt from (with any replaced sections), its components with the
    chosen weights loaded, the training step, and the checkpoint file."""

    recipe: Recipe
    components: Components
    step: int
    checkpoint: Path


def load_trained(checkpoint: Path, overrides: Sequence[str] = (), *, use_ema: bool | None = None,
                 plugin_files: Sequence[str] = (), with_dataset: bool = False,
                 sample: SampleSection | None = None, evaluation: EvalSection | None = None) -> Trained:
    """Rebuild the components a checkpoint was trained with and load its (EMA) weights.

    ``overrides`` are ``--set`` items a person typed; they apply to the stored recipe and may
    only change sampling/eval keys (others are refused). ``sample``/``evaluation`` are already validated sections
    of another recipe (the run's current one) that replace the stored recipe's.
    """
    check_sampling_overrides(overrides)   # before loading: the rest of the recipe is how it was trained
    saved = load_checkpoint(checkpoint)
    data = apply_overrides(saved.recipe, list(overrides))
    given = [*env_plugin_files(), *plugin_files]
    not_loaded = _not_given(data.get("plugins") or [], given)
    data["plugins"] = [str(p) for p in plugin_files]   # what was actually loaded, recorded downstream
    registry = default_registry(plugin_files)
    sections: dict[str, Any] = {k: v for k, v in (("sample", sample), ("eval", evaluation)) if v is not None}
    # the stored copy of a replaced section is not validated: it may name a plugin's component
    # that this process does not load
    stored = {k: v for k, v in data.items() if k not in sections}
    try:
        recipe = validate_recipe(stored, source=f"{checkpoint} (stored recipe)", registry=registry,
                                 overridden=override_locations(overrides))
        if sections:
            recipe = recipe.model_copy(update=sections)
        components = build_components(recipe, registry, with_dataset=with_dataset)
    except (RecipeError, RegistryError) as exc:
        if not not_loaded:
            raise
        raise CheckpointError(
            f"{checkpoint} was trained with the plugin(s) {', '.join(not_loaded)}, which elfkit does not load "
            f"from a checkpoint (loading a plugin runs its code). If you trust them, pass each explicitly: "
            f"--plugin PATH.\n{exc}") from None
    ema = recipe.sample.use_ema if use_ema is None else use_ema
    state = saved.ema if ema and saved.ema else saved.model
    # An untied trainable embedder is saved on its own (EMA copy in "embedder_ema"). Load it
    # first: a table tied to the unembedding is the backbone's ``unembed_table``, so the
    # backbone state below sets it (with the same EMA/raw choice) for embedding and decoding.
    emb_state = saved.embedder_ema if ema and saved.embedder_ema else saved.embedder
    if emb_state is not None and isinstance(components.embedder, torch.nn.Module):
        components.embedder.load_state_dict(emb_state)
    try:
        components.backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint}: weights do not match the recipe's backbone: "
                              f"{str(exc).splitlines()[0]}") from None
    components.backbone.eval()
    return Trained(recipe, components, saved.step, Path(checkpoint))


def _not_given(stored: list[Any], given: Sequence[str]) -> list[str]:
    """Plugin files a stored recipe lists that the caller did not pass (compared as resolved paths)."""
    have = {str(Path(p).resolve()) for p in given}
    return [str(p) for p in stored if str(Path(str(p)).resolve()) not in have]
