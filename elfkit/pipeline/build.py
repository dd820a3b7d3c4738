"""Build the components a recipe names (through the registry) into one bundle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from elfkit.components.targets import Target
from elfkit.contracts import Dataset, Embedder, Objective, SupportsUnembeddingTie, TimeDistribution
from elfkit.core.flow import FlowPath
from elfkit.errors import RecipeError
from elfkit.recipe.schema import Recipe
from elfkit.registry import Registry

if TYPE_CHECKING:
    from elfkit.contracts import BackboneModule


@dataclass
class Components:
    """Everything training and sampling need, built from one resolved recipe.

    The backbone is built with the embedder's latent dimension and vocabulary and the
    dataset's sequence length filled in (``latent_dim``, ``vocab_size``, ``max_length``).
    An embedder that asks for it (``learned-table`` with ``tie_unembedding``) shares its
    table with the backbone's unembedding (one Parameter object in both). The target is
    bound to the recipe's flow path: training, sampling and export pass just ``target``.
    """

    recipe: Recipe
    registry: Registry
    dataset: Dataset | None          # None when built without it (sampling an unconditional model)
    embedder: Embedder
    backbone: BackboneModule         # a Backbone that is an nn.Module
    target: Target                   # bound to the recipe's flow path
    time: TimeDistribution
    objective: Objective

    @property
    def path(self) -> FlowPath:
        """The flow path the target is bound to (its only copy)."""
        return self.target.path


def build_components(recipe: Recipe, registry: Registry, *, with_dataset: bool = True) -> Components:
    """Build every component; the backbone gets the embedder's dimension and vocabulary.

    Sequence length: the dataset config's ``max_length``. The unembedding tie is made here,
    so training, :func:`~elfkit.pipeline.trained.load_trained` (sampling) and export all get it.

    Every initial weight is drawn from ``recipe.seed``: the components are built under a torch
    RNG seeded with it and forked from the process's, so the same recipe gives the same initial
    model in any process, whatever ran before, and the caller's RNG stream is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        return _build(recipe, registry, with_dataset=with_dataset)


def _build(recipe: Recipe, registry: Registry, *, with_dataset: bool) -> Components:
    embedder = registry.build("embedder", recipe.embedder.name, recipe.embedder.config)
    dataset = registry.build("dataset", recipe.data.name, recipe.data.config) if with_dataset else None
    backbone_cfg = recipe.backbone.config
    check_embedder_fits(backbone_cfg, embedder)
    fill: dict[str, Any] = {}
    for key, value in (("latent_dim", embedder.dim), ("vocab_size", embedder.tokenizer.vocab_size),
                       ("max_length", getattr(recipe.data.config, "max_length", None))):
        if hasattr(backbone_cfg, key) and getattr(backbone_cfg, key) is None and value is not None:
            fill[key] = value
    if fill:
        backbone_cfg = backbone_cfg.model_copy(update=fill)
    backbone = registry.build("backbone", recipe.backbone.name, backbone_cfg)
    tie_unembedding(embedder, backbone, embedder_name=recipe.embedder.name, backbone_name=recipe.backbone.name)
    return Components(
        recipe=recipe,
        registry=registry,
        dataset=dataset,
        embedder=embedder,
        backbone=backbone,
        target=registry.build("target", recipe.target.name, recipe.target.config).bind(
            recipe.path.flow_path(), name=recipe.target.name),
        time=registry.build("time", recipe.time.name, recipe.time.config),
        objective=registry.build("objective", recipe.objective.name, recipe.objective.config),
    )


def check_embedder_fits(backbone_cfg: Any, embedder: Embedder) -> None:
    """An explicit ``backbone.latent_dim`` must be the built embedder's width, and an explicit
    ``backbone.vocab_size`` must cover its tokenizer's ids; refused here, before data preparation,
    also for embedders whose width validation could not know in advance."""
    dim, vocab = embedder.dim, embedder.tokenizer.vocab_size
    given = getattr(backbone_cfg, "latent_dim", None)
    if given is not None and given != dim:
        raise RecipeError(f"backbone.latent_dim is {given}, but the embedder (embedder.name) produces {dim}-d "
                          f"latents; remove backbone.latent_dim (it is filled in from the embedder) or set it to {dim}")
    given = getattr(backbone_cfg, "vocab_size", None)
    if given is not None and given < vocab:
        raise RecipeError(f"backbone.vocab_size is {given}, smaller than the embedder's tokenizer vocabulary "
                          f"({vocab}): its token ids would be out of range; remove backbone.vocab_size (it is "
                          "filled in from the embedder) or set it to at least that")


def tie_unembedding(embedder: Embedder, backbone: nn.Module, *, embedder_name: str = "?",
                    backbone_name: str = "?") -> bool:
    """Tie the backbone's unembedding to ``embedder.tied_unembedding`` if the embedder offers one.

    Returns whether a tie was made. A backbone without ``tie_unembedding(weight)`` cannot honour
    the request: that is a :class:`RecipeError` rather than a silently untied run.
    """
    weight = getattr(embedder, "tied_unembedding", None)
    if weight is None:
        return False
    if not isinstance(backbone, SupportsUnembeddingTie):
        raise RecipeError(f"embedder '{embedder_name}' has tie_unembedding: true, but backbone '{backbone_name}' "
                          "cannot tie its unembedding (it has no tie_unembedding(weight) method); set "
                          "embedder.tie_unembedding: false")
    backbone.tie_unembedding(weight)
    return True


def sampling_time(recipe: Recipe, registry: Registry, components: Components | None = None) -> TimeDistribution:
    """The time component that draws the sampling grid (default: the training one, as ELF)."""
    if recipe.sample.grid is None:
        if components is not None:
            return components.time
        return registry.build("time", recipe.time.name, recipe.time.config)
    return registry.build("time", recipe.sample.grid.name, recipe.sample.grid.config)

