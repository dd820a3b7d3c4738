"""build_components: the recipe's seed alone decides every initial weight, and an explicit backbone size that
cannot fit the embedder is refused before data loads."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from elfkit.errors import RecipeError
from elfkit.pipeline.build import build_components, check_embedder_fits
from elfkit.recipe.load import validate_recipe
from elfkit.registry import default_registry


def _weights(tmp_path: Path, seed: int) -> dict[str, torch.Tensor]:
    recipe = validate_recipe({
        "name": "build", "seed": seed,
        "data": {"name": "local", "data_files": str(tmp_path / "data.txt"), "max_length": 8},
        "embedder": {"name": "learned-table", "dim": 8},   # a trainable table: initialised from the seed too
        "backbone": {"name": "elf", "preset": None, "depth": 1, "width": 16, "heads": 2, "bottleneck_dim": 4,
                     "decoder_hidden": 8},
    })
    c = build_components(recipe, default_registry(), with_dataset=False)
    assert isinstance(c.embedder, torch.nn.Module)
    return {**{f"backbone.{k}": v for k, v in c.backbone.state_dict().items()},
            **{f"embedder.{k}": v for k, v in c.embedder.state_dict().items()}}


def test_initial_weights_depend_on_the_recipe_seed_only(tmp_path) -> None:
    torch.manual_seed(123)
    a = _weights(tmp_path, seed=0)
    torch.randn(1000)                       # whatever ran before in this process ...
    before = torch.random.get_rng_state()
    b = _weights(tmp_path, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)    # ... and the caller's stream is left alone
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = _weights(tmp_path, seed=1)
    changed = [k for k in a if a[k].is_floating_point() and a[k].std() > 0 and not torch.equal(a[k], c[k])]
    assert "embedder.weight" in changed
    assert any(k.startswith("backbone.") for k in changed)

EMBEDDER = SimpleNamespace(dim=16, tokenizer=SimpleNamespace(vocab_size=100))


def cfg(**kw):
    return SimpleNamespace(**{"latent_dim": None, "vocab_size": None, **kw})


def test_unset_or_matching_sizes_pass():
    check_embedder_fits(cfg(), EMBEDDER)
    check_embedder_fits(cfg(latent_dim=16, vocab_size=100), EMBEDDER)
    check_embedder_fits(cfg(vocab_size=128), EMBEDDER)     # a padded head covers every id
    check_embedder_fits(SimpleNamespace(), EMBEDDER)       # a backbone without these fields


def test_wrong_width_or_too_small_vocabulary_names_the_key():
    with pytest.raises(RecipeError, match=r"backbone.latent_dim is 24, .* produces 16-d latents"):
        check_embedder_fits(cfg(latent_dim=24), EMBEDDER)
    with pytest.raises(RecipeError, match=r"backbone.vocab_size is 50, smaller than .* \(100\)"):
        check_embedder_fits(cfg(vocab_size=50), EMBEDDER)
