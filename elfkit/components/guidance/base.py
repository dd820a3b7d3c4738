"""The guidance contract: turn a *model evaluation* into the :class:`~elfkit.types.Denoiser` a sampler calls.

A guidance component never sees the sampler and the sampler never sees it: the sampler
calls ``denoiser(z, t, self_cond)`` and counts one NFE; the guidance decides how many
network forwards (``passes``) that call costs and how they combine. The total forward
count of a generation is therefore ``sampler.nfe(steps) × guidance.passes(capabilities)``
plus one decoder forward.

A :class:`ModelEvaluation` is one forward of the network turned into a :class:`Prediction`
with the condition positions handled (see :class:`elfkit.generation.ModelEvaluator`, the
implementation generation uses).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from elfkit.types import Denoiser, ModelCapabilities, Prediction


class ModelEvaluation(Protocol):
    """``evaluate(z, t, self_cond, *, guidance_scale, drop_condition) -> Prediction``: one forward.

    Args:
        z: (B, S, D) latent at time ``t`` (B,).
        self_cond: (B, S, D) previous x̂ for the self-conditioning slot, or None for the
            "no self-conditioning" slot (zeros). Ignored by models without self-conditioning.
        guidance_scale: the value of the model's guidance (w) tokens; required when
            ``capabilities.guidance_tokens``, ignored otherwise.
        drop_condition: the unconditional CFG pass: condition positions of z, of the
            self-cond slot and of the clean condition are all zero.

    The returned prediction has x̂ = clean condition (or 0 when dropped) and v̂ = 0 at the
    condition positions. ``pin`` re-applies exactly that to a combined prediction.
    """

    capabilities: ModelCapabilities

    def __call__(self, z: Tensor, t: Tensor, self_cond: Tensor | None = None, *,
                 guidance_scale: float | None = None, drop_condition: bool = False) -> Prediction: ...

    def pin(self, pred: Prediction, *, drop_condition: bool = False) -> Prediction: ...


@runtime_checkable
class Guidance(Protocol):
    """A guidance component. Stateless: holds only its config.

    ``passes(capabilities)`` is the number of network forwards per denoiser call, known
    before running; ``decode_scale(capabilities)`` the w token for the final decoder forward
    (None when the model has no guidance tokens); ``denoiser(evaluate)`` the callable the
    sampler gets.
    """

    def passes(self, capabilities: ModelCapabilities) -> int: ...

    def decode_scale(self, capabilities: ModelCapabilities) -> float | None: ...

    def denoiser(self, evaluate: ModelEvaluation) -> Denoiser: ...


def token(capabilities: ModelCapabilities, scale: float) -> float | None:
    """The w token to feed: ``scale`` when the model has guidance tokens, else None."""
    return float(scale) if capabilities.guidance_tokens else None
