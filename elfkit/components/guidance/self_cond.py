"""Self-conditioning guidance (ELF's "SC-CFG"): ``f_nosc + w·(f_sc − f_nosc)``.

ELF trains this guidance *into* the model (reference §4.2): the target is the guided one
and w enters through the 4 guidance tokens. At inference that is **one** forward with the
w token set to ``scale`` (ELF: 3.0) — not two passes. Only a model without guidance tokens
but with self-conditioning uses the legacy two-pass form (reference §6.3): a pass with an
empty self-cond slot, a pass with the previous x̂, combined on every prediction field.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from elfkit.components.guidance.base import ModelEvaluation, token
from elfkit.config import ComponentConfig
from elfkit.contracts import Denoiser
from elfkit.records import ModelCapabilities, Prediction


class SelfCondConfig(ComponentConfig):
    scale: float = Field(default=3.0, ge=0)
    """w: 1 = plain self-conditioning, 0 = none; ELF samples OWT with 3 (conditional tasks: 1)."""


def uses_two_passes(capabilities: ModelCapabilities, scale: float) -> bool:
    """Legacy two-pass SC guidance: no w tokens, a self-cond slot, and a scale that mixes.

    At w=1 the result is f_sc and at w=0 it is f_nosc, so one forward suffices (as in the
    reference).
    """
    return (not capabilities.guidance_tokens and capabilities.self_conditioning
            and scale not in (0.0, 1.0))


def self_cond_passes(capabilities: ModelCapabilities, scale: float) -> int:
    return 2 if uses_two_passes(capabilities, scale) else 1


def self_cond_prediction(evaluate: ModelEvaluation, z: Tensor, t: Tensor, self_cond: Tensor | None,
                         scale: float, *, drop_condition: bool = False) -> Prediction:
    """One self-cond-guided evaluation (the reference's ``_forward_sample_self_cond``).

    Args:
        z: (B, S, D), t: (B,), self_cond: (B, S, D) previous x̂ or None (first call).
    """
    caps = evaluate.capabilities
    if caps.guidance_tokens or not caps.self_conditioning:
        return evaluate(z, t, self_cond, guidance_scale=token(caps, scale), drop_condition=drop_condition)
    if scale == 0.0:
        return evaluate(z, t, None, drop_condition=drop_condition)
    if scale == 1.0:
        return evaluate(z, t, self_cond, drop_condition=drop_condition)
    # Legacy two passes. At the first call (self_cond None) both passes see the empty
    # slot and agree; both still run so the forward count is always passes × calls.
    f_nosc = evaluate(z, t, None, drop_condition=drop_condition)
    f_sc = evaluate(z, t, self_cond, drop_condition=drop_condition)
    return evaluate.pin(f_nosc.lerp(f_sc, scale), drop_condition=drop_condition)


class SelfCondGuidance:
    """Self-conditioning guidance at scale w: one pass with the w token (ELF), else legacy two-pass."""

    def __init__(self, cfg: SelfCondConfig) -> None:
        self.cfg = cfg

    def passes(self, capabilities: ModelCapabilities) -> int:
        return self_cond_passes(capabilities, self.cfg.scale)

    def decode_scale(self, capabilities: ModelCapabilities) -> float | None:
        return token(capabilities, self.cfg.scale)

    def denoiser(self, evaluate: ModelEvaluation) -> Denoiser:
        scale = self.cfg.scale

        def denoise(z: Tensor, t: Tensor, self_cond: Tensor | None = None) -> Prediction:
            return self_cond_prediction(evaluate, z, t, self_cond, scale)

        return denoise
