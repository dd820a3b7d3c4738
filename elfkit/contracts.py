"""The contracts between component kinds and the layers that use them: one ``Protocol`` each.

Plugins need not inherit anything, only match these signatures. Every registry kind
(:data:`elfkit.registry.KINDS`) has its Protocol here, and so do the callables and services
the kinds hand each other:

========== ===================== ==========================================================
kind       Protocol              services it hands on / receives
========== ===================== ==========================================================
dataset    :class:`Dataset`      (``DataSplits``, read by :class:`TrainData`)
embedder   :class:`Embedder`     :class:`TextTokenizer`
backbone   :class:`Backbone`     :class:`ModelRunner` (eager or exported)
target     :class:`Target`
time       :class:`TimeDistribution`
sampler    :class:`Sampler`      calls a :class:`Denoiser`
guidance   :class:`Guidance`     turns a :class:`ModelEvaluation` into a :class:`Denoiser`
objective  :class:`Objective`
evaluator  :class:`Evaluator`    may score with a :class:`Judge`
exporter   :class:`Exporter`     loads back a :class:`ModelRunner`
========== ===================== ==========================================================

Data members are read-only properties, so an implementation may use a plain attribute, a
class attribute or a property. Protocols marked ``@runtime_checkable`` support
``isinstance`` (presence of the members only; signatures are the type checker's job). The
plain records they exchange live in :mod:`elfkit.records`; this module imports nothing else
at runtime. Shapes use the same letters everywhere: B batch, S sequence, D latent dimension,
H backbone width, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from elfkit.records import (
    BackboneOutput,
    Batch,
    MetricRecord,
    ModelCapabilities,
    ObjectiveOutput,
    Prediction,
    PredictionSpace,
    SampleRecord,
    SamplerOutput,
)

if TYPE_CHECKING:
    from elfkit.components.datasets.splits import DataSplits
    from elfkit.components.exporters.spec import ExportSpec
    from elfkit.core.flow import FlowPath

__all__ = [
    "Backbone", "Dataset", "Denoiser", "Embedder", "Evaluator", "Exporter", "Guidance", "Judge",
    "ModelEvaluation", "ModelRunner", "Objective", "Sampler", "SupportsActivationCheckpointing",
    "SupportsOffsets", "SupportsUnembeddingTie", "Target", "TextTokenizer", "TimeDistribution", "TrainData",
]


# ----------------------------------------------------------------------------------------
# dataset
# ----------------------------------------------------------------------------------------
@runtime_checkable
class Dataset(Protocol):
    """The ``dataset`` kind: tokenises a corpus with the embedder's tokenizer.

    ``load(tokenizer, cache_dir)`` returns the ``DataSplits``: train/eval examples
    (``{"input_ids": [...], "condition_input_ids": [...]?}`` rows), the collator that turns
    them into (B, S) :class:`~elfkit.records.Batch` es, the held-out texts/pairs evaluation
    compares against, and a fingerprint for the latent cache. ``cache_dir`` is where the
    recipe wants tokenised data (None: the dataset's own default); the tokenizer is passed in
    because the embedder owns it, so one data section works with any embedder.

    Usage::

        splits = dataset.load(embedder.tokenizer, cache_dir)
    """

    def load(self, tokenizer: TextTokenizer, cache_dir: str | Path | None = None) -> DataSplits: ...


# ----------------------------------------------------------------------------------------
# embedder
# ----------------------------------------------------------------------------------------
@runtime_checkable
class TextTokenizer(Protocol):
    """Text ↔ ids. ``name`` identifies it (cache keys, checkpoints).

    Usage::

        ids = tokenizer.encode("In the beginning") + [tokenizer.eos_id]
    """

    @property
    def name(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@runtime_checkable
class SupportsOffsets(Protocol):
    """Optional tokenizer member: ids with each token's (start, end) character span in ``text``.

    Usage::

        ids, spans = tokenizer.encode_with_offsets(text) if isinstance(tokenizer, SupportsOffsets) else ...
    """

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]: ...


@runtime_checkable
class Embedder(Protocol):
    """The ``embedder`` kind: token ids (B, S) → normalised latents x (B, S, D).

    Owns its tokenizer and normalisation. ``pairwise_mask`` (B, S, S) bool says which
    positions each row may attend to (conditional tasks); None means every position sees
    every valid one. ``trainable`` embedders (tied token tables) return latents that carry
    gradients. Optional members, read with ``getattr``: ``identity`` (a string naming the model,
    tokenizer and normalisation; it keys the latent cache, which is skipped without it) and
    ``tied_unembedding`` (an ``nn.Parameter`` (V, D) or None), the table the pipeline ties to a
    :class:`SupportsUnembeddingTie` backbone. A trainable embedder is also an ``nn.Module`` (the
    trainer optimises, averages and checkpoints it).

    Usage::

        x0 = embedder.embed(batch.input_ids, batch.pairwise_mask)   # (B, S, embedder.dim)
    """

    @property
    def dim(self) -> int: ...

    @property
    def tokenizer(self) -> TextTokenizer: ...

    @property
    def trainable(self) -> bool: ...

    def embed(self, input_ids: Tensor, pairwise_mask: Tensor | None = None) -> Tensor: ...


# ----------------------------------------------------------------------------------------
# backbone
# ----------------------------------------------------------------------------------------
@runtime_checkable
class Backbone(Protocol):
    """The ``backbone`` kind: the network, ``backbone(z, t, *, self_cond, guidance, decode)``.

    Args:
        z: (B, S, D) noisy latent at time ``t`` (B,) in [0, 1] (1 = data).
        self_cond: (B, S, D) previous x̂ for the self-conditioning slot (None → zeros); only
            when ``capabilities.self_conditioning``.
        guidance: (B,) self-cond guidance scale w; required iff ``capabilities.guidance_tokens``.
        decode: the decode-mode gate: None/False (denoise), True (decode) or (B,) per row;
            only when ``capabilities.decoder_head``.

    Returns a :class:`~elfkit.records.BackboneOutput`: ``out`` (B, S, D) and ``hidden``
    (B, S, H); ``decode_logits(hidden)`` maps (…, H) → (…, V) fp32 logits.

    A backbone is also an ``nn.Module`` (the trainer wraps it in DDP/EMA, checkpoints its
    ``state_dict``); a Protocol cannot say so, hence :class:`BackboneModule` for static
    types and an ``isinstance(x, nn.Module)`` check at runtime. Optional members, looked up
    with ``isinstance`` or ``getattr``: :class:`SupportsUnembeddingTie`,
    :class:`SupportsActivationCheckpointing`, ``in_out_parameters`` (names of bare (in, out)
    2-D parameters, for Muon), ``export_modules()`` (own export wrappers), ``cfg`` (a config
    with ``model_dump``, copied into export manifests).

    Usage::

        logits = backbone.decode_logits(backbone(z, t, guidance=w, decode=True).hidden)
    """

    @property
    def capabilities(self) -> ModelCapabilities: ...

    def __call__(self, z: Tensor, t: Tensor, *, self_cond: Tensor | None = None, guidance: Tensor | None = None,
                 decode: Tensor | bool | None = None) -> BackboneOutput: ...

    def decode_logits(self, hidden: Tensor) -> Tensor: ...


@runtime_checkable
class SupportsUnembeddingTie(Protocol):
    """Optional backbone member: share the embedder's (V, D) table as the decoder's output layer.

    Usage::

        if isinstance(backbone, SupportsUnembeddingTie): backbone.tie_unembedding(embedder.tied_unembedding)
    """

    def tie_unembedding(self, weight: nn.Parameter) -> None: ...


@runtime_checkable
class SupportsActivationCheckpointing(Protocol):
    """Optional backbone member: recompute blocks in backward to save activation memory.

    Usage::

        if isinstance(backbone, SupportsActivationCheckpointing): backbone.enable_activation_checkpointing()
    """

    def enable_activation_checkpointing(self, flag: bool = True) -> None: ...


if TYPE_CHECKING:
    class BackboneModule(Backbone, nn.Module):  # type-checking only: there is no runtime class
        """A :class:`Backbone` that is an ``nn.Module``: the static type of the pipeline's backbone.

        Python has no intersection types; this class spells ``Backbone & nn.Module`` for the
        type checker only (annotate with it under ``from __future__ import annotations``).
        Nothing inherits from it at runtime, so never ``isinstance`` against it; the runtime
        check is ``isinstance(x, nn.Module) and isinstance(x, Backbone)``.

        Usage::

            backbone: BackboneModule = registry.build("backbone", name, cfg)
        """


# ----------------------------------------------------------------------------------------
# target
# ----------------------------------------------------------------------------------------
@runtime_checkable
class Target(Protocol):
    """The ``target`` kind: what the network outputs (``output``) and where the loss lives,
    bound to the flow path it converts on (so callers pass one object, not a pair).

    ``predict(out, z, t)`` turns a network output (B, S, D) at (z, t) into a
    :class:`~elfkit.records.Prediction` (x̂, ε̂ scaled noise, v̂) on ``path``. ``truth(x0,
    noise, z, t)`` is the exact prediction, from clean latents x0 and unit noise ε₀ (both
    (B, S, D)), through the *same* conversions and clamps. Both accept an explicit ``path``
    that overrides the bound one. ``in_loss_space(pred)`` picks the (B, S, D) field named by
    ``loss_space``; ``loss(pred, target)`` is the squared error there, averaged over D: (B, S).
    ``bind(path)`` returns a copy bound to another path; ``describe()`` is what an export
    manifest records of it (name, class, config, path).

    Usage::

        l2 = target.loss(target.predict(out, z, t), target.in_loss_space(target.truth(x0, eps, z, t)))
    """

    @property
    def output(self) -> PredictionSpace: ...

    @property
    def loss_space(self) -> PredictionSpace: ...

    @property
    def path(self) -> FlowPath: ...

    def bind(self, path: FlowPath, *, name: str | None = None) -> Target: ...

    def predict(self, out: Tensor, z: Tensor, t: Tensor, path: FlowPath | None = None) -> Prediction: ...

    def truth(self, x0: Tensor, noise: Tensor, z: Tensor, t: Tensor, path: FlowPath | None = None) -> Prediction: ...

    def in_loss_space(self, pred: Prediction) -> Tensor: ...

    def loss(self, pred: Prediction, target: Tensor) -> Tensor: ...

    def describe(self) -> dict[str, Any]: ...


# ----------------------------------------------------------------------------------------
# time
# ----------------------------------------------------------------------------------------
@runtime_checkable
class TimeDistribution(Protocol):
    """The ``time`` kind: training times and the sampling grid, from one distribution.

    ``sample(n)`` → (n,) training times in [0, 1]. ``grid(steps)`` → (steps+1,) increasing
    times from 0 (noise) to 1 (data), the sampler's integration grid (it may be random,
    hence the generator). Both are created on ``device``.

    Usage::

        t = time.sample(x0.shape[0], generator, x0.device)
    """

    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> Tensor: ...

    def grid(self, steps: int, generator: torch.Generator | None = None,
             device: torch.device | str = "cpu") -> Tensor: ...


# ----------------------------------------------------------------------------------------
# sampler
# ----------------------------------------------------------------------------------------
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

    Usage::

        pred = denoiser(z, t, pred_prev.x if pred_prev else None)
    """

    def __call__(self, z: Tensor, t: Tensor, self_cond: Tensor | None = None) -> Prediction: ...


