"""No guidance: one forward per denoiser call, the w token (if any) at 1.0."""

from __future__ import annotations

from torch import Tensor

from elfkit.components.guidance.base import ModelEvaluation, token
from elfkit.config import ComponentConfig
from elfkit.contracts import Denoiser
from elfkit.records import ModelCapabilities, Prediction


class NoGuidanceConfig(ComponentConfig):
    """No options."""


class NoGuidance:
    """The plain model: self-conditioned on the previous x̂, w token = 1 (no SC guidance)."""

    def __init__(self, cfg: NoGuidanceConfig) -> None:
        self.cfg = cfg

    def passes(self, capabilities: ModelCapabilities) -> int:
        return 1

    def decode_scale(self, capabilities: ModelCapabilities) -> float | None:
        return token(capabilities, 1.0)

    def denoiser(self, evaluate: ModelEvaluation) -> Denoiser:
        w = token(evaluate.capabilities, 1.0)

        def denoise(z: Tensor, t: Tensor, self_cond: Tensor | None = None) -> Prediction:
            return evaluate(z, t, self_cond, guidance_scale=w)

        return denoise
