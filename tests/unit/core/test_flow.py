"""Core math against closed-form cases: the path, the conversions and their clamps, time draws."""

from __future__ import annotations

import math

import pytest
import torch

from elfkit.components.objectives.guided import guided_target, log_uniform_guidance
from elfkit.components.targets import EpsTarget, TargetConfig, VTarget, XTarget
from elfkit.core import distributions as tmath
from elfkit.core import flow
from elfkit.core.flow import FlowPath
from elfkit.errors import ElfkitError


def T(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _draw(B=3, S=5, D=4, s=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, S, D, generator=g, dtype=torch.float64)
    e0 = torch.randn(B, S, D, generator=g, dtype=torch.float64)
    return x, e0, s * e0


def test_interpolate_endpoints_and_velocity():
    x, e0, eps = _draw()
    t0, t1 = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    assert torch.allclose(flow.interpolate(x, e0, t0, 2.0), eps)          # t=0: pure (scaled) noise
    assert torch.allclose(flow.interpolate(x, e0, t1, 2.0), x)            # t=1: data
    t = T(0.2, 0.5, 0.7)
    h = 1e-6
    dz = (flow.interpolate(x, e0, t + h, 2.0) - flow.interpolate(x, e0, t - h, 2.0)) / (2 * h)
    assert torch.allclose(dz, x - eps, atol=1e-6)                         # v = dz/dt = x − ε


@pytest.mark.parametrize("t", [0.1, 0.4, 0.9])
def test_conversions_are_exact_away_from_clamps(t):
    x, e0, eps = _draw()
    tt = torch.full((3,), t, dtype=torch.float64)
    z = flow.interpolate(x, e0, tt, 2.0)
    v = x - eps
    assert torch.allclose(flow.x_to_v(x, z, tt), v)
    assert torch.allclose(flow.x_to_eps(x, z, tt), eps)
    assert torch.allclose(flow.eps_to_x(eps, z, tt), x)
    assert torch.allclose(flow.eps_to_v(eps, z, tt), v)
    assert torch.allclose(flow.v_to_x(v, z, tt), x)
    assert torch.allclose(flow.v_to_eps(v, z, tt), eps)
    # round trips
    assert torch.allclose(flow.v_to_x(flow.x_to_v(x, z, tt), z, tt), x)
    assert torch.allclose(flow.eps_to_x(flow.x_to_eps(x, z, tt), z, tt), x)


def test_x_to_v_clamp_near_one():
    x, e0, _ = _draw()
    tt = torch.full((3,), 0.99, dtype=torch.float64)
    z = flow.interpolate(x, e0, tt, 2.0)
    v = flow.x_to_v(x, z, tt, t_eps=0.05)
    assert torch.allclose(v, (x - z) / 0.05)                              # divided by max(1−t, t_eps)
    assert torch.isfinite(flow.x_to_v(x, x, torch.ones(3, dtype=torch.float64))).all()        # t = 1 stays finite
    # the last Euler step from t ≥ 1 − t_eps undershoots x̂ by (1−t)/t_eps (ecosystem.md §C.3)
    step = z + (1 - 0.99) * v
    assert torch.allclose(step, z + (x - z) * (0.01 / 0.05))


def test_eps_to_x_clamp_near_zero():
    x, e0, eps = _draw()
    tt = torch.full((3,), 1e-4, dtype=torch.float64)
    z = flow.interpolate(x, e0, tt, 2.0)
    xh = flow.eps_to_x(eps, z, tt, t_min=0.05)
    assert torch.allclose(xh, (z - (1 - 1e-4) * eps) / 0.05)              # divided by max(t, t_min)
    assert torch.isfinite(flow.eps_to_x(eps, eps, torch.zeros(3, dtype=torch.float64))).all()
    # at t=0 exactly with the true ε the numerator vanishes: x̂ = 0, not NaN
    assert torch.allclose(flow.eps_to_x(eps, eps, torch.zeros(3, dtype=torch.float64)), torch.zeros_like(x))


def test_per_token_time_broadcasts():
    x, e0, _ = _draw()
    t = torch.rand(3, 5, dtype=torch.float64)
    z = flow.interpolate(x, e0, t, 2.0)
    assert torch.allclose(z[1, 2], t[1, 2] * x[1, 2] + (1 - t[1, 2]) * 2.0 * e0[1, 2])


@pytest.mark.parametrize("target_cls", [XTarget, EpsTarget, VTarget])
@pytest.mark.parametrize("space", ["x", "eps", "v"])
def test_targets_truth_is_consistent_and_loss_is_zero_at_truth(target_cls, space):
    path = FlowPath(noise_scale=2.0)
    x, e0, eps = _draw()
    t = T(0.2, 0.5, 0.8)
    z = path.interpolate(x, e0, t)
    target = target_cls(TargetConfig(loss_space=space))
    truth = target.truth(x, e0, z, t, path)
    assert torch.allclose(truth.x, x) and torch.allclose(truth.eps, eps) and torch.allclose(truth.v, x - eps)
    assert torch.allclose(target.loss(truth, target.in_loss_space(truth)), torch.zeros(3, 5, dtype=torch.float64))


def test_eps_target_outputs_unit_noise():
    path = FlowPath(noise_scale=2.0)
    x, e0, eps = _draw()
    t = torch.full((3,), 0.3, dtype=torch.float64)
    z = path.interpolate(x, e0, t)
    pred = EpsTarget(TargetConfig()).predict(e0, z, t, path)              # network outputs ε₀
    assert torch.allclose(pred.eps, eps) and torch.allclose(pred.x, x)


def test_v_loss_equals_weighted_x_loss_for_x_target():
    """‖v̂ − v‖² = ‖x̂ − x‖²/(1−t)² below the clamp (ELF's loss)."""
    path = FlowPath(noise_scale=2.0)
    x, e0, _ = _draw()
    t = T(0.1, 0.5, 0.9)
    z = path.interpolate(x, e0, t)
    target = XTarget(TargetConfig(loss_space="v"))
    x_hat = x + 0.1 * torch.randn_like(x)
    pred = target.predict(x_hat, z, t, path)
    truth = target.truth(x, e0, z, t, path)
    lhs = target.loss(pred, truth.v)
    rhs = (x_hat - x).pow(2).mean(-1) / (1 - t).view(-1, 1) ** 2
    assert torch.allclose(lhs, rhs)


def test_flow_path_defaults_are_elfs():
    assert FlowPath() == FlowPath(noise_scale=flow.NOISE_SCALE, t_eps=flow.T_EPS, t_min=flow.T_MIN)
    assert (flow.NOISE_SCALE, flow.T_EPS, flow.T_MIN) == (2.0, 0.05, 0.05)


def test_a_bound_target_carries_its_path_and_an_explicit_path_overrides_it():
    x, e0, _ = _draw()
    t = T(0.2, 0.5, 0.97)
    near, far = FlowPath(noise_scale=2.0, t_eps=0.05), FlowPath(noise_scale=2.0, t_eps=0.2)
    z = near.interpolate(x, e0, t)
    unbound = XTarget(TargetConfig())
    bound = unbound.bind(near, name="x")
    assert bound is not unbound and bound.path == near and bound.name == "x" and not unbound.is_bound
    assert torch.equal(bound.predict(x, z, t).v, unbound.predict(x, z, t, near).v)
    assert torch.equal(bound.predict(x, z, t, far).v, unbound.predict(x, z, t, far).v)    # explicit wins
    assert not torch.equal(bound.predict(x, z, t).v, bound.predict(x, z, t, far).v)
    assert torch.equal(bound.truth(x, e0, z, t).v, unbound.truth(x, e0, z, t, near).v)
    with pytest.raises(ElfkitError, match="not bound"):
        unbound.predict(x, z, t)
    described = bound.describe()
    assert described["target"]["name"] == "x" and described["target"]["config"] == {"loss_space": "v"}
    assert described["path"] == {"noise_scale": 2.0, "t_eps": 0.05, "t_min": 0.05}


def test_guided_target_formula():
    tgt = torch.ones(2, 3, 4)
    c, u = torch.full((2, 3, 4), 3.0), torch.full((2, 3, 4), 1.0)
    out = guided_target(tgt, c, u, use_sc=T(1.0, 0.0), w=T(2.0, 4.0))
    assert torch.allclose(out[0], torch.full((3, 4), 1 + (1 - 0.5) * 2))   # 1 + (1 − 1/w)(c − u)
    assert torch.allclose(out[1], torch.ones(3, 4))                        # no self-cond: plain target


def test_logit_normal_distribution():
    g = torch.Generator().manual_seed(0)
    t = tmath.logit_normal(200_000, -1.5, 0.8, g)
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item() + 1.5) < 0.01 and abs(logit.std().item() - 0.8) < 0.01
    assert abs(t.median().item() - 1 / (1 + math.exp(1.5))) < 0.005          # median t ≈ 0.18
    assert abs((t > 0.5).float().mean().item() - 0.0304) < 0.003            # ~3% above 0.5


