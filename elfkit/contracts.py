"""The contracts between component kinds and the layers that use them: one ``Protocol`` each.

Plugins need not inherit anything, only match these signatures. Every registry kind has its
Protocol here, and so do the callables and services the kinds hand each other. The plain
records they exchange live in :mod:`elfkit.records`. Shapes use the same letters everywhere:
B batch, S sequence, D latent dimension, H backbone width, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from elfkit.records import Batch, MetricRecord, ModelCapabilities, Prediction, SampleRecord, SamplerOutput

if TYPE_CHECKING:
    from elfkit.components.exporters.spec import ExportSpec
    from elfkit.components.targets import Target

__all__ = [
    "Denoiser", "Embedder", "Evaluator", "Exporter", "Guidance", "Judge", "ModelEvaluation", "ModelRunner",
    "Sampler", "TextTokenizer", "TrainData",
]


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


@runtime_checkable
class Sampler(Protocol):
    """Integrates z from t=0 (noise) to t=1 (data). Stateless: holds only its config.

    Usage::

        grid = sampling_grid(sampler, time_component, generator)   # sampler.steps intervals
        z0 = noise_scale * torch.randn(B, S, D, generator=generator)
        out = sampler(denoiser, z0, grid, noise_scale=noise_scale, generator=generator)

    ``steps`` is the number of grid intervals; ``nfe(steps)`` the number of denoiser calls
    it will make (known before running, diffusers' ``order`` idea).
    """

    steps: int

    def nfe(self, steps: int) -> int: ...

    def __call__(self, denoiser: Denoiser, z: Tensor, grid: Tensor, *, noise_scale: float,
                 generator: torch.Generator | None = None) -> SamplerOutput: ...


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


class ModelRunner(Protocol):
    """The two calls generation makes; implemented by the eager backbone and by exports.

    ``denoise(z, t, self_cond, guidance)`` → raw output (B,S,D) in denoise mode (mode
    tokens off). ``decode(z, guidance)`` → logits (B,S,V): one decode-mode forward at t=1
    with an all-zero self-conditioning slot.
    """

    capabilities: ModelCapabilities

    def denoise(self, z: Tensor, t: Tensor, self_cond: Tensor | None, guidance: Tensor | None) -> Tensor: ...

    def decode(self, z: Tensor, guidance: Tensor | None) -> Tensor: ...


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


@runtime_checkable
class Exporter(Protocol):
    """The ``exporter`` kind: backbone → artifact folder, and back to a runner.

    ``export`` writes the files and a ``manifest.json`` (only after parity against eager
    fp32 passed; otherwise :class:`~elfkit.errors.ExportError`) and returns the manifest
    path. ``target`` is the model's target bound to its flow path (parity derives v̂ with
    it; the manifest records it). ``load`` opens a folder this exporter wrote on ``device``.
    ``metadata`` is copied into the manifest (``"source"``).
    """

    format: str

    def export(self, backbone: nn.Module, out_dir: Path, spec: ExportSpec, *, target: Target,
               metadata: dict[str, Any] | None = None) -> Path: ...

    def load(self, artifact_dir: Path, device: torch.device | str) -> ModelRunner: ...


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


@runtime_checkable
class Evaluator(Protocol):
    """``evaluator(samples, references=None) -> list[MetricRecord]`` for ONE seed's samples.

    Every record names the judge (model or scorer), its precision, the sample count and the
    seed. ``needs_references`` says whether the evaluator compares against references (BLEU,
    ROUGE); those are skipped for the real/shuffled reference rows.
    """

    needs_references: ClassVar[bool]

    def __call__(self, samples: list[SampleRecord], *,
                 references: list[str] | None = None) -> list[MetricRecord]: ...


@runtime_checkable
class Judge(Protocol):
    """Scores token sequences with a causal LM.

    ``token_nll(ids, mask)``: ids (B, S) long, right-padded with ``tokenizer.eos_id``; mask
    (B, S) the attention mask (1 on real tokens). Returns (B, S−1) float32 on the CPU: the
    NLL (nats) of ``ids[:, j+1]`` given ``ids[:, :j+1]``. Padding positions may hold
    anything; the caller weighs them.
    """

    name: str
    precision: str
    tokenizer: TextTokenizer

    def token_nll(self, ids: Tensor, mask: Tensor) -> Tensor: ...
