"""Building components: an explicit backbone size that cannot fit the embedder is refused before data loads."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from elfkit.errors import RecipeError
from elfkit.pipeline.build import check_embedder_fits

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