def test_grids():
    assert torch.allclose(tmath.uniform_grid(4), torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float32))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = tmath.logit_normal_grid(32, -1.5, 0.8, g1), tmath.logit_normal_grid(32, -1.5, 0.8, g2)
    assert torch.equal(a, b) and a.numel() == 33 and a[0] == 0 and a[-1] == 1
    assert torch.all(a[1:] >= a[:-1])
    c = tmath.logit_normal_grid(32, -1.5, 0.8, g1)                          # redrawn per call
    assert not torch.equal(a, c)
    assert torch.equal(tmath.logit_normal_grid(1, -1.5, 0.8), T(0.0, 1.0))
    with pytest.raises(ValueError):
        tmath.uniform_grid(0)


def test_log_uniform_guidance_range():
    g = torch.Generator().manual_seed(0)
    w = log_uniform_guidance(100_000, 0.5, 5.0, g)
    assert w.min() >= 0.5 - 1e-6 and w.max() <= 5.0 + 1e-6
    log1w = torch.log1p(w)
    assert abs(log1w.mean().item() - (math.log(1.5) + math.log(6)) / 2) < 0.01   # uniform in log(1+w)
    assert abs((w < 1).float().mean().item() - math.log(2 / 1.5) / math.log(4)) < 0.01   # ~21% below 1


