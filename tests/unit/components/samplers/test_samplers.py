"""Built-in samplers: registration, the ELF churn formula, transport on the Gaussian toy, the kit."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from elfkit.components.samplers import DpmppConfig, DpmppSampler, EulerConfig, EulerSampler, SdeConfig, SdeSampler
from elfkit.components.samplers.dpmpp import plan
from elfkit.contracts import Sampler
from elfkit.errors import ElfkitError
from elfkit.records import Prediction
from elfkit.registry import build_registry
from elfkit.testing import GaussianToy, check_sampler

TOY = GaussianToy()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registered_with_configs():
    reg = build_registry(entry_points=False)
    assert isinstance(reg.build("sampler", "euler", {"steps": 8}), EulerSampler)
    sde = reg.build("sampler", "sde", {"steps": 32, "gamma": 1.5})
    assert isinstance(sde, Sampler) and sde.steps == 32 and sde.nfe(32) == 32
    with pytest.raises(ValidationError):
        SdeConfig(gamma=-0.1)
    with pytest.raises(ValidationError):
        EulerConfig(steps=0)
    with pytest.raises(ValidationError):
        EulerConfig(steps=4, gamma=1.0)   # unknown keys are errors


def test_sampling_grid_has_the_samplers_steps_drawn_on_the_generators_device():
    from elfkit.components.samplers import sampling_grid
    from elfkit.components.time import LogitNormalConfig, LogitNormalTime

    sampler, time = SdeSampler(SdeConfig(steps=7)), LogitNormalTime(LogitNormalConfig())
    grid = sampling_grid(sampler, time, _gen(3), device="cpu")
    assert grid.shape == (8,) and grid[0] == 0 and grid[-1] == 1
    assert torch.equal(grid, time.grid(7, _gen(3), "cpu"))      # the same draws as asking the time component


def test_bad_grid_is_a_clear_error():
    with pytest.raises(ElfkitError, match="grid"):
        EulerSampler(EulerConfig())(TOY.denoiser(), torch.zeros(1, 2, 3), torch.zeros(1), noise_scale=1.0)


# ----------------------------------------------------------------------------------------
# The SDE step is ELF's formula, on fixed tensors
# ----------------------------------------------------------------------------------------
def _known_denoiser(log):
    """Outputs that are simple known functions of the inputs (not a real model)."""
    def denoise(z, t, self_cond=None):
        log.append((z.clone(), t.clone(), None if self_cond is None else self_cond.clone()))
        x = 0.5 * z + t.view(-1, 1, 1)
        return Prediction(x=x, eps=z - x, v=-z + 2.0 * t.view(-1, 1, 1))
    return denoise


def test_sde_reproduces_the_reference_formula():
    grid = torch.tensor([0.0, 0.1, 0.35, 0.5, 1.0], dtype=torch.float64)
    gamma, s = 1.5, 2.0
    z0 = torch.randn(2, 3, 4, generator=_gen(0), dtype=torch.float64)
    log = []
    out = SdeSampler(SdeConfig(steps=4, gamma=gamma))(_known_denoiser(log), z0, grid, noise_scale=s,
                                                     generator=_gen(42))

    # the same computation written out with python floats, as reference §6.4 states it
    g = _gen(42)
    z, x_prev, ts = z0.clone(), None, grid.tolist()
    for i in range(len(ts) - 2):
        h = ts[i + 1] - ts[i]
        alpha = min(max(1.0 - gamma * h, 0.0), 1.0)
        t_back = alpha * ts[i]
        eps = torch.randn(z.shape, generator=g, dtype=z.dtype)
        z_b = alpha * z + (1.0 - alpha) * s * eps
        assert torch.allclose(log[i][0], z_b) and math.isclose(log[i][1][0].item(), t_back, abs_tol=1e-12)
        assert (x_prev is None) == (log[i][2] is None)
        v, x_prev = -z_b + 2.0 * t_back, 0.5 * z_b + t_back
        z = z_b + (ts[i + 1] - t_back) * v
    v = -z + 2.0 * ts[-2]                       # last interval: Euler ODE at t_{n-1}
    z = z + (1.0 - ts[-2]) * v
    assert len(log) == 4 and math.isclose(log[-1][1][0].item(), ts[-2])
    assert torch.allclose(out.z, z, atol=1e-12)
    assert torch.allclose(out.x_hat, 0.5 * log[-1][0] + ts[-2])


def test_sde_with_gamma_zero_is_euler_and_one_step_is_a_single_x_hat():
    grid = torch.tensor([0.0, 0.2, 0.6, 1.0], dtype=torch.float64)
    z0 = TOY.prior((2, 3), _gen(1))
    euler = EulerSampler(EulerConfig(steps=3))(TOY.denoiser(), z0, grid, noise_scale=2.0)
    sde = SdeSampler(SdeConfig(steps=3, gamma=0.0))(TOY.denoiser(), z0, grid, noise_scale=2.0, generator=_gen(0))
    assert torch.allclose(euler.z, sde.z, atol=1e-12)
    log = []
    one = SdeSampler(SdeConfig(steps=1))(_known_denoiser(log), z0, torch.tensor([0.0, 1.0]), noise_scale=2.0,
                                         generator=_gen(0))
    assert len(log) == 1 and log[0][1].eq(0).all() and one.nfe == 1
    assert torch.equal(one.z, 0.5 * z0)           # the step into t = 1 returns that call's x̂


def test_euler_last_step_lands_on_x_hat():
    # x-prediction: z + (1 − t)(x̂ − z)/(1 − t) = x̂ when the last interior time is below 1 − t_eps
    grid = torch.tensor([0.0, 0.3, 0.55, 1.0], dtype=torch.float64)
    out = EulerSampler(EulerConfig(steps=3))(TOY.denoiser(), TOY.prior((4, 2), _gen(2)), grid, noise_scale=2.0)
    assert torch.allclose(out.z, out.x_hat, atol=1e-12)


# ----------------------------------------------------------------------------------------
# Transport on the closed-form Gaussian toy
# ----------------------------------------------------------------------------------------
def _transport(sampler, steps: int, seed: int = 3):
    z0 = TOY.prior((4096, 2), _gen(seed))
    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    out = sampler(TOY.denoiser(), z0, grid, noise_scale=TOY.noise_scale, generator=_gen(seed + 1))
    return TOY.moment_errors(out.z)


def test_euler_transports_noise_to_the_gaussian_target():
    mean_err, std_err = _transport(EulerSampler(EulerConfig()), steps=256)
    assert mean_err.max() < 0.05 and std_err.abs().max() < 0.02, (mean_err, std_err)
    # and it is a real first-order method: coarser grids are worse
    _, coarse = _transport(EulerSampler(EulerConfig()), steps=16)
    assert coarse.abs().max() > 2 * std_err.abs().max()


def test_sde_with_small_churn_transports_noise_to_the_gaussian_target():
    mean_err, std_err = _transport(SdeSampler(SdeConfig(gamma=0.005)), steps=256)
    assert mean_err.max() < 0.05 and std_err.abs().max() < 0.03, (mean_err, std_err)


def _sde_moments_closed_form(grid: list[float], gamma: float, d: int) -> tuple[float, float]:
    """Exact mean/variance of the churn sampler on the toy (every step is affine in z and ε)."""
    mu, var, s = TOY.mean[d], TOY.std[d] ** 2, TOY.noise_scale
    m, v = 0.0, s * s

    def euler(m, v, t, t_next):       # z' = a·z + b with the exact x̂ and the toy's (tiny) clamp
        k = t * var / (t * t * var + (1 - t) ** 2 * s * s)
        c = max(1 - t, TOY.t_eps)
        a = 1 + (t_next - t) * (k - 1) / c
        b = (t_next - t) * (mu - k * t * mu) / c
        return a * m + b, a * a * v
    n = len(grid) - 1
    for i in range(n - 1):
        t, t_next = grid[i], grid[i + 1]
        alpha = min(max(1 - gamma * (t_next - t), 0.0), 1.0)
        m, v = alpha * m, alpha ** 2 * v + (1 - alpha) ** 2 * s * s
        m, v = euler(m, v, alpha * t, t_next)
    return euler(m, v, grid[-2], grid[-1])


def test_elf_churn_is_not_variance_exact_and_matches_its_closed_form():
    # γ = 1.5 (ELF, 32 steps): the churn contracts the variance; reproduce it, don't fix it.
    steps, gamma = 32, 1.5
    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    z0 = TOY.prior((8192, 2), _gen(9))
    out = SdeSampler(SdeConfig(steps=steps, gamma=gamma))(TOY.denoiser(), z0, grid, noise_scale=TOY.noise_scale,
                                                          generator=_gen(10))
    flat = out.z.reshape(-1, TOY.dim)
    for d in range(TOY.dim):
        m, v = _sde_moments_closed_form(grid.tolist(), gamma, d)
        assert abs(flat[:, d].mean().item() - m) < 4 * math.sqrt(v / flat.shape[0]) + 1e-3
        assert abs(flat[:, d].std().item() / math.sqrt(v) - 1) < 0.04
        assert math.sqrt(v) < 0.5 * TOY.std[d]      # well below the data std


# ----------------------------------------------------------------------------------------
# The conformance kit on the built-ins
# ----------------------------------------------------------------------------------------
def test_euler_passes_the_sampler_kit():
    assert "transport" in check_sampler(EulerSampler)


def test_sde_passes_the_sampler_kit():
    check_sampler(SdeSampler, SdeConfig(steps=32, gamma=0.01))
    check_sampler("sde", transport=False)          # ELF's γ = 1.5: every structural check


# ----------------------------------------------------------------------------------------
# The step into t = 1 returns x̂, for any grid
# ----------------------------------------------------------------------------------------
ELF_TOY = GaussianToy(t_eps=0.05)       # ELF's clamp on 1 − t in the reported velocity


@pytest.mark.parametrize("sampler", [EulerSampler(EulerConfig()), SdeSampler(SdeConfig(gamma=0.0)),
                                     SdeSampler(SdeConfig(gamma=1.5)), DpmppSampler(DpmppConfig()),
                                     DpmppSampler(DpmppConfig(eta=1.0))], ids=lambda s: repr(s.cfg))
@pytest.mark.parametrize("steps", [24, 32, 64, 256])
def test_uniform_grids_above_095_end_on_x_hat(sampler, steps):
    grid = torch.linspace(0, 1, steps + 1)                 # float32, as the uniform time component draws it
    assert grid[-2] > 0.95
    log = []

    def den(z, t, self_cond=None):
        pred = ELF_TOY.predict(z, t)
        log.append(pred.x)
        return pred
    out = sampler(den, ELF_TOY.prior((3, 4)), grid, noise_scale=2.0, generator=_gen(0))
    assert torch.equal(out.z, log[-1]) and torch.equal(out.x_hat, log[-1])


def test_on_elfs_grid_the_step_into_1_is_the_old_integrated_step():
    # the logit-normal grid stops well below 0.95: z + (1 − t)·v̂ and x̂ agree to rounding
    from elfkit.components.time import LogitNormalConfig, LogitNormalTime
    grid = LogitNormalTime(LogitNormalConfig()).grid(32, _gen(4)).double()
    z0 = ELF_TOY.prior((4, 3), _gen(5))
    out = EulerSampler(EulerConfig(steps=32))(ELF_TOY.denoiser(), z0, grid, noise_scale=2.0)
    z = z0
    for i in range(32):
        pred = ELF_TOY.predict(z, grid[i].expand(4))
        z = z + (grid[i + 1] - grid[i]) * pred.v
    assert grid[-2] < 0.95 and torch.allclose(out.z, z, atol=1e-6)


# ----------------------------------------------------------------------------------------
# DPM-Solver++(2M)
# ----------------------------------------------------------------------------------------
def test_dpmpp_registered_and_first_order_part_is_euler():
    reg = build_registry(entry_points=False)
    s = reg.build("sampler", "dpmpp-2m", {"steps": 12, "eta": 0.5})
    assert isinstance(s, DpmppSampler) and s.nfe(12) == 12 and s.order is None
    assert DpmppSampler(DpmppConfig()).order == 2
    with pytest.raises(ValidationError):
        DpmppConfig(eta=-1.0)
    # without extrapolation each step is z·(1−t')/(1−t) + x̂·(t'−t)/(1−t): Euler on the linear flow
    grid = [0.0, 0.2, 0.5, 0.7, 1.0]
    steps = plan(grid, 2.0, 0.0)
    for i, st in enumerate(steps):
        t, tn = grid[i], grid[i + 1]
        assert st.moves and st.noise == 0.0
        assert st.a == pytest.approx((1 - tn) / (1 - t)) and st.b == pytest.approx((tn - t) / (1 - t))
    lam = [math.log(t / (2 * (1 - t))) for t in grid[1:4]]
    assert steps[0].w == 0.0 and steps[1].w == 0.0                # no usable previous step after t = 0
    assert steps[2].w == pytest.approx((lam[2] - lam[1]) / (2 * (lam[1] - lam[0])))


def test_dpmpp_plan_ties_and_eta():
    steps = plan([0.0, 0.3, 0.3, 0.6, 1.0], 2.0, 0.0)
    assert not steps[1].moves and steps[1].a == 1.0 and steps[1].b == 0.0
    assert steps[2].w == 0.0                                      # the step before the tie started at t = 0
    noisy = plan([0.0, 0.2, 0.5, 1.0], 2.0, 1.0)
    e = 0.2 * 0.5 / (0.8 * 0.5)                                   # exp(−h) for the interval [0.2, 0.5]
    assert noisy[1].a == pytest.approx(0.5 / 0.8 * e) and noisy[1].b == pytest.approx(0.5 * (1 - e * e))
    assert noisy[1].noise == pytest.approx(2.0 * 0.5 * math.sqrt(1 - e * e))


def test_dpmpp_beats_euler_on_the_toy():
    from elfkit.testing.sampler_kit import convergence_errors
    dpm = convergence_errors(DpmppSampler(DpmppConfig()), steps=(16, 32))
    euler = convergence_errors(EulerSampler(EulerConfig()), steps=(16, 32))
    assert all(d < 0.5 * e for d, e in zip(dpm, euler, strict=True)), (dpm, euler)


def test_dpmpp_passes_the_sampler_kit():
    assert "order" in check_sampler(DpmppSampler)


def test_dpmpp_sde_variant_passes_the_sampler_kit():
    check_sampler(DpmppSampler, DpmppConfig(eta=1.0), order=False)
