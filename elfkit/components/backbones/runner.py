"""The two calls generation makes, on an eager backbone (the :class:`~elfkit.contracts.ModelRunner`).

``EagerRunner`` is what samplers use by default; exporters trace ``DenoiseModule`` and
``DecodeModule`` (plain ``nn.Module`` s with tensor-only signatures, ``torch.export``-able)
and wrap the artifacts in a runner of their own with the same two methods.
The caller owns the grad mode (wrap sampling in ``torch.inference_mode()``).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from elfkit.records import ModelCapabilities

if TYPE_CHECKING:
    from elfkit.contracts import Backbone


def _decode_forward(backbone: Backbone, z: Tensor, guidance: Tensor | None) -> Tensor:
    """One decode-mode forward at t=1 with an all-zero self-cond slot → logits (B, S, V).

    ELF's decoder was trained only on this input (reference §4.3): t=1, mode tokens on,
    self-cond slot zero (``self_cond=None`` means zeros), the same w token as sampling.
    """
    t = torch.ones(z.shape[0], device=z.device, dtype=torch.float32)
    hidden = backbone(z, t, self_cond=None, guidance=guidance, decode=True).hidden
    return backbone.decode_logits(hidden)


class EagerRunner:
    """:class:`~elfkit.contracts.ModelRunner` over an in-memory backbone.

    Args:
        backbone: an ELF-compatible backbone (``forward(z, t, *, self_cond, guidance, decode)``,
            ``decode_logits``, ``capabilities``).
        autocast_dtype: run the blocks under ``torch.autocast`` with this dtype (e.g.
            ``torch.bfloat16`` on GPU); None runs in the parameters' precision.
    """

    def __init__(self, backbone: Backbone, autocast_dtype: torch.dtype | None = None) -> None:
        self.backbone = backbone
        self.autocast_dtype = autocast_dtype

    @property
    def capabilities(self) -> ModelCapabilities:
        return self.backbone.capabilities

    def _autocast(self, z: Tensor) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(z.device.type, dtype=self.autocast_dtype)

    def denoise(self, z: Tensor, t: Tensor, self_cond: Tensor | None, guidance: Tensor | None) -> Tensor:
        """(B, S, D) raw network output in denoise mode (mode tokens off)."""
        with self._autocast(z):
            return self.backbone(z, t, self_cond=self_cond, guidance=guidance, decode=None).out

    def decode(self, z: Tensor, guidance: Tensor | None) -> Tensor:
        """(B, S, V) fp32 logits of the final latent ``z`` (B, S, D)."""
        with self._autocast(z):
            return _decode_forward(self.backbone, z, guidance)


def _supported(backbone: Backbone, self_cond: Tensor | None, guidance: Tensor | None
               ) -> tuple[Tensor | None, Tensor | None]:
    """Drop the inputs the backbone has no capability for, so exported artifacts keep one
    fixed four-input signature whatever the model (their manifest records the capabilities)."""
    caps = backbone.capabilities
    return (self_cond if caps.self_conditioning else None), (guidance if caps.guidance_tokens else None)


class DenoiseModule(nn.Module):
    """``forward(z, t, self_cond, guidance) -> out``: the denoise call as a module, for export.

    ``self_cond``/``guidance`` are ignored when the backbone lacks that capability
    (``capabilities.self_conditioning`` / ``guidance_tokens``), so every artifact has the
    same signature; ``self_cond=None`` means a zero slot."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, z: Tensor, t: Tensor, self_cond: Tensor | None = None,
                guidance: Tensor | None = None) -> Tensor:
        self_cond, guidance = _supported(self.backbone, self_cond, guidance)
        return self.backbone(z, t, self_cond=self_cond, guidance=guidance, decode=None).out


class DecodeModule(nn.Module):
    """``forward(z, guidance) -> logits``: the decode call as a module, for export
    (``guidance`` ignored without guidance tokens)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, z: Tensor, guidance: Tensor | None = None) -> Tensor:
        return _decode_forward(self.backbone, z, _supported(self.backbone, None, guidance)[1])
