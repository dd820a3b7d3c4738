"""Frozen T5 encoder (ELF's latent space): last hidden state after the final RMSNorm, /0.2.

The pairwise (B, S, S) mask must reach every encoder block. On the installed transformers
(5.x) a 3-D mask crashes in ``create_bidirectional_mask`` and a 4-D additive mask is passed
through untouched, so that is what we give it. Other transformers versions have mis-expanded
3-D masks silently (reference §2, PR9), so at load time the stock path is compared against
:func:`t5_encode_by_hand`, an explicit walk of the blocks with the same 4-D mask, on a tiny
conditional input; if they disagree (or the stock call raises) the hand walk is used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from elfkit.components._hf import quiet_transformers
from elfkit.components.datasets.collate import pairwise_mask, sequence_masks
from elfkit.components.embedders.base import EncoderConfig, FrozenEncoder, additive_mask, config_width
from elfkit.components.embedders.tokenizers import TransformersTokenizer, load_tokenizer
from elfkit.errors import DataError, HubUnreachableError, MissingDependencyError

log = logging.getLogger(__name__)


T5_WIDTHS = {"t5-small": 512, "t5-base": 768, "t5-large": 1024, "t5-3b": 1024, "t5-11b": 1024}
"""d_model of the original T5 checkpoints (hub ids, also under ``google-t5/``), for validation."""


class T5EmbedderConfig(EncoderConfig):
    model: str = "t5-small"
    """Hub id or local directory of a T5 checkpoint (any size; only the encoder is loaded)."""
    tokenizer: str | None = None
    """Tokenizer hub id / directory; None = the model's own."""
    latent_std: float = Field(default=0.2, gt=0)
    """ELF divides T5-small encoder outputs by 0.2 in every shipped config (class default 1.0 is wrong)."""
    mask_path: Literal["auto", "stock", "manual"] = "auto"
    """How the pairwise mask reaches the blocks: 'stock' = transformers' forward with a 4-D mask,
    'manual' = our hand walk of the blocks, 'auto' = stock if it matches the hand walk at load."""

    def expected_dim(self) -> int | None:
        if Path(self.model).is_dir():
            return config_width(self.model, "d_model")
        return T5_WIDTHS.get(self.model.removeprefix("google-t5/"))


# ----------------------------------------------------------------------------------------
# The hand walk
# ----------------------------------------------------------------------------------------
def t5_encode_by_hand(model: Any, input_ids: Tensor, mask4d: Tensor | None) -> Tensor:
    """T5 encoder forward written out block by block (no dropout, unscaled QK).

    model: a transformers ``T5EncoderModel``; input_ids (B, S); mask4d (B, 1, S, S) additive
    or None. The relative position bias is computed once in block 0 and shared, as T5 does.
    Returns the last hidden state (B, S, D) after the final RMSNorm.
    """
    stack = model.encoder
    h = stack.embed_tokens(input_ids)                                      # (B, S, D)
    B, S, _ = h.shape
    bias = None
    for block in stack.block:
        attn_layer, ff_layer = block.layer[0], block.layer[-1]
        sa = attn_layer.SelfAttention
        if bias is None:
            bias = sa.compute_bias(S, S, device=h.device)                  # (1, H, S, S)
            if mask4d is not None:
                bias = bias + mask4d                                       # (B, H, S, S)
        x = attn_layer.layer_norm(h)
        heads, dk = sa.n_heads, sa.key_value_proj_dim
        q, k, v = (proj(x).view(B, S, heads, dk).transpose(1, 2) for proj in (sa.q, sa.k, sa.v))  # (B, H, S, dk)
        scores = q @ k.transpose(-1, -2) + bias                            # (B, H, S, S), T5: no 1/√dk
        weights = torch.softmax(scores.float(), dim=-1).type_as(scores)
        ctx = (weights @ v).transpose(1, 2).reshape(B, S, heads * dk)      # (B, S, H·dk)
        h = h + sa.o(ctx)
        h = h + ff_layer.DenseReluDense(ff_layer.layer_norm(h))
    return stack.final_layer_norm(h)


def _probe_inputs(vocab: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """A tiny batch with a condition, a target and padding: the case that mis-expands."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, max(3, vocab), (2, 7), generator=g).to(device)
    cond, valid = sequence_masks(torch.tensor([2, 3]), torch.tensor([5, 7]), 7)
    return ids, pairwise_mask(cond, valid).to(device)


def stock_path_agrees(model: Any, atol: float = 1e-4) -> bool:
    """Does transformers' own forward with a 4-D mask match the hand walk (fp32, tiny input)?"""
    device = next(model.parameters()).device
    ids, pm = _probe_inputs(model.config.vocab_size, device)
    mask = additive_mask(pm)
    with torch.inference_mode():
        try:
            stock = model(input_ids=ids, attention_mask=mask).last_hidden_state
        except Exception as exc:  # a future transformers may reject the mask outright
            log.warning("T5 stock forward rejected a 4-D mask (%s); using the hand walk", exc)
            return False
        manual = t5_encode_by_hand(model, ids, mask)
    return bool(torch.allclose(stock.float(), manual.float(), atol=atol, rtol=1e-4))


# ----------------------------------------------------------------------------------------
# The component
# ----------------------------------------------------------------------------------------
class T5Embedder(FrozenEncoder):
    """Frozen T5 encoder; owns its tokenizer. ``dim`` = d_model (512 for t5-small)."""

    def __init__(self, cfg: T5EmbedderConfig, encoder: Any, tokenizer: Any) -> None:
        super().__init__(cfg)
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.dim: int = int(encoder.config.d_model)
        self.freeze()
        self.use_manual = cfg.mask_path == "manual" or (cfg.mask_path == "auto" and not stock_path_agrees(encoder))
        if self.use_manual and cfg.mask_path == "auto":
            log.warning("transformers' T5 forward mis-handles the pairwise mask here; walking the blocks by hand")
        self.identity = (f"t5:{cfg.model}:{tokenizer.name}:mean={cfg.latent_mean}:std={cfg.latent_std}")

    @classmethod
    def from_config(cls, cfg: T5EmbedderConfig) -> T5Embedder:
        try:
            from transformers import T5EncoderModel
        except ImportError as exc:
            raise MissingDependencyError("the t5 embedder needs transformers: pip install 'elfkit[models]'") from exc
        try:
            quiet_transformers()
            encoder = T5EncoderModel.from_pretrained(cfg.model, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            if Path(cfg.model).exists():
                raise DataError(f"cannot load a T5 encoder from {cfg.model}: {exc}") from exc
            raise HubUnreachableError(
                f"could not load the T5 encoder '{cfg.model}' from the Hugging Face hub ({type(exc).__name__}). "
                "Download it where the hub is reachable and set `embedder.model:` to that local directory "
                "(config.json, model.safetensors, spiece.model/tokenizer.json). Offline alternative: the "
                "'minilm' embedder (recipes/quickstart.yaml, recipes/bible-translate.yaml).") from exc
        spec = cfg.tokenizer or cfg.model
        tokenizer = TransformersTokenizer.from_pretrained(spec) if cfg.tokenizer is None else load_tokenizer(spec)
        return cls(cfg, encoder, tokenizer)

    def _encode(self, input_ids: Tensor, mask4d: Tensor | None) -> Tensor:
        if self.use_manual:
            return t5_encode_by_hand(self.encoder, input_ids, mask4d)
        return self.encoder(input_ids=input_ids, attention_mask=mask4d).last_hidden_state   # (B, S, D)
