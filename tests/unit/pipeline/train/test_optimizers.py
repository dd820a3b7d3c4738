"""Muon + Nesterov-Adam against independent float64 computations; partition, schedule, clip, EMA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from elfkit.pipeline.train.ema import EMA
from elfkit.pipeline.train.muon import MuonAdam, muon_scale, newton_schulz, newton_schulz_gram
from elfkit.pipeline.train.optimizers import (
    WarmupConstant,
    build_optimizer,
    build_scheduler,
    clip_grad_norm,
    partition_parameters,
    resolve_lr,
)
from elfkit.recipe.schema import MuonSection, TrainSection

A, B, C = 3.4445, -4.7750, 2.0315


# ----------------------------------------------------------------------------------------
# Independent reference formulas (numpy, float64), written from the optax definitions
# ----------------------------------------------------------------------------------------
def ns_numpy(u: np.ndarray, steps: int = 5) -> np.ndarray:
    x = u.astype(np.float64)
    flip = x.shape[0] > x.shape[1]
    if flip:
        x = x.T
    x = x / (np.sqrt((x ** 2).sum()) + 1e-8)
    for _ in range(steps):
        g = x @ x.T
        x = A * x + (B * g + C * g @ g) @ x
    return x.T if flip else x


def muon_numpy(theta: np.ndarray, grads: list[np.ndarray], lr: float, in_out: bool,
               beta: float = 0.95) -> np.ndarray:
    m = np.zeros_like(theta)
    rows, cols = theta.shape
    fan_out, fan_in = (cols, rows) if in_out else (rows, cols)
    for k, g in enumerate(grads, start=1):
        m = beta * m + (1 - beta) * g
        u = beta * m / (1 - beta ** (k + 1)) + (1 - beta) * g / (1 - beta ** k)
        theta = theta - lr * math.sqrt(max(1.0, fan_out / fan_in)) * ns_numpy(u)
    return theta


def nadam_numpy(theta: np.ndarray, grads: list[np.ndarray], lr: float, b1: float = 0.9, b2: float = 0.999,
                eps: float = 1e-8) -> np.ndarray:
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    for k, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = b1 * m / (1 - b1 ** (k + 1)) + (1 - b1) * g / (1 - b1 ** k)
        v_hat = v / (1 - b2 ** k)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta


def _run(opt: torch.optim.Optimizer, p: torch.Tensor, grads: list[np.ndarray]) -> np.ndarray:
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
    return p.detach().double().numpy()


# ----------------------------------------------------------------------------------------
def test_newton_schulz_matches_formula_and_orthogonalises() -> None:
    rng = np.random.default_rng(0)
    for shape in [(6, 10), (10, 6), (7, 7)]:
        u = rng.standard_normal(shape)
        got = newton_schulz(torch.tensor(u, dtype=torch.float32)).double().numpy()
        np.testing.assert_allclose(got, ns_numpy(u), atol=2e-5)
        sv = np.linalg.svd(got, compute_uv=False)
        assert sv.max() < 1.3 and sv.min() > 0.5   # NS5 yields singular values ≈ U(0.5, 1.5)


def test_newton_schulz_in_bf16_stays_close_to_fp32() -> None:
    """train.muon.ns_dtype: bf16 — the same map at bf16 precision (a few per cent per entry)."""
    u = torch.randn(64, 300, generator=torch.Generator().manual_seed(0))
    ref = newton_schulz(u)
    low = newton_schulz(u, dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16
    rel = (low.float() - ref).norm() / ref.norm()
    assert 0 < rel < 0.05                                 # rounded, but the same polar factor
    sv = torch.linalg.svdvals(low.float())
    assert sv.max() < 1.3 and sv.min() > 0.5


def test_muon_ns_dtype_is_a_recipe_setting() -> None:
    from elfkit.pipeline.train.optimizers import build_optimizer
    from elfkit.recipe.schema import TrainSection
    net = nn.Linear(8, 16)
    opt = build_optimizer(net, TrainSection(muon={"ns_dtype": "bf16"}))
    assert opt.ns_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="ns_dtype"):
        MuonAdam([{"params": [net.weight], "algo": "muon"}], ns_dtype="fp16")


@pytest.mark.parametrize("shape", [(6, 20), (20, 6), (7, 7)])
def test_gram_newton_schulz_is_the_same_map(shape: tuple[int, int]) -> None:
    """ns_method: gram evaluates the same polynomial through X·Xᵀ; it must agree with the
    step-by-step float64 map. For an ill-conditioned matrix (singular values 1 … 1e-6) the fp32
    Gram matrix loses the smallest directions' precision: ≤ 5e-4 per entry (direct fp32: ~1e-5,
    direct bf16: ~1e-2)."""
    rng = np.random.default_rng(2)
    u = rng.standard_normal(shape)
    np.testing.assert_allclose(newton_schulz_gram(torch.tensor(u, dtype=torch.float32)).double().numpy(),
                               ns_numpy(u), atol=2e-5)
    left, _ = np.linalg.qr(rng.standard_normal((shape[0], shape[0])))
    right, _ = np.linalg.qr(rng.standard_normal((shape[1], shape[1])))
    r = min(shape)
    ill = left[:, :r] @ np.diag(np.logspace(0, -6, r)) @ right[:, :r].T
    np.testing.assert_allclose(newton_schulz_gram(torch.tensor(ill, dtype=torch.float32)).double().numpy(),
                               ns_numpy(ill), atol=5e-4)
    low = newton_schulz_gram(torch.tensor(u, dtype=torch.float32), dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16
    assert np.abs(low.double().numpy() - ns_numpy(u)).max() < 0.02      # bf16 only on the two long matmuls


def test_gram_method_is_a_recipe_setting_and_matches_direct_muon() -> None:
    net = nn.Linear(4, 16, bias=False)                  # 16×4: long side 4× the short one → Gram path
    grads = [np.random.default_rng(3).standard_normal((16, 4)) for _ in range(3)]
    results = []
    for method in ("direct", "gram"):
        with torch.no_grad():
            net.weight.copy_(torch.ones(16, 4))
        opt = build_optimizer(net, TrainSection(lr=0.1, warmup_steps=0, muon={"ns_method": method}))
        assert opt.ns_method == method
        results.append(_run(opt, net.weight, grads))
    np.testing.assert_allclose(results[1], results[0], atol=1e-5)
    with pytest.raises(ValueError, match="ns_method"):
        MuonAdam([{"params": [net.weight], "algo": "muon"}], ns_method="fast")  # type: ignore[arg-type]


@pytest.mark.parametrize("in_out", [False, True])
def test_muon_update_matches_independent_computation(in_out: bool) -> None:
    rng = np.random.default_rng(1)
    theta0 = rng.standard_normal((4, 12))
    grads = [rng.standard_normal((4, 12)) for _ in range(3)]
    p = nn.Parameter(torch.tensor(theta0, dtype=torch.float32))
    opt = MuonAdam([{"params": [p], "algo": "muon", "in_out": in_out}], lr=0.01)
    np.testing.assert_allclose(_run(opt, p, grads), muon_numpy(theta0, grads, 0.01, in_out), atol=1e-5)


def test_nesterov_adam_matches_independent_computation() -> None:
    rng = np.random.default_rng(2)
    theta0 = rng.standard_normal(7)
    grads = [rng.standard_normal(7) * s for s in (1.0, 0.1, 3.0, 0.5)]
    p = nn.Parameter(torch.tensor(theta0, dtype=torch.float32))
    opt = MuonAdam([{"params": [p], "algo": "adam"}], lr=0.02)
    np.testing.assert_allclose(_run(opt, p, grads), nadam_numpy(theta0, grads, 0.02), atol=1e-6)


def test_muon_scale_is_layout_aware() -> None:
    assert muon_scale((12, 4), in_out=False) == pytest.approx(math.sqrt(3))   # Linear(4→12): out/in = 3
    assert muon_scale((4, 12), in_out=False) == 1.0                            # Linear(12→4)
    assert muon_scale((4, 12), in_out=True) == pytest.approx(math.sqrt(3))     # (in=4, out=12) kernel
    assert muon_scale((512, 32100), in_out=True) == pytest.approx(math.sqrt(32100 / 512))  # ELF unembed ≈ 7.9


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6)
        self.tokens = nn.Parameter(torch.zeros(1, 4, 6))
        self.proj_kernel = nn.Parameter(torch.zeros(6, 3))
        self.unembed_kernel = nn.Parameter(torch.zeros(3, 10))
        self.frozen = nn.Parameter(torch.zeros(5, 5), requires_grad=False)


def test_partition_two_d_to_muon_rest_to_adam() -> None:
    part = partition_parameters(_Net())
    assert [n for n, _ in part.muon] == ["lin.weight"]
    assert [n for n, _ in part.muon_in_out] == ["proj_kernel", "unembed_kernel"]
    assert sorted(n for n, _ in part.adam) == ["lin.bias", "norm.bias", "norm.weight", "tokens"]
    # frozen parameters get no optimiser state at all
    opt = build_optimizer(_Net(), TrainSection())
    assert sum(len(g["params"]) for g in opt.param_groups) == 7
    algos = {g["algo"]: g.get("in_out") for g in opt.param_groups if g["algo"] == "muon" and g["in_out"]}
    assert algos == {"muon": True}


def test_lr_rule_and_adamw_option() -> None:
    assert resolve_lr(TrainSection(blr=1e-3, batch_size=512)) == pytest.approx(2e-3)
    assert resolve_lr(TrainSection(blr=1e-3, batch_size=256, grad_accum=2)) == pytest.approx(2e-3)
    assert resolve_lr(TrainSection(lr=5e-4, batch_size=512)) == 5e-4
    opt = build_optimizer(_Net(), TrainSection(optimizer="adamw", weight_decay=0.1, adam_betas=(0.9, 0.95)))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95) and opt.param_groups[0]["weight_decay"] == 0.1


def test_warmup_then_constant_schedule() -> None:
    assert [WarmupConstant(4)(s) for s in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert WarmupConstant(0)(0) == 1.0
    net = _Net()
    train = TrainSection(lr=0.1, warmup_steps=2)
    opt = build_optimizer(net, train)
    sched = build_scheduler(opt, train)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.05, 0.1, 0.1])   # first update at LR 0, as optax
    assert all(g["lr"] == pytest.approx(0.1) for g in opt.param_groups)


def test_clip_is_optax_global_norm() -> None:
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, 2))
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    b.grad = torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    norm = clip_grad_norm([a, b], 1.0)
    assert float(norm) == pytest.approx(5.0)
    assert a.grad.tolist() == pytest.approx([0.6, 0, 0]) and b.grad[0, 1].item() == pytest.approx(0.8)
    clip_grad_norm([a, b], 10.0)   # below the threshold: unchanged
    assert a.grad.tolist() == pytest.approx([0.6, 0, 0])


def test_ema_from_step_zero_without_bias_correction() -> None:
    net = nn.Linear(3, 2)
    net.register_buffer("buf", torch.arange(3.0))
    init = net.weight.detach().clone()
    ema = EMA(net, decay=0.9)
    assert torch.equal(ema.shadow["weight"], init)
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    torch.testing.assert_close(ema.shadow["weight"], 0.9 * init + 0.1 * (init + 1.0))
    sd = ema.state_dict(net)
    assert set(sd) == {"weight", "bias", "buf"} and torch.equal(sd["buf"], net.buf)
    other = nn.Linear(3, 2)
    ema2 = EMA(other, decay=0.9)
    ema2.load_state_dict(sd)
    torch.testing.assert_close(ema2.shadow["weight"], ema.shadow["weight"])
    ema.copy_to(net)
    torch.testing.assert_close(net.weight, ema.shadow["weight"])


def test_torch_implementation_uses_torch_muon() -> None:
    rng = np.random.default_rng(3)
    theta0 = rng.standard_normal((6, 4)).astype(np.float32)
    grads = [rng.standard_normal((6, 4)) for _ in range(2)]
    p1 = nn.Parameter(torch.tensor(theta0))
    p2 = nn.Parameter(torch.tensor(theta0))
    ours = MuonAdam([{"params": [p1], "algo": "muon"}], lr=0.01, implementation="torch")
    ref = torch.optim.Muon([p2], lr=0.01, weight_decay=0.0)
    np.testing.assert_allclose(_run(ours, p1, grads), _run(ref, p2, grads), atol=1e-6)
    # ... and it is a different rule from the reference implementation (no bias correction, bf16 NS)
    p3 = nn.Parameter(torch.tensor(theta0))
    reference = _run(MuonAdam([{"params": [p3], "algo": "muon"}], lr=0.01), p3, grads)
    assert np.abs(reference - p1.detach().double().numpy()).max() > 1e-3
    assert "momentum_buffer" in ours.state_dict()["state"][0]
    built = build_optimizer(_Net(), TrainSection(muon=MuonSection(implementation="torch")))
    assert built.implementation == "torch"
