"""The contracts between component kinds.

Each kind is a small ``Protocol``: plugins need not inherit anything, only match the
signatures. Shapes use the same letters everywhere: B batch, S sequence, D latent
dimension, H backbone width, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


# ----------------------------------------------------------------------------------------
# Predictions and the denoiser callable (what samplers see)
# ----------------------------------------------------------------------------------------
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


class Denoiser(Protocol):
    """``denoiser(z, t, self_cond) -> Prediction``.

    Args:
        z: (B, S, D) current latent at time ``t``.
        t: (B,) times in [0, 1] (0 = noise, 1 = data).
        self_cond: (B, S, D) the previous x̂ to condition on, or None at the first call.
            Samplers pass the x̂ of their most recent evaluation.

    The denoiser owns everything model-specific: guidance (it may run the network more
    than once per call), clean condition positions (pinned inside, v=0 there) and the
    conversion of the network output to x̂/ε̂/v̂. One call counts as one NFE for the
    sampler; ``passes`` on the guidance says how many network forwards that costs.
    """

    def __call__(self, z: Tensor, t: Tensor, self_cond: Tensor | None = None) -> Prediction: ...


@dataclass(frozen=True)
class SamplerOutput:
    """What a sampler returns: the final latent and the last x̂ it saw, both (B, S, D)."""

    z: Tensor
    x_hat: Tensor
    nfe: int


@runtime_checkable
class Sampler(Protocol):
    """Integrates z from t=0 (noise) to t=1 (data). Stateless: holds only its config.

    Usage::

        grid = time_component.grid(sampler.steps, generator)
        z0 = noise_scale * torch.randn(B, S, D, generator=generator)
        out = sampler(denoiser, z0, grid, noise_scale=noise_scale, generator=generator)

    ``steps`` is the number of grid intervals; ``nfe(steps)`` the number of denoiser calls
    it will make (known before running, diffusers' ``order`` idea).
    """

    steps: int

    def nfe(self, steps: int) -> int: ...

    def __call__(self, denoiser: Denoiser, z: Tensor, grid: Tensor, *, noise_scale: float,
                 generator: torch.Generator | None = None) -> SamplerOutput: ...


# ----------------------------------------------------------------------------------------
# Tokenizers and embedders
# ----------------------------------------------------------------------------------------
@runtime_checkable
class TextTokenizer(Protocol):
    """Text ↔ ids. ``name`` identifies it (cache keys, checkpoints)."""

    name: str
    vocab_size: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@runtime_checkable
class Embedder(Protocol):
    """Token ids → normalised latents x (B, S, D). Owns its tokenizer and normalisation.

    ``pairwise_mask`` (B, S, S) bool says which positions each row may attend to
    (conditional tasks); None means every position sees every valid one. ``trainable``
    embedders (tied token tables) return latents that carry gradients.
    """

    dim: int
    tokenizer: TextTokenizer
    trainable: bool

    def embed(self, input_ids: Tensor, pairwise_mask: Tensor | None = None) -> Tensor: ...


# ----------------------------------------------------------------------------------------
# Capabilities of a trained model (stored in the checkpoint, never inferred from shapes)
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelCapabilities:
    self_conditioning: bool
    guidance_tokens: bool
    decoder_head: bool
    latent_dim: int
    vocab_size: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)




# ----------------------------------------------------------------------------------------
# Batches (what the collator produces and objectives consume)
# ----------------------------------------------------------------------------------------
@dataclass
class Batch:
    """A collated batch, exactly as ELF's ``collate_fn`` builds it (see elfkit.data.collate).

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
        def mv(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.to(device, non_blocking=True)
        return Batch(*(mv(getattr(self, f)) for f in
                       ("input_ids", "valid_mask", "cond_mask", "loss_mask", "pairwise_mask", "label_drop",
                        "example_index")))

    @property
    def conditional(self) -> bool:
        return bool(self.cond_mask.any())


# ----------------------------------------------------------------------------------------
# The network as sampling sees it (eager module or an exported/compiled artifact)
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackboneOutput:
    """``out``: (B, S, D) raw network output (x̂, ε̂₀ or v̂ per the target).
    ``hidden``: (B, S, H) un-normalised last hidden state (input of the decoder head)."""

    out: Tensor
    hidden: Tensor


class ModelRunner(Protocol):
    """The two calls generation makes; implemented by the eager backbone and by exports.

    ``denoise(z, t, self_cond, guidance)`` → raw output (B,S,D) in denoise mode (mode
    tokens off). ``decode(z, guidance)`` → logits (B,S,V): one decode-mode forward at t=1
    with an all-zero self-conditioning slot.
    """

    capabilities: ModelCapabilities

    def denoise(self, z: Tensor, t: Tensor, self_cond: Tensor | None, guidance: Tensor | None) -> Tensor: ...

    def decode(self, z: Tensor, guidance: Tensor | None) -> Tensor: ...


# ----------------------------------------------------------------------------------------
# Samples and metrics (what evaluators consume and produce)
# ----------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------
# Training data as the trainer sees it (implemented in elfkit.data)
# ----------------------------------------------------------------------------------------
class TrainData(Protocol):
    """Batches for one rank, deterministic in (epoch, seed), and the embedding step.

    ``batches`` yields collated :class:`Batch` es of ``batch_size`` rows (the per-rank
    micro-batch) from this rank's shard of a shuffled epoch (drop_last); the same
    (epoch, seed, rank, world_size) always yields the same batches, so a resumed run skips
    the ones already consumed. ``embed`` turns a batch into normalised clean latents
    x0 (B, S, D) with the label-drop block mask applied *before* encoding (frozen
    encoders run without gradients and may read a latent cache).
    """

    def steps_per_epoch(self, *, batch_size: int, world_size: int = 1) -> int: ...

    def batches(self, epoch: int, *, batch_size: int, seed: int, rank: int = 0,
                world_size: int = 1) -> Iterator[Batch]: ...

    def embed(self, batch: Batch) -> Tensor: ...
