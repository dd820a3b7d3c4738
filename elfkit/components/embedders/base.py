"""What every embedder shares: the latent normalisation, the encoder precision policy and the
conversion of ELF's (B, S, S) pairwise mask into the 4-D additive mask HF encoders accept.

Why 4-D: transformers 5.x builds encoder masks with ``create_bidirectional_mask``, which
expands a 3-D (B, S, S) mask to 5-D and crashes; a 4-D (B, 1, S, S) mask is passed through
as-is. It must be *additive* (0 / large negative), not 0/1: the eager attention adds the
mask to the scores, so a 0/1 mask would silently attend everywhere. The negative value is a
finite −1e9 rather than ``finfo.min``: under bf16 autocast ``finfo(float32).min`` rounds to
−inf, and a fully masked row (padding rows of a label-dropped example whose condition fills
the valid length) would then turn into NaN instead of a harmless uniform softmax.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from elfkit.config import ComponentConfig

Precision = Literal["auto", "fp32", "bf16"]


class LatentNormConfig(ComponentConfig):
    """The latent normalisation ``x = (enc − latent_mean) / latent_std`` (scalars, as ELF)."""

    latent_mean: float = 0.0
    """Subtracted from every encoder output coordinate (ELF: 0.0)."""
    latent_std: float = Field(default=1.0, gt=0)
    """Divides the centred output; chosen so latents have roughly unit variance."""

    def expected_dim(self) -> int | None:
        """The latent width D this config will produce, known without loading weights (recipe
        validation checks it against the backbone); None = only known once built."""
        return None


def config_width(model_dir: str | Path, key: str) -> int | None:
    """An integer width (e.g. ``hidden_size``) from a model directory's ``config.json``; None
    when the file or key is missing or unreadable (validation then leaves the check to build time)."""
    try:
        value = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


class EncoderConfig(LatentNormConfig):
    precision: Precision = "auto"
    """'auto': bf16 autocast on CUDA (the torch port's default), fp32 elsewhere; or force one."""


MASKED = -1e9


def additive_mask(pairwise: Tensor | None, dtype: torch.dtype = torch.float32) -> Tensor | None:
    """(B, S, S) bool → (B, 1, S, S) additive float: 0 where allowed, −1e9 where not."""
    if pairwise is None:
        return None
    allowed = pairwise[:, None].bool()                                     # (B, 1, S, S)
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, MASKED)


def autocast_context(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """bf16 autocast for frozen encoders on CUDA under 'auto'; nothing on CPU (fp32 reference)."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class FrozenEncoder(nn.Module):
    """Base for frozen pretrained encoders: parameters never train and dropout stays off.

    Subclasses implement ``_encode(input_ids, mask4d) -> (B, S, D)`` raw encoder outputs;
    ``embed`` adds the precision policy and the normalisation.
    """

    trainable = False

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenEncoder:
        # a trainer calling .train() on everything must not switch a frozen encoder's dropout on
        return super().train(False)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _encode(self, input_ids: Tensor, mask4d: Tensor | None) -> Tensor:
        raise NotImplementedError

    def embed(self, input_ids: Tensor, pairwise_mask: Tensor | None = None) -> Tensor:
        """input_ids (B, S) long, pairwise_mask (B, S, S) bool or None → latents (B, S, D) fp32."""
        device = self._device()
        ids = input_ids.to(device)
        mask = additive_mask(pairwise_mask.to(device) if pairwise_mask is not None else None, torch.float32)
        with autocast_context(device, self.cfg.precision):
            enc = self._encode(ids, mask)                                  # (B, S, D)
        return (enc.float() - self.cfg.latent_mean) / self.cfg.latent_std
