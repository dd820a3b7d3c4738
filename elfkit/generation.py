"""Generation: noise → sampler (with guidance) → final latent → one decoder forward → token ids.

The pieces meet here and nowhere else:

- :class:`ModelEvaluator` turns one ``runner.denoise`` forward into a :class:`Prediction`
  with ELF's condition handling (reference §6.3) — the *model evaluation* that guidance
  components combine;
- a guidance component builds the :class:`~elfkit.contracts.Denoiser` the sampler calls;
- :func:`generate` draws the time grid and z₀ from one generator, runs the sampler, pins
  the condition, decodes once and takes the argmax;
- :func:`postprocess` turns token ids into the id lists that are decoded to text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from elfkit.components.guidance.base import Guidance
from elfkit.components.samplers.base import generator_device, sampling_grid
from elfkit.components.targets import Target
from elfkit.contracts import Denoiser, ModelRunner, Sampler, TimeDistribution
from elfkit.errors import ElfkitError
from elfkit.records import ModelCapabilities, Prediction


# ----------------------------------------------------------------------------------------
# The condition (conditional tasks: the clean prefix every step is pinned to)
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Condition:
    """Clean condition latents for conditional generation.

    latents: (B, S, D) the embedder's latents of ``[condition; …]``; only the positions in
             ``mask`` are used.
    mask:    (B, S) bool, True at condition positions (position < cond length).
    lengths: (B,) long, number of condition tokens per row (where generated text starts).
    """

    latents: Tensor
    mask: Tensor
    lengths: Tensor

    @classmethod
    def from_mask(cls, latents: Tensor, mask: Tensor) -> Condition:
        """Build from a (B, S) prefix mask; lengths are its row sums."""
        mask = mask.bool()
        return cls(latents=latents, mask=mask, lengths=mask.sum(dim=1))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Condition:
        return Condition(self.latents.to(device=device, dtype=dtype or self.latents.dtype),
                         self.mask.to(device), self.lengths.to(device))


def pin(z: Tensor, values: Tensor | float, mask: Tensor) -> Tensor:
    """``z`` with the positions in ``mask`` (B, S) replaced by ``values`` (B, S, D or scalar)."""
    return torch.where(mask.unsqueeze(-1), torch.as_tensor(values, dtype=z.dtype, device=z.device), z)


# ----------------------------------------------------------------------------------------
# One model evaluation
# ----------------------------------------------------------------------------------------
class ModelEvaluator:
    """One network forward as a :class:`Prediction`, with ELF's condition handling (§6.3).

    For ``(z, t, self_cond, guidance_scale, drop_condition)``:

    1. condition positions of z and of the self-cond slot are set to the clean condition
       (to 0 when ``drop_condition``); with no previous x̂ the slot is zeros there;
    2. ``runner.denoise`` runs with the w token ``guidance_scale`` (if the model has tokens);
    3. the target converts the output to x̂/ε̂/v̂ at the *pinned* z, on the path it is bound to;
    4. condition positions are restored: x̂ = ε̂ = clean condition (or 0) and v̂ = 0, which is
       the consistent prediction for a latent that sits at the condition for every t.

    Implements :class:`elfkit.components.guidance.base.ModelEvaluation`. Holds no state
    beyond its inputs, so one evaluator can serve interleaved sampler runs.
    """

    def __init__(self, runner: ModelRunner, target: Target, condition: Condition | None = None) -> None:
        self.runner = runner
        self.target = target
        self.condition = condition

    @property
    def capabilities(self) -> ModelCapabilities:
        return self.runner.capabilities

    def pin_latent(self, z: Tensor, *, drop_condition: bool = False) -> Tensor:
        """z (B, S, D) with condition positions set to the clean condition (or 0)."""
        if self.condition is None:
            return z
        return pin(z, 0.0 if drop_condition else self.condition.latents, self.condition.mask)

    def pin(self, pred: Prediction, *, drop_condition: bool = False) -> Prediction:
        """Restore condition positions of a (possibly combined) prediction: x̂ = ε̂ = cond, v̂ = 0."""
        if self.condition is None:
            return pred
        mask = self.condition.mask
        clean = 0.0 if drop_condition else self.condition.latents
        return Prediction(x=pin(pred.x, clean, mask), eps=pin(pred.eps, clean, mask), v=pin(pred.v, 0.0, mask))

    def self_cond_slot(self, z: Tensor, self_cond: Tensor | None, *, drop_condition: bool = False) -> Tensor | None:
        """The (B, S, D) self-conditioning input, or None for a model without the slot."""
        if not self.capabilities.self_conditioning:
            return None
        slot = torch.zeros_like(z) if self_cond is None else self_cond.to(dtype=z.dtype)
        return self.pin_latent(slot, drop_condition=drop_condition)

    def __call__(self, z: Tensor, t: Tensor, self_cond: Tensor | None = None, *,
                 guidance_scale: float | None = None, drop_condition: bool = False) -> Prediction:
        # z: (B, S, D), t: (B,)
        caps = self.capabilities
        w: Tensor | None = None
        if caps.guidance_tokens:
            if guidance_scale is None:
                raise ElfkitError("this model has guidance (w) tokens: the guidance component must pass "
                                  "guidance_scale (use the 'none' guidance for w = 1)")
            w = torch.full((z.shape[0],), float(guidance_scale), dtype=z.dtype, device=z.device)
        z_in = self.pin_latent(z, drop_condition=drop_condition)
        slot = self.self_cond_slot(z_in, self_cond, drop_condition=drop_condition)
        out = self.runner.denoise(z_in, t, slot, w)                   # (B, S, D)
        pred = self.target.predict(out.to(z.dtype), z_in, t)
        return self.pin(pred, drop_condition=drop_condition)


# ----------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationResult:
    """token_ids: (B, S) argmax of the decoder; z: (B, S, D) final latent (condition pinned);
    nfe: network forwards spent denoising = sampler calls × guidance passes (the decoder
    forward is one more)."""

    token_ids: Tensor
    z: Tensor
    nfe: int


@dataclass(frozen=True)
class DenoiseStep:
    """One denoiser call during :func:`generate`, as a per-step callback sees it.

    index: the call's number (0 … nfe−1); t: (B,) its time; z: (B, S, D) the latent it was
    called at; x_hat: (B, S, D) the (guided, condition-pinned) clean estimate it returned.
    Tensors are the sampler's own: clone what you keep.
    """

    index: int
    t: Tensor
    z: Tensor
    x_hat: Tensor


StepCallback = Callable[[DenoiseStep], None]


def observed(denoiser: Denoiser, on_step: StepCallback) -> Denoiser:
    """``denoiser`` reporting every call to ``on_step`` (the sampler sees no difference)."""
    calls = 0

    def call(z: Tensor, t: Tensor, self_cond: Tensor | None = None) -> Prediction:
        nonlocal calls
        pred = denoiser(z, t, self_cond)
        on_step(DenoiseStep(calls, t, z, pred.x))
        calls += 1
        return pred
    return call


def decode_tokens(runner: ModelRunner, guidance: Guidance, z: Tensor) -> Tensor:
    """Token ids (B, S): the decoder's argmax at latents z (B, S, D), with the guidance's w token."""
    w = guidance.decode_scale(runner.capabilities)
    w_tok = None if w is None else torch.full((z.shape[0],), float(w), dtype=z.dtype, device=z.device)
    return runner.decode(z, w_tok).argmax(dim=-1)


def _check_condition(condition: Condition, shape: tuple[int, int, int]) -> None:
    if tuple(condition.latents.shape) != shape:
        raise ElfkitError(f"condition latents have shape {tuple(condition.latents.shape)}, but generation "
                          f"needs (num, length, latent_dim) = {shape}")
    if tuple(condition.mask.shape) != shape[:2] or tuple(condition.lengths.shape) != shape[:1]:
        raise ElfkitError(f"condition mask must be (num, length) = {shape[:2]} and lengths (num,) = "
                          f"{shape[:1]}; got {tuple(condition.mask.shape)} and {tuple(condition.lengths.shape)}")


def generate(runner: ModelRunner, target: Target, sampler: Sampler, grid_time: TimeDistribution, guidance: Guidance, *,
             num: int, length: int, generator: torch.Generator | None, condition: Condition | None = None,
             device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             on_step: StepCallback | None = None) -> GenerationResult:
    """Generate one batch of ``num`` sequences of ``length`` tokens.

    The grid (:func:`~elfkit.components.samplers.base.sampling_grid`: ``sampler.steps``
    intervals from ``grid_time``, random per batch for logit-normal, as ELF) and
    z₀ = s·N(0, I) come from ``generator`` in that order, drawn on the generator's device and
    moved to ``device``. The noise scale s is that of the path ``target`` is bound to. The
    caller picks the weights (EMA) and batching; this runs under ``torch.inference_mode``.

    Args:
        target: the prediction target, bound to the flow path (``target.bind(path)``).
        grid_time: a time component (``grid(steps, generator, device) -> (K+1,)``).
        condition: clean condition latents for conditional tasks (shape (num, length, D)).
        on_step: called after every denoiser call with its :class:`DenoiseStep` (the
            intermediate trajectory: e.g. decode ``x_hat`` to watch text crystallise). The
            final *z* is what gets decoded; the step into t = 1 makes it the last x̂.
    """
    caps = runner.capabilities
    shape = (num, length, caps.latent_dim)
    path = target.path
    if condition is not None:
        _check_condition(condition, shape)
        condition = condition.to(device, dtype)
    with torch.inference_mode():
        grid = sampling_grid(sampler, grid_time, generator, device)
        z0 = path.initial_noise(shape, generator, device=generator_device(generator, device),
                                dtype=dtype).to(device)                                   # (B, S, D)
        evaluate = ModelEvaluator(runner, target, condition)
        z0 = evaluate.pin_latent(z0)
        denoiser = guidance.denoiser(evaluate)
        if on_step is not None:
            denoiser = observed(denoiser, on_step)
        out = sampler(denoiser, z0, grid, noise_scale=path.noise_scale, generator=generator)
        z = evaluate.pin_latent(out.z)
        token_ids = decode_tokens(runner, guidance, z)                                      # (B, S)
    return GenerationResult(token_ids=token_ids, z=z, nfe=out.nfe * guidance.passes(caps))


def postprocess(token_ids: Tensor, eos_id: int, pad_id: int, cond_len: Tensor | None = None,
                gen_length: int | None = None) -> list[list[int]]:
    """Token ids (B, S) → one id list per row, ready for ``tokenizer.decode`` (reference §6.4).

    Conditional rows are first shifted left by their ``cond_len`` and cut to ``gen_length``
    (the condition itself ends with EOS); then each row is cut at its first EOS, and pad ids
    are dropped (the reference decodes with ``skip_special_tokens``).
    """
    rows: list[list[int]] = []
    ids = token_ids.detach().cpu().tolist()
    starts = [0] * len(ids) if cond_len is None else [int(c) for c in cond_len.detach().cpu().reshape(-1).tolist()]
    if len(starts) != len(ids):
        raise ElfkitError(f"postprocess: cond_len has {len(starts)} entries for {len(ids)} rows of token ids")
    for row, start in zip(ids, starts, strict=True):
        row = row[start:]
        if gen_length is not None:
            row = row[:gen_length]
        if eos_id in row:
            row = row[:row.index(eos_id)]
        rows.append([i for i in row if i != pad_id])
    return rows
