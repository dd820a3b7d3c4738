"""Guidance components: passes, w tokens, the combination formulas, condition handling, the kit."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from elfkit.components.guidance import (
    CfgConfig,
    CfgGuidance,
    Guidance,
    NoGuidance,
    NoGuidanceConfig,
    SelfCondConfig,
    SelfCondGuidance,
)
from elfkit.components.targets import TargetConfig, XTarget
from elfkit.core.flow import FlowPath
from elfkit.generation import Condition, ModelEvaluator
from elfkit.registry import build_registry
from elfkit.testing import StubRunner, check_guidance

PATH = FlowPath(noise_scale=2.0)


def _setup(sc=True, tokens=True, cond=True):
    runner = StubRunner(latent_dim=4, self_conditioning=sc, guidance_tokens=tokens)
    g = torch.Generator().manual_seed(0)
    b, s, d = 2, 5, 4
    condition = None
    if cond:
        mask = torch.arange(s).unsqueeze(0) < torch.tensor([[1], [2]])
        condition = Condition.from_mask(torch.randn(b, s, d, generator=g), mask)
    ev = ModelEvaluator(runner, XTarget(TargetConfig()).bind(PATH), condition)
    z = 2 * torch.randn(b, s, d, generator=g)
    t = torch.tensor([0.2, 0.6])
    prev = torch.randn(b, s, d, generator=g)
    return runner, ev, condition, z, t, prev


def _same(a, b):
    return all(torch.allclose(getattr(a, f), getattr(b, f), atol=1e-6) for f in ("x", "eps", "v"))


def test_registered_and_scales_validated():
    reg = build_registry(entry_points=False)
    assert set(reg.names("guidance")) >= {"none", "self-cond", "cfg"}
    assert isinstance(reg.build("guidance", "self-cond", {"scale": 3.0}), Guidance)
    assert SelfCondConfig().scale == 3.0 and CfgConfig().scale == 2.0 and CfgConfig().self_cond_scale == 1.0
    for bad in (lambda: SelfCondConfig(scale=-1), lambda: CfgConfig(scale=-0.5),
                lambda: CfgConfig(self_cond_scale=-1)):
        with pytest.raises(ValidationError):
            bad()


def test_none_feeds_w_one_and_the_previous_x_hat():
    runner, ev, cond, z, t, prev = _setup()
    g = NoGuidance(NoGuidanceConfig())
    caps = runner.capabilities
    assert g.passes(caps) == 1 and g.decode_scale(caps) == 1.0
    g.denoiser(ev)(z, t, prev)
    call = runner.calls[-1]
    assert torch.equal(call.guidance, torch.ones(2))
    m = cond.mask.unsqueeze(-1)
    assert torch.equal(call.self_cond, torch.where(m, cond.latents, prev))     # slot pinned to the condition
    plain = StubRunner(self_conditioning=False, guidance_tokens=False).capabilities
    assert g.decode_scale(plain) is None


def test_self_cond_with_w_tokens_is_one_pass_with_the_token():
    runner, ev, _, z, t, prev = _setup()
    g = SelfCondGuidance(SelfCondConfig(scale=3.0))
    assert g.passes(runner.capabilities) == 1 and g.decode_scale(runner.capabilities) == 3.0
    pred = g.denoiser(ev)(z, t, prev)
    assert runner.denoise_calls == 1 and torch.equal(runner.calls[0].guidance, torch.full((2,), 3.0))
    assert _same(pred, ev(z, t, prev, guidance_scale=3.0))


def test_legacy_self_cond_is_two_passes_combined():
    runner, ev, cond, z, t, prev = _setup(tokens=False)
    g = SelfCondGuidance(SelfCondConfig(scale=3.0))
    assert g.passes(runner.capabilities) == 2 and g.decode_scale(runner.capabilities) is None
    pred = g.denoiser(ev)(z, t, prev)
    assert runner.denoise_calls == 2
    f_nosc, f_sc = ev(z, t, None), ev(z, t, prev)
    for f in ("x", "eps", "v"):
        expected = getattr(f_nosc, f) + 3.0 * (getattr(f_sc, f) - getattr(f_nosc, f))
        expected = torch.where(cond.mask.unsqueeze(-1), getattr(ev(z, t, prev), f), expected)
        assert torch.allclose(getattr(pred, f), expected, atol=1e-6), f
    # w = 1 and w = 0 need one forward: the self-conditioned and the empty-slot pass
    for scale, ref in ((1.0, f_sc), (0.0, f_nosc)):
        one = SelfCondGuidance(SelfCondConfig(scale=scale))
        assert one.passes(runner.capabilities) == 1
        assert _same(one.denoiser(ev)(z, t, prev), ref)


def test_cfg_combines_a_dropped_condition_pass():
    runner, ev, cond, z, t, prev = _setup()
    g = CfgGuidance(CfgConfig(scale=2.0, self_cond_scale=1.0))
    caps = runner.capabilities
    assert g.passes(caps) == 2 and g.decode_scale(caps) == 1.0
    pred = g.denoiser(ev)(z, t, prev)
    assert runner.denoise_calls == 2
    m = cond.mask.unsqueeze(-1)
    c_call, u_call = runner.calls
    assert torch.equal(c_call.z, torch.where(m, cond.latents, z))
    assert torch.equal(u_call.z, torch.where(m, 0.0, z))                         # condition zeroed in z …
    assert torch.equal(u_call.self_cond, torch.where(m, 0.0, prev))              # … and in the slot
    c = ev(z, t, prev, guidance_scale=1.0)
    u = ev(z, t, prev, guidance_scale=1.0, drop_condition=True)
    assert torch.allclose(u.x[m.expand_as(u.x)], torch.zeros(()).expand(int(m.sum()) * 4))
    for f in ("x", "v"):
        free = torch.where(m, 0.0, getattr(u, f) + 2.0 * (getattr(c, f) - getattr(u, f)))
        assert torch.allclose(torch.where(m, 0.0, getattr(pred, f)), free, atol=1e-6)
    assert torch.allclose(torch.where(m, pred.x, 0.0), torch.where(m, cond.latents, 0.0))   # restored
    assert torch.equal(torch.where(m, pred.v, 0.0), torch.zeros_like(z))


def test_cfg_scale_one_is_the_conditional_pass_and_counts_inner_passes():
    runner, ev, _, z, t, prev = _setup(tokens=False)
    assert CfgGuidance(CfgConfig(scale=1.0)).passes(runner.capabilities) == 1
    assert CfgGuidance(CfgConfig(scale=2.0, self_cond_scale=3.0)).passes(runner.capabilities) == 4
    pred = CfgGuidance(CfgConfig(scale=1.0)).denoiser(ev)(z, t, prev)
    assert runner.denoise_calls == 1 and _same(pred, ev(z, t, prev))


@pytest.mark.parametrize("name", ["none", "self-cond", "cfg"])
def test_builtin_guidance_passes_the_kit(name):
    assert len(check_guidance(name)) == 4


def test_guidance_kit_at_other_scales():
    check_guidance(SelfCondGuidance, {"scale": 1.0})
    check_guidance(CfgGuidance, CfgConfig(scale=3.0, self_cond_scale=2.0))
