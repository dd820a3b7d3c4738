"""The plain records the component kinds exchange: predictions, batches, losses, samples, metrics.

The Protocols that produce and consume them are in :mod:`elfkit.contracts`.
Shapes: B batch, S sequence, D latent dimension, H backbone width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "BackboneOutput", "Batch", "MetricRecord", "ModelCapabilities", "ObjectiveOutput", "Prediction",
    "PredictionSpace", "SampleRecord", "SamplerOutput",
]

PredictionSpace = Literal["x", "eps", "v"]
"""A field of :class:`Prediction`: what a network outputs and where a loss is taken."""


@dataclass(frozen=True)
class Prediction:
    """One model evaluation, expressed in all three parameterisations.

    ``x`` is the clean-latent estimate x̂, ``eps`` the (scaled) noise estimate ε̂ and
    ``v`` the velocity v̂ = dz/dt, all (B, S, D) and all consistent with the input ``z``
    at time ``t`` (the target component does the conversion, with its clamps).
    Guidance combines predictions linearly, field by field.
    """

    x: Tensor
    eps: Tensor
    v: Tensor

    def lerp(self, other: Prediction, weight: float | Tensor) -> Prediction:
        """``self + weight·(other − self)``: CFG's ``u + w·(c − u)`` with self=u, other=c."""
        return Prediction(
            x=self.x + weight * (other.x - self.x),
            eps=self.eps + weight * (other.eps - self.eps),
            v=self.v + weight * (other.v - self.v),
        )


@dataclass(frozen=True)
class SamplerOutput:
    """What a sampler returns: the final latent and the last x̂ it saw, both (B, S, D)."""

    z: Tensor
    x_hat: Tensor
    nfe: int


@dataclass(frozen=True)
class ModelCapabilities:
    self_conditioning: bool
    guidance_tokens: bool
    decoder_head: bool
    latent_dim: int
    vocab_size: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Batch:
    """A collated batch, exactly as ELF's ``collate_fn`` builds it (see elfkit.components.datasets.collate).

    input_ids:      (B, S) long, ``[condition ++ target]`` right-padded with pad or EOS.
    valid_mask:     (B, S) bool, position < total length (ELF ``attention_mask``; never
                    passed to the backbone, only used for the loss mask).
    cond_mask:      (B, S) bool, position < condition length.
    loss_mask:      (B, S) float, (valid if pad-mode 'pad' else 1)·(1 − cond).
    pairwise_mask:  (B, S, S) bool or None; row i may attend column j (encoder only).
    label_drop:     (B,) bool, condition dropped for CFG training (drawn per example).
    example_index:  (B,) long or None, row of each example in its dataset (lets a latent
                    cache serve frozen-encoder latents; None when unknown).
    """

    input_ids: Tensor
    valid_mask: Tensor
    cond_mask: Tensor
    loss_mask: Tensor
    pairwise_mask: Tensor | None = None
    label_drop: Tensor | None = None
    example_index: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        def mv(x: Tensor) -> Tensor:
            return x.to(device, non_blocking=True)

        def mv_opt(x: Tensor | None) -> Tensor | None:
            return None if x is None else mv(x)
        return Batch(mv(self.input_ids), mv(self.valid_mask), mv(self.cond_mask), mv(self.loss_mask),
                     mv_opt(self.pairwise_mask), mv_opt(self.label_drop), mv_opt(self.example_index))

    @property
    def conditional(self) -> bool:
        return bool(self.cond_mask.any())


@dataclass(frozen=True)
class BackboneOutput:
    """``out``: (B, S, D) raw network output (x̂, ε̂₀ or v̂ per the target).
    ``hidden``: (B, S, H) un-normalised last hidden state (input of the decoder head)."""

    out: Tensor
    hidden: Tensor


@dataclass
class ObjectiveOutput:
    """What an objective returns for one micro-batch.

    ``loss``: the scalar to backpropagate (already normalised).
    ``logs``: plain floats for the progress bar and ``train_log.jsonl`` (e.g. ``l2``, ``ce``)."""

    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class SampleRecord:
    """One generated sample as written to ``samples.jsonl``."""

    text: str
    token_ids: list[int]
    seed: int
    index: int
    source: str | None = None      # conditional tasks: the condition text
    reference: str | None = None   # conditional tasks: the reference target text


@dataclass
class MetricRecord:
    """One number with its provenance (judge, precision, sample count, seed)."""

    name: str
    value: float
    n: int
    seed: int | None = None
    judge: str | None = None
    precision: str | None = None
    details: dict[str, Any] | None = None
