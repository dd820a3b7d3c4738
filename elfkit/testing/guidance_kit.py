"""``check_guidance``: the conformance suite for guidance components.

The guidance is run on a :class:`StubRunner` through the real
:class:`~elfkit.generation.ModelEvaluator` (x-prediction, noise scale 2, a condition prefix
of different length per row), for every kind of model: with guidance tokens and
self-conditioning (ELF), self-conditioning only (legacy), tokens only, and neither.
Checks, each failing with a ``ConformanceError`` that names it:

- ``protocol``: ``passes(caps) -> int ≥ 1``, ``decode_scale(caps)`` a float when the model
  has guidance tokens, ``denoiser(evaluate)`` callable;
- ``passes``: every denoiser call costs exactly ``passes(caps)`` network forwards, and the
  runner is given a w token exactly when the model has guidance tokens;
- ``prediction``: a :class:`Prediction` shaped and typed like z, finite, self-consistent
  away from the condition (v̂ = x̂ − ε̂ and z = t·x̂ + (1−t)·ε̂) and pinned on it
  (x̂ = clean condition, v̂ = 0);
- ``determinism`` and ``stateless``: same inputs give the same prediction; no attribute of
  the guidance changes; inputs are not modified;
- ``sampling``: an Euler run over the guided denoiser spends ``steps × passes`` forwards.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel

from elfkit.components.samplers.euler import EulerConfig, EulerSampler
from elfkit.components.targets import TargetConfig, XTarget
from elfkit.contracts import Denoiser
from elfkit.core.flow import FlowPath
from elfkit.records import Prediction
from elfkit.testing._build import ConformanceError, builder, check_unchanged, fail, snapshot
from elfkit.testing.stubs import StubRunner

MODEL_KINDS = {  # name: (self_conditioning, guidance_tokens)
    "ELF (w tokens + self-cond)": (True, True),
    "legacy (self-cond, no w tokens)": (True, False),
    "w tokens, no self-cond": (False, True),
    "plain (neither)": (False, False),
}


def _setup(self_conditioning: bool, guidance_tokens: bool):
    from elfkit.generation import Condition, ModelEvaluator
    runner = StubRunner(latent_dim=4, self_conditioning=self_conditioning, guidance_tokens=guidance_tokens)
    g = torch.Generator().manual_seed(0)
    b, s, d = 3, 6, 4
    mask = torch.arange(s).unsqueeze(0) < torch.tensor([[0], [1], [3]])            # (B, S)
    cond = Condition.from_mask(torch.randn(b, s, d, generator=g), mask)
    evaluate = ModelEvaluator(runner, XTarget(TargetConfig()).bind(FlowPath(noise_scale=2.0)), cond)
    z = 2.0 * torch.randn(b, s, d, generator=g)
    t = torch.tensor([0.1, 0.4, 0.7])
    return runner, evaluate, cond, z, t


def _check_prediction(where: str, pred: Any, z: torch.Tensor, t: torch.Tensor, cond) -> None:
    if not isinstance(pred, Prediction):
        raise fail("prediction", f"{where}: the denoiser must return elfkit.records.Prediction, got "
                                 f"{type(pred).__name__}")
    for name in ("x", "eps", "v"):
        value = getattr(pred, name)
        if value.shape != z.shape or value.dtype != z.dtype or not torch.isfinite(value).all():
            raise fail("prediction", f"{where}: {name} must be finite, {tuple(z.shape)} {z.dtype}; got "
                                     f"{tuple(value.shape)} {value.dtype}")
    m = cond.mask.unsqueeze(-1)
    if not (torch.allclose(torch.where(m, pred.x, cond.latents), cond.latents, atol=1e-5)
            and torch.allclose(torch.where(m, pred.v, 0.0), torch.zeros_like(z), atol=1e-5)):
        raise fail("prediction", f"{where}: condition positions must hold x̂ = clean condition and v̂ = 0 "
                                 "after combining (call evaluate.pin on a combined prediction)")
    free = ~m
    tt = t.view(-1, 1, 1)
    v_ok = torch.allclose(torch.where(free, pred.v, 0.0), torch.where(free, pred.x - pred.eps, 0.0), atol=1e-4)
    z_ok = torch.allclose(torch.where(free, z, 0.0), torch.where(free, tt * pred.x + (1 - tt) * pred.eps, 0.0),
                          atol=1e-4)
    if not (v_ok and z_ok):
        raise fail("prediction", f"{where}: x̂, ε̂ and v̂ are not consistent with z (v̂ = x̂ − ε̂, "
                                 "z = t·x̂ + (1−t)·ε̂): combine every field the same way")


def _check_model_kind(guidance: Any, where: str, sc: bool, tokens: bool) -> None:
    runner, evaluate, cond, z, t = _setup(sc, tokens)
    caps = runner.capabilities
    passes = guidance.passes(caps)
    if not isinstance(passes, int) or isinstance(passes, bool) or passes < 1:
        raise fail("protocol", f"{where}: passes(capabilities) must be a positive int, got {passes!r}")
    w = guidance.decode_scale(caps)
    if tokens and not isinstance(w, (int, float)):
        raise fail("protocol", f"{where}: decode_scale must give the decoder's w token (a float), got {w!r}")
    before = snapshot(guidance)
    denoiser: Denoiser = guidance.denoiser(evaluate)
    if not callable(denoiser):
        raise fail("protocol", f"{where}: denoiser(evaluate) must return a callable")
    z_in = z.clone()
    try:
        first = denoiser(z, t, None)
    except AssertionError as exc:   # the stub runner's contract checks
        raise fail("passes", f"{where}: the network was called against its contract: {exc}") from None
    if runner.denoise_calls != passes:
        raise fail("passes", f"{where}: passes = {passes} but the first call ran {runner.denoise_calls} forwards")
    _check_prediction(where, first, z, t, cond)
    second = denoiser(z, t, first.x)
    if runner.denoise_calls != 2 * passes:
        raise fail("passes", f"{where}: passes = {passes} but a self-conditioned call ran "
                             f"{runner.denoise_calls - passes} forwards")
    _check_prediction(where, second, z, t, cond)
    again = denoiser(z, t, first.x)
    if not all(torch.equal(getattr(again, f), getattr(second, f)) for f in ("x", "eps", "v")):
        raise fail("determinism", f"{where}: the same inputs gave different predictions")
    if not torch.equal(z, z_in):
        raise fail("stateless", f"{where}: the denoiser modified its input z in place")
    check_unchanged("stateless", guidance, before)

    runner.calls.clear()
    out = EulerSampler(EulerConfig(steps=3))(denoiser, z, torch.linspace(0, 1, 4), noise_scale=2.0)
    if runner.denoise_calls != 3 * passes or not torch.isfinite(out.z).all():
        raise fail("sampling", f"{where}: a 3-step Euler run made {runner.denoise_calls} forwards "
                               f"(expected 3 × passes = {3 * passes}) or produced non-finite latents")


def check_guidance(guidance: Any, config: BaseModel | dict[str, Any] | None = None, *,
                   model_kinds: dict[str, tuple[bool, bool]] | None = None) -> list[str]:
    """Run the guidance conformance suite; raise :class:`ConformanceError` on the first failure.

    Args:
        guidance: a guidance class or factory (built with ``config``, or the default of its
            annotated config type), a registry name, or a built instance.
        model_kinds: which model capability combinations to test, as
            ``{label: (self_conditioning, guidance_tokens)}``; default all four.

    Returns:
        The labels of the model kinds that passed.
    """
    build = builder(guidance, config, "guidance", lambda obj: hasattr(obj, "passes") and hasattr(obj, "denoiser"))
    passed = []
    for where, (sc, tokens) in (model_kinds or MODEL_KINDS).items():
        try:
            _check_model_kind(build(), where, sc, tokens)
        except ConformanceError:
            raise
        except Exception as exc:
            raise fail(where, f"raised {type(exc).__name__}: {exc}") from exc
        passed.append(where)
    return passed
