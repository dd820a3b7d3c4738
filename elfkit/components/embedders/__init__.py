"""Built-in embedders: token ids (+ pairwise mask) → normalised latents (B, S, D).

Every embedder owns its tokenizer (``embedder.tokenizer``), its normalisation
``(enc − latent_mean)/latent_std``, reports ``dim`` and ``trainable``, and carries an
``identity`` string (used in latent-cache keys and checkpoints).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from elfkit.components.embedders.minilm import MiniLMEmbedder, MiniLMEmbedderConfig
from elfkit.components.embedders.t5 import T5Embedder, T5EmbedderConfig
from elfkit.components.embedders.tables import (
    GaussianTable,
    GaussianTableConfig,
    LearnedTable,
    LearnedTableConfig,
    PretrainedTable,
    PretrainedTableConfig,
)
from elfkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from elfkit.registry import ComponentRegistrar

__all__ = [
    "GaussianTable", "GaussianTableConfig", "LearnedTable", "LearnedTableConfig", "MiniLMEmbedder",
    "MiniLMEmbedderConfig", "PretrainedTable", "PretrainedTableConfig", "T5Embedder", "T5EmbedderConfig",
]


def _t5(cfg: T5EmbedderConfig) -> T5Embedder:
    """Frozen T5 encoder (ELF): contextual latents / 0.2; hub id or local path."""
    return T5Embedder.from_config(cfg)


def _minilm(cfg: MiniLMEmbedderConfig) -> MiniLMEmbedder:
    """Frozen all-MiniLM-L6-v2 encoder from its wheel (offline, 384-d)."""
    return MiniLMEmbedder.from_config(cfg)


@hookimpl
def elfkit_register_components(registry: ComponentRegistrar) -> None:
    registry.add("embedder", "t5", _t5, T5EmbedderConfig)
    registry.add("embedder", "minilm", _minilm, MiniLMEmbedderConfig)
    registry.add("embedder", "gaussian-table", GaussianTable, GaussianTableConfig,
                 "Frozen random N(0,1) token table (seeded).")
    registry.add("embedder", "pretrained-table", PretrainedTable, PretrainedTableConfig,
                 "Frozen token table from a pretrained model (MiniLM word embeddings).")
    registry.add("embedder", "learned-table", LearnedTable, LearnedTableConfig,
                 "Trainable token table (embedder.weight), tied to the decoder's unembedding by default.")
