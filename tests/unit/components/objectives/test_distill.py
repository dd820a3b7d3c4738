"""Progressive distillation against an independent re-implementation of the official branch.

``reference_loss`` is written from the specification (elf-official-code.md §8 and the branch's
``distill_train_step``), row by row in plain torch: it calls the networks directly and none of
the objective's helpers.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from elfkit.components.objectives import ElfDraws, PDDraws, ProgressiveDistillation, ProgressiveDistillationConfig
from elfkit.components.objectives.distill import one_step_target, student_times, teacher_grid
from elfkit.components.targets import TargetConfig, XTarget
from elfkit.components.time import LogitNormalConfig, LogitNormalTime
from elfkit.core.flow import FlowPath
from elfkit.errors import ElfkitError
from elfkit.records import Batch
from tests.fixtures.train_fixtures import tiny_elf

B, S, D, V = 6, 6, 8, 16
S_NOISE, S_DEC, T_EPS = 2.0, 5.0, 0.05


def perturbed(seed: int) -> nn.Module:
    """A tiny ELF whose zero-initialised x head is moved, so x̂ depends on every input."""
    torch.manual_seed(seed)
    m = tiny_elf(latent_dim=D, vocab_size=V, max_length=S)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def fixed_case(k: int) -> tuple[Batch, Tensor, PDDraws]:
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, V, (B, S), generator=g)
    cond = torch.zeros(B, S, dtype=torch.bool)
    cond[:3, 0] = True                                  # condition positions on some rows
    valid = torch.ones(B, S, dtype=torch.bool)
    valid[4, -2:] = False
    loss_mask = (valid & ~cond).float()
    batch = Batch(ids, valid, cond, loss_mask)
    x0 = torch.randn(B, S, D, generator=g)
    is_dec = torch.tensor([False, True, False, False, True, False])
    elf = ElfDraws(
        t=torch.tensor([0.1, 0.4, 0.35, 0.8, 0.6, 0.0005]),   # a t_s near 0
        noise=torch.randn(B, S, D, generator=g),
        is_dec=is_dec,
        dec_lambda=torch.rand(2, S, 1, generator=g),
        dec_noise=torch.randn(2, S, D, generator=g),
        use_sc=torch.tensor([True, True, False, True, False, True]),
        w=torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0, 2.5]),
    )
    return batch, x0, PDDraws(elf, torch.rand(B, k - 1, generator=g))


def reference_loss(student: nn.Module, teacher: nn.Module, batch: Batch, x0_all: Tensor, dr: PDDraws,
                   n_student: int, k: int) -> Tensor:
    """The branch's loss, one example at a time."""
    d = dr.elf
    delta = 1.0 / n_student
    per_example = []
    j = 0
    for b in range(B):
        x0 = x0_all[b:b + 1]
        c = batch.cond_mask[b][None, :, None]
        m = batch.loss_mask[b]
        w = d.w[b:b + 1] if d.w is not None else None
        if bool(d.is_dec[b]):
            lam, eps = d.dec_lambda[j:j + 1], d.dec_noise[j:j + 1]
            j += 1
            dz = lam * x0 + (1 - lam) * S_DEC * eps
            sc = torch.where(c, x0, torch.zeros_like(x0))
            out = student(dz, torch.ones(1), self_cond=sc, guidance=w, decode=torch.ones(1, dtype=torch.bool))
            logits = student.decode_logits(out.hidden).float()[0]
            ce = -torch.log_softmax(logits, -1).gather(-1, batch.input_ids[b][:, None])[:, 0]
            per_example.append((ce * m).sum() / max(float(m.sum()), 1.0))
            continue
        t_s = float(d.t[b]) * max(1 - delta, 1e-6)
        t_t = t_s + delta
        z_s = t_s * x0 + (1 - t_s) * S_NOISE * d.noise[b:b + 1]
        z_s = torch.where(c, x0, z_s)
        empty = torch.where(c, x0, torch.zeros_like(x0))
        with torch.no_grad():
            def teach(z: Tensor, t: float, sc: Tensor, w: Tensor | None = w) -> Tensor:
                return teacher(z, torch.tensor([t]), self_cond=sc, guidance=w, decode=False).out.float()
            x_u = torch.where(c, x0, teach(z_s, t_s, empty))
            sc = x_u if bool(d.use_sc[b]) else empty
            if k == 1:
                tgt = teach(z_s, t_s, sc)
            else:
                u = sorted(float(v) for v in dr.sub[b])
                times = [t_s] + [t_s + (t_t - t_s) * v for v in u] + [t_t]
                z, sc_i, x_last = z_s, sc, z_s
                for i in range(k):
                    x_last = teach(z, times[i], sc_i)
                    vel = (x_last - z) / max(1 - times[i], T_EPS)
                    z = torch.where(c, x0, z + (times[i + 1] - times[i]) * vel)
                    sc_i = torch.where(c, x0, x_last)
                span = t_t - t_s
                tgt = x_last if span < 1e-3 else z_s + (1 - t_s) / max(span, 1e-6) * (z - z_s)
        out = student(z_s, torch.tensor([t_s]), self_cond=sc, guidance=w, decode=torch.zeros(1, dtype=torch.bool))
        mse = (out.out.float() - tgt).pow(2).mean(-1)[0]
        per_example.append((mse * m).sum() / max(float(m.sum()), 1.0))
    return torch.stack(per_example).mean()