@runtime_checkable
class Sampler(Protocol):
    """The ``sampler`` kind: integrates z from t=0 (noise) to t=1 (data). Stateless: holds only its config.

    Usage::

        grid = sampling_grid(sampler, time_component, generator)   # elfkit.components.samplers.base
        z0 = noise_scale * torch.randn(B, S, D, generator=generator)
        out = sampler(denoiser, z0, grid, noise_scale=noise_scale, generator=generator)

    ``steps`` is the number of grid intervals; ``nfe(steps)`` the number of denoiser calls
    it will make (known before running, diffusers' ``order`` idea). The output holds the
    final z and last x̂, both (B, S, D); the step into t = 1 returns that x̂ exactly
    (``elfkit.components.samplers.base.euler_step``), since the final z is what is decoded.

    Optional: an ``order`` attribute (int, or None for stochastic configs) declares the
    convergence order, which ``elfkit.testing.check_sampler`` measures on the Gaussian toy.
    """

    @property
    def steps(self) -> int: ...

    def nfe(self, steps: int) -> int: ...

    def __call__(self, denoiser: Denoiser, z: Tensor, grid: Tensor, *, noise_scale: float,
                 generator: torch.Generator | None = None) -> SamplerOutput: ...


# ----------------------------------------------------------------------------------------
# guidance
# ----------------------------------------------------------------------------------------
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

    Usage::

        cond, uncond = evaluate(z, t, sc), evaluate(z, t, sc, drop_condition=True)
    """

    @property
    def capabilities(self) -> ModelCapabilities: ...

    def __call__(self, z: Tensor, t: Tensor, self_cond: Tensor | None = None, *,
                 guidance_scale: float | None = None, drop_condition: bool = False) -> Prediction: ...

    def pin(self, pred: Prediction, *, drop_condition: bool = False) -> Prediction: ...


@runtime_checkable
class Guidance(Protocol):
    """The ``guidance`` kind. Stateless: holds only its config.

    ``passes(capabilities)`` is the number of network forwards per denoiser call, known
    before running; ``decode_scale(capabilities)`` the w token for the final decoder forward
    (None when the model has no guidance tokens); ``denoiser(evaluate)`` the callable the
    sampler gets.

    Usage::

        out = sampler(guidance.denoiser(evaluate), z0, grid, noise_scale=s)
    """

    def passes(self, capabilities: ModelCapabilities) -> int: ...

    def decode_scale(self, capabilities: ModelCapabilities) -> float | None: ...

    def denoiser(self, evaluate: ModelEvaluation) -> Denoiser: ...


# ----------------------------------------------------------------------------------------
# objective
# ----------------------------------------------------------------------------------------
@runtime_checkable
class Objective(Protocol):
    """The ``objective`` kind: the training loss of one micro-batch.

    Args:
        backbone: the network, possibly wrapped (DDP); the objective unwraps it to read
            ``capabilities`` but calls the wrapper, so gradients sync.
        batch: the collated :class:`~elfkit.records.Batch` (masks (B, S)).
        x0: (B, S, D) clean latents of the batch (already embedded, label drop applied).
        target: the recipe's target, bound to its flow path; time: its time distribution.
        generator: the trainer's generator for every random draw.
        path: overrides the target's bound path (for callers holding an unbound target).

    Returns an :class:`~elfkit.records.ObjectiveOutput`: the scalar loss to backpropagate
    and plain-float logs.

    Usage::

        out = objective(model, batch, x0, target=target, time=time, generator=g); out.loss.backward()
    """

    def __call__(self, backbone: nn.Module, batch: Batch, x0: Tensor, *, target: Target, time: TimeDistribution,
                 generator: torch.Generator | None = None, path: FlowPath | None = None) -> ObjectiveOutput: ...


# ----------------------------------------------------------------------------------------
# evaluator
# ----------------------------------------------------------------------------------------
@runtime_checkable
class Evaluator(Protocol):
    """The ``evaluator`` kind: ``evaluator(samples, references=None) -> list[MetricRecord]`` for ONE seed's samples.

    Every record names the judge (model or scorer), its precision, the sample count and the
    seed. ``needs_references`` says whether the evaluator compares against references (BLEU,
    ROUGE); those are skipped for the real/shuffled reference rows.

    Usage::

        rows = evaluator(samples, references=[p.reference for p in pairs])
    """

    needs_references: ClassVar[bool]

    def __call__(self, samples: list[SampleRecord], *,
                 references: list[str] | None = None) -> list[MetricRecord]: ...


@runtime_checkable
class Judge(Protocol):
    """Scores token sequences with a causal LM (what Gen. PPL evaluators use).

    ``token_nll(ids, mask)``: ids (B, S) long, right-padded with ``tokenizer.eos_id``; mask
    (B, S) the attention mask (1 on real tokens). Returns (B, S−1) float32 on the CPU: the
    NLL (nats) of ``ids[:, j+1]`` given ``ids[:, :j+1]``. Padding positions may hold
    anything; the caller weighs them.

    Usage::

        nll = judge.token_nll(ids, mask)   # (B, S-1)
    """

    @property
    def name(self) -> str: ...

    @property
    def precision(self) -> str: ...

    @property
    def tokenizer(self) -> TextTokenizer: ...

    def token_nll(self, ids: Tensor, mask: Tensor) -> Tensor: ...


# ----------------------------------------------------------------------------------------
# exporter and runner
# ----------------------------------------------------------------------------------------
class ModelRunner(Protocol):
    """The two calls generation makes; implemented by the eager backbone and by exports.

    ``denoise(z, t, self_cond, guidance)`` → raw output (B,S,D) in denoise mode (mode
    tokens off). ``decode(z, guidance)`` → logits (B,S,V): one decode-mode forward at t=1
    with an all-zero self-conditioning slot.

    Usage::

        logits = runner.decode(z, w if runner.capabilities.guidance_tokens else None)
    """

    @property
    def capabilities(self) -> ModelCapabilities: ...

    def denoise(self, z: Tensor, t: Tensor, self_cond: Tensor | None, guidance: Tensor | None) -> Tensor: ...

    def decode(self, z: Tensor, guidance: Tensor | None) -> Tensor: ...


@runtime_checkable
class Exporter(Protocol):
    """The ``exporter`` kind: backbone → artifact folder, and back to a runner.

    ``export`` writes the files and a ``manifest.json`` (only after parity against eager
    fp32 passed; otherwise :class:`~elfkit.errors.ExportError`) and returns the manifest
    path. ``target`` is the model's target bound to its flow path (parity derives v̂ with it;
    the manifest records it). ``load`` opens a folder this exporter wrote on ``device``.
    ``metadata`` is copied into the manifest (``"source"``).

    Usage::

        runner = exporter.load(exporter.export(backbone, out_dir, spec, target=target).parent, "cpu")
    """

    @property
    def format(self) -> str: ...

    def export(self, backbone: nn.Module, out_dir: Path, spec: ExportSpec, *, target: Target,
               metadata: dict[str, Any] | None = None) -> Path: ...

    def load(self, artifact_dir: Path, device: torch.device | str) -> ModelRunner: ...


# ----------------------------------------------------------------------------------------
# training data (a pipeline service over a dataset's splits and the embedder)
# ----------------------------------------------------------------------------------------
class TrainData(Protocol):
    """Batches for one rank, deterministic in (epoch, seed), and the embedding step.

    ``batches`` yields collated :class:`Batch` es of ``batch_size`` rows (the per-rank
    micro-batch) from this rank's shard of a shuffled epoch (drop_last); the same
    (epoch, seed, rank, world_size) always yields the same batches, so a resumed run skips
    the ones already consumed. ``embed`` turns a batch into normalised clean latents
    x0 (B, S, D) with the label-drop block mask applied *before* encoding (frozen
    encoders run without gradients and may read a latent cache).

    Usage::

        for batch in data.batches(epoch, batch_size=32, seed=0): x0 = data.embed(batch)
    """

    def steps_per_epoch(self, *, batch_size: int, world_size: int = 1) -> int: ...

    def batches(self, epoch: int, *, batch_size: int, seed: int, rank: int = 0,
                world_size: int = 1) -> Iterator[Batch]: ...

    def embed(self, batch: Batch) -> Tensor: ...
