"""Generation: the model evaluation (§6.3), the full loop against a written-out ELF reference (§6.4),
NFE accounting and post-processing."""

from __future__ import annotations

import pytest
import torch

from elfkit.components.guidance import (
    CfgConfig,
    CfgGuidance,
    NoGuidance,
    NoGuidanceConfig,
    SelfCondConfig,
    SelfCondGuidance,
)
from elfkit.components.samplers import EulerConfig, EulerSampler, SdeConfig, SdeSampler
from elfkit.components.targets import EpsTarget, TargetConfig, XTarget
from elfkit.components.time import LogitNormalConfig, LogitNormalTime, UniformConfig, UniformTime
from elfkit.core.flow import FlowPath
from elfkit.errors import ElfkitError
from elfkit.generation import Condition, GenerationResult, ModelEvaluator, generate, postprocess
from elfkit.testing import StubRunner

PATH = FlowPath(noise_scale=2.0)
X = XTarget(TargetConfig()).bind(PATH)


def _condition(b=3, s=6, d=4, lengths=(0, 2, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(s).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return Condition.from_mask(torch.randn(b, s, d, generator=g), mask)


# ----------------------------------------------------------------------------------------
# ModelEvaluator
# ----------------------------------------------------------------------------------------
def test_evaluator_pins_inputs_and_restores_outputs():
    runner, cond = StubRunner(), _condition()
    ev = ModelEvaluator(runner, X, cond)
    z, t = torch.randn(3, 6, 4), torch.tensor([0.1, 0.5, 0.9])
    prev = torch.randn(3, 6, 4)
    pred = ev(z, t, prev, guidance_scale=2.5)
    call = runner.calls[-1]
    m = cond.mask.unsqueeze(-1)
    assert torch.equal(call.z, torch.where(m, cond.latents, z))
    assert torch.equal(call.self_cond, torch.where(m, cond.latents, prev))
    assert torch.equal(call.guidance, torch.full((3,), 2.5)) and torch.equal(call.t, t)
    # away from the condition: the target's conversion of the raw output at the pinned z
    raw = runner.denoise(call.z, t, call.self_cond, call.guidance)
    ref = X.predict(raw, call.z, t, PATH)
    for f in ("x", "eps", "v"):
        assert torch.allclose(torch.where(m, 0.0, getattr(pred, f)), torch.where(m, 0.0, getattr(ref, f)))
    # on it: x̂ = ε̂ = clean condition, v̂ = 0
    assert torch.equal(torch.where(m, pred.x, 0.0), torch.where(m, cond.latents, 0.0))
    assert torch.equal(torch.where(m, pred.eps, 0.0), torch.where(m, cond.latents, 0.0))
    assert not torch.where(m, pred.v, 0.0).any()


def test_evaluator_first_call_slot_drop_condition_and_capabilities():
    cond = _condition()
    m = cond.mask.unsqueeze(-1)
    runner = StubRunner()
    ev = ModelEvaluator(runner, X, cond)
    z, t = torch.randn(3, 6, 4), torch.full((3,), 0.3)
    ev(z, t, None, guidance_scale=1.0)
    assert torch.equal(runner.calls[-1].self_cond, torch.where(m, cond.latents, 0.0))   # zeros + condition
    pred = ev(z, t, torch.randn(3, 6, 4), guidance_scale=1.0, drop_condition=True)
    call = runner.calls[-1]
    assert not torch.where(m, call.z, 0.0).any() and not torch.where(m, call.self_cond, 0.0).any()
    assert not torch.where(m, pred.x, 0.0).any() and not torch.where(m, pred.v, 0.0).any()
    with pytest.raises(ElfkitError, match="guidance_scale"):
        ev(z, t, None)
    plain = StubRunner(self_conditioning=False, guidance_tokens=False)
    ModelEvaluator(plain, X, cond)(z, t, torch.randn(3, 6, 4), guidance_scale=3.0)
    assert plain.calls[-1].self_cond is None and plain.calls[-1].guidance is None


def test_evaluator_uses_the_target_conversion():
    runner = StubRunner(guidance_tokens=False)
    z, t = torch.randn(2, 3, 4), torch.tensor([0.3, 0.6])
    pred = ModelEvaluator(runner, EpsTarget(TargetConfig()).bind(PATH))(z, t)
    raw = runner.denoise(z, t, torch.zeros_like(z), None)
    assert torch.allclose(pred.eps, 2.0 * raw)                 # ε target: unit noise × s
    assert torch.allclose(pred.v, pred.x - pred.eps, atol=1e-5)


# ----------------------------------------------------------------------------------------
# generate() against the reference loop written out by hand
# ----------------------------------------------------------------------------------------
def _reference_elf(runner, grid_time, steps, gamma, w, cond, seed, length):
    """ELF §6.3-6.4 with x-prediction and w tokens, transcribed independently of elfkit's code."""
    g = torch.Generator().manual_seed(seed)
    grid = grid_time.grid(steps, g).tolist()
    b, s, d = cond.latents.shape
    m = cond.mask.unsqueeze(-1)

    def restore(a, values):
        return torch.where(m, values, a)

    def forward(z, t):
        wt = torch.full((b,), w)
        x = runner.denoise(z, torch.full((b,), t), x_prev, wt)
        v = (x - z) / max(1 - t, 0.05)
        return restore(v, torch.zeros(())), restore(x, cond.latents)

    z = restore(2.0 * torch.randn(b, length, d, generator=g), cond.latents)
    x_prev = restore(torch.zeros(b, length, d), cond.latents)
    for i in range(len(grid) - 2):
        h = grid[i + 1] - grid[i]
        alpha = min(max(1 - gamma * h, 0.0), 1.0)
        t_b = alpha * grid[i]
        z_b = restore(alpha * z + (1 - alpha) * 2.0 * torch.randn(z.shape, generator=g), cond.latents)
        v, x_prev = forward(z_b, t_b)
        z = z_b + (grid[i + 1] - t_b) * v
    v, _ = forward(z, grid[-2])
    z = z + (1 - grid[-2]) * v
    return runner.decode(z, torch.full((b,), w)).argmax(-1), z


@pytest.mark.parametrize("grid_time", [LogitNormalTime(LogitNormalConfig()), UniformTime(UniformConfig())])
def test_generate_matches_the_reference_loop(grid_time):
    cond = _condition()
    runner = StubRunner()
    res = generate(runner, X, SdeSampler(SdeConfig(steps=8, gamma=1.5)), grid_time,
                   SelfCondGuidance(SelfCondConfig(scale=3.0)), num=3, length=6,
                   generator=torch.Generator().manual_seed(5), condition=cond)
    ref_ids, ref_z = _reference_elf(StubRunner(), grid_time, 8, 1.5, 3.0, cond, seed=5, length=6)
    assert isinstance(res, GenerationResult)
    assert torch.allclose(res.z, ref_z, atol=1e-5)
    assert torch.equal(res.token_ids, ref_ids)
    assert res.nfe == 8 and runner.denoise_calls == 8
    decodes = [c for c in runner.calls if c.mode == "decode"]
    assert len(decodes) == 1 and torch.equal(decodes[0].guidance, torch.full((3,), 3.0))


def test_generate_counts_forwards_and_is_seeded():
    cond = _condition()
    runner = StubRunner()
    kw = dict(num=3, length=6, condition=cond)
    args = (X, EulerSampler(EulerConfig(steps=5)), LogitNormalTime(LogitNormalConfig()),
            CfgGuidance(CfgConfig(scale=2.0)))
    a = generate(runner, *args, generator=torch.Generator().manual_seed(1), **kw)
    assert a.nfe == 10 and runner.denoise_calls == 10                          # 5 calls × 2 passes
    assert a.token_ids.shape == (3, 6) and a.token_ids.dtype == torch.long
    assert torch.equal(torch.where(cond.mask.unsqueeze(-1), a.z, 0.0),
                       torch.where(cond.mask.unsqueeze(-1), cond.latents, 0.0))  # condition pinned
    b = generate(StubRunner(), *args, generator=torch.Generator().manual_seed(1), **kw)
    c = generate(StubRunner(), *args, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a.z, b.z) and not torch.equal(a.z, c.z)
    # the logit-normal grid is redrawn per batch: two batches from one generator see other times
    g, r = torch.Generator().manual_seed(3), StubRunner()
    generate(r, *args, generator=g, **kw)
    generate(r, *args, generator=g, **kw)
    times = [c.t[0].item() for c in r.calls if c.mode == "denoise"]
    assert times[2:10:2] != times[12:20:2]


def test_generate_unconditional_without_guidance_tokens_and_float64():
    runner = StubRunner(self_conditioning=False, guidance_tokens=False)
    res = generate(runner, X, EulerSampler(EulerConfig(steps=3)), UniformTime(UniformConfig()),
                   NoGuidance(NoGuidanceConfig()), num=1, length=5, generator=torch.Generator().manual_seed(0),
                   dtype=torch.float64)
    assert res.z.dtype == torch.float64 and res.nfe == 3
    assert runner.calls[-1].mode == "decode" and runner.calls[-1].guidance is None


def test_generate_rejects_a_mismatched_condition():
    with pytest.raises(ElfkitError, match="condition"):
        generate(StubRunner(), X, EulerSampler(EulerConfig(steps=2)), UniformTime(UniformConfig()),
                 NoGuidance(NoGuidanceConfig()), num=2, length=6, generator=None, condition=_condition())


# ----------------------------------------------------------------------------------------
# postprocess
# ----------------------------------------------------------------------------------------
def test_postprocess_cuts_at_eos_and_drops_pad():
    ids = torch.tensor([[5, 6, 0, 7, 1, 8, 9], [1, 5, 5, 5, 5, 5, 5], [4, 4, 4, 4, 4, 4, 4]])
    assert postprocess(ids, eos_id=1, pad_id=0) == [[5, 6, 7], [], [4] * 7]


def test_postprocess_conditional_shifts_and_cuts_before_eos():
    # condition (ending with EOS) | generated … EOS | tail
    ids = torch.tensor([[9, 9, 1, 5, 6, 1, 7], [9, 1, 5, 6, 7, 8, 2]])
    out = postprocess(ids, eos_id=1, pad_id=0, cond_len=torch.tensor([3, 2]), gen_length=3)
    assert out == [[5, 6], [5, 6, 7]]


def test_generate_reports_every_denoiser_call_without_changing_the_result():
    cond = _condition()
    args = (X, SdeSampler(SdeConfig(steps=5, gamma=1.0)), LogitNormalTime(LogitNormalConfig()),
            SelfCondGuidance(SelfCondConfig(scale=2.0)))
    kw = dict(num=3, length=6, condition=cond)
    seen = []
    a = generate(StubRunner(), *args, generator=torch.Generator().manual_seed(4), on_step=seen.append, **kw)
    b = generate(StubRunner(), *args, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a.z, b.z) and torch.equal(a.token_ids, b.token_ids)
    assert [s.index for s in seen] == [0, 1, 2, 3, 4] and all(s.t.shape == (3,) for s in seen)
    assert torch.equal(seen[-1].x_hat, a.z)                 # the step into t = 1 lands on the last x̂
    m = cond.mask.unsqueeze(-1)
    assert torch.equal(torch.where(m, seen[0].x_hat, 0.0), torch.where(m, cond.latents, 0.0))   # pinned
