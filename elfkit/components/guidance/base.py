"""Guidance helpers. The contract (:class:`~elfkit.contracts.Guidance`): turn a *model evaluation*
into the :class:`~elfkit.contracts.Denoiser` a sampler calls.

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

from elfkit.contracts import Guidance, ModelEvaluation
from elfkit.records import ModelCapabilities

__all__ = ["Guidance", "ModelEvaluation", "token"]


def token(capabilities: ModelCapabilities, scale: float) -> float | None:
    """The w token to feed: ``scale`` when the model has guidance tokens, else None."""
    return float(scale) if capabilities.guidance_tokens else None
