"""Condition classifier-free guidance (ELF De-En and XSum, reference §6.3): ``u + w·(c − u)``.

The conditional pass is a self-cond-guided evaluation (at ``self_cond_scale``); the
unconditional pass is the same evaluation with the condition positions of z, of the
self-cond slot and of the clean condition all set to zero — how the model saw dropped
labels in training. Both are combined on every prediction field and the condition positions
are restored; the guided x̂ is what the sampler hands back as the next self-conditioning.
This guidance is not distilled into training, so it always costs two passes (w ≠ 1).
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from elfkit.components.guidance.base import ModelEvaluation, token
from elfkit.components.guidance.self_cond import self_cond_passes, self_cond_prediction
from elfkit.config import ComponentConfig
from elfkit.contracts import Denoiser
from elfkit.records import ModelCapabilities, Prediction


class CfgConfig(ComponentConfig):
    scale: float = Field(default=2.0, ge=0)
    """Condition guidance w: 1 = conditional model only (one pass), 0 = unconditional (ELF: 2.0)."""
    self_cond_scale: float = Field(default=1.0, ge=0)
    """Self-conditioning guidance inside each pass (ELF conditional tasks: 1.0)."""


class CfgGuidance:
    """Condition CFG over self-cond-guided passes. Meaningful only for conditional generation."""

    def __init__(self, cfg: CfgConfig) -> None:
        self.cfg = cfg

    def passes(self, capabilities: ModelCapabilities) -> int:
        inner = self_cond_passes(capabilities, self.cfg.self_cond_scale)
        return inner if self.cfg.scale == 1.0 else 2 * inner

    def decode_scale(self, capabilities: ModelCapabilities) -> float | None:
        return token(capabilities, self.cfg.self_cond_scale)

    def denoiser(self, evaluate: ModelEvaluation) -> Denoiser:
        scale, sc_scale = self.cfg.scale, self.cfg.self_cond_scale

        def denoise(z: Tensor, t: Tensor, self_cond: Tensor | None = None) -> Prediction:
            cond = self_cond_prediction(evaluate, z, t, self_cond, sc_scale)
            if scale == 1.0:
                return cond
            uncond = self_cond_prediction(evaluate, z, t, self_cond, sc_scale, drop_condition=True)
            return evaluate.pin(uncond.lerp(cond, scale))

        return denoise