# ----------------------------------------------------------------------------------------
# The path's coefficients (α, σ, λ, log-SNR, VE σ) against their closed forms
# ----------------------------------------------------------------------------------------
def test_path_coefficients_closed_forms():
    t, s = T(0.1, 0.25, 0.5, 0.8), 2.0
    x, e0, _ = _draw()
    tt = flow.expand_time(t[1], x)
    assert torch.allclose(flow.interpolate(x, e0, t[1], s), flow.alpha(tt) * x + flow.sigma(tt, s) * e0)
    assert torch.allclose(flow.sigma(t, s), T(1.8, 1.5, 1.0, 0.4))
    assert torch.allclose(flow.half_log_snr(t, s), torch.log(t / (s * (1 - t))))
    assert torch.allclose(flow.half_log_snr(T(0.5), 2.0), T(-math.log(2.0)))
    assert torch.allclose(flow.log_snr(t, s), torch.log(t ** 2 / (s * s * (1 - t) ** 2)))
    assert torch.allclose(flow.ve_sigma(t, s), T(18.0, 6.0, 2.0, 0.5))
    # z_t / α = x + σ_VE·ε₀: the variance-exploding form of the same path
    assert torch.allclose(flow.interpolate(x, e0, t[2], s) / 0.5, x + 2.0 * e0)


def test_path_coefficients_at_the_ends_and_inverses():
    s = 2.0
    ends = flow.half_log_snr(T(0.0, 1.0), s)
    assert ends[0] == -math.inf and ends[1] == math.inf
    assert flow.ve_sigma(T(1.0), s).item() == 0.0
    t = T(0.01, 0.3, 0.7, 0.99)
    assert torch.allclose(flow.t_from_ve_sigma(flow.ve_sigma(t, s), s), t)
    assert torch.allclose(flow.t_from_half_log_snr(flow.half_log_snr(t, s), s), t)
    assert torch.allclose(flow.half_log_snr(t, 1.0), torch.logit(t))