def objective(n_student: int, k: int, teacher: nn.Module) -> ProgressiveDistillation:
    obj = ProgressiveDistillation(ProgressiveDistillationConfig(student_steps=n_student, teacher_substeps=k,
                                                                decoder_noise_scale=S_DEC))
    obj.attach_teacher(teacher)
    return obj


TARGET = XTarget(TargetConfig(loss_space="v")).bind(FlowPath(noise_scale=S_NOISE, t_eps=T_EPS))


@pytest.mark.parametrize(("n_student", "k"), [(4, 4), (1, 8), (2, 1), (2000, 2)])
def test_loss_and_gradients_match_an_independent_reference(n_student: int, k: int) -> None:
    batch, x0, draws = fixed_case(k)
    teacher, student = perturbed(0), perturbed(1)
    student_ref = perturbed(1)
    out = objective(n_student, k, teacher).loss_from_draws(student, batch, x0, draws, target=TARGET)
    ref = reference_loss(student_ref, teacher, batch, x0, draws, n_student, k)
    assert math.isfinite(float(ref.detach())) and float(ref.detach()) > 0
    assert abs(out.loss.item() - ref.item()) <= 1e-6 * max(1.0, abs(ref.item()))
    out.loss.backward()
    ref.backward()
    for (name, p), q in zip(student.named_parameters(), student_ref.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None and q.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-5), name
    assert all(p.grad is None for p in teacher.parameters())          # the teacher stays frozen
    assert set(out.logs) == {"loss", "pd", "ce", "decoder_frac", "self_cond_frac"}


def test_draws_come_from_the_generator_and_the_time_distribution() -> None:
    obj = objective(2, 8, perturbed(0))
    x0 = torch.randn(B, S, D)
    time = LogitNormalTime(LogitNormalConfig(mean=-1.5, std=0.8))
    caps = perturbed(1).capabilities
    a = obj.draw(x0, caps, time=time, generator=torch.Generator().manual_seed(5))
    b = obj.draw(x0, caps, time=time, generator=torch.Generator().manual_seed(5))
    assert a.sub.shape == (B, 7) and torch.equal(a.sub, b.sub) and torch.equal(a.elf.t, b.elf.t)
    assert bool(((a.sub > 0) & (a.sub < 1)).all())
    assert a.elf.w is not None and bool(((a.elf.w >= 0.5 - 1e-6) & (a.elf.w <= 5.0 + 1e-6)).all())


def test_student_times_scale_the_span_and_route_decoder_rows_to_one() -> None:
    u = torch.tensor([0.0, 0.5, 1.0, 0.3])
    t_s, t_t = student_times(u, torch.tensor([False, False, False, True]), 0.25)
    assert torch.allclose(t_s, torch.tensor([0.0, 0.375, 0.75, 1.0]))
    assert torch.allclose(t_t, torch.tensor([0.25, 0.625, 1.0, 1.0]))
    t_s, t_t = student_times(torch.tensor([0.7]), torch.tensor([False]), 1.0)   # one step: t_s ≈ 0, t_t ≈ 1
    assert float(t_s) == pytest.approx(0.7e-6) and float(t_t) == pytest.approx(1.0, abs=1e-6)


def test_teacher_grid_is_sorted_inside_the_span() -> None:
    g = teacher_grid(torch.tensor([0.2]), torch.tensor([0.6]), torch.tensor([[0.75, 0.25, 0.5]]))
    assert torch.allclose(g, torch.tensor([[0.2, 0.3, 0.4, 0.5, 0.6]]))


def test_one_step_target_recovers_x_on_the_straight_path() -> None:
    """Closed form: the exact end point of z_t = t·x + (1−t)·s·ε inverts back to x."""
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    t_s, t_t = torch.tensor([0.1, 0.4, 0.0]), torch.tensor([0.35, 0.9, 1.0])
    path = FlowPath(noise_scale=2.0)
    z_s, z_t = path.interpolate(x, eps, t_s), path.interpolate(x, eps, t_t)
    assert torch.allclose(one_step_target(z_s, z_t, t_s, t_t, torch.zeros_like(x)), x, atol=1e-5)
    # a span below 1e-3 takes the teacher's last x̂
    last = torch.full_like(x, 7.0)
    tiny = one_step_target(z_s, z_s, t_s, t_s + 5e-4, last)
    assert torch.equal(tiny, last)


def test_without_a_teacher_the_error_says_how_to_attach_one() -> None:
    batch, x0, draws = fixed_case(2)
    obj = ProgressiveDistillation(ProgressiveDistillationConfig(student_steps=2, teacher_substeps=2))
    with pytest.raises(ElfkitError, match="distill"):
        obj.loss_from_draws(perturbed(1), batch, x0, draws, target=TARGET)


def test_config_shares_elf_defaults() -> None:
    from elfkit.components.objectives import ElfObjectiveConfig
    pd, elf = ProgressiveDistillationConfig(), ElfObjectiveConfig()
    for k in ("decoder_prob", "decoder_noise_scale", "decoder_p_mean", "decoder_p_std", "self_cond_prob",
              "guidance_min", "guidance_max"):
        assert getattr(pd, k) == getattr(elf, k)
    with pytest.raises(ValueError):
        ProgressiveDistillationConfig(decoder_prob=1.5)
