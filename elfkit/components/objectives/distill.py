"""Progressive distillation (PD) of an ELF model, as the official ``distillation`` branch trains it.

A frozen teacher (the trained model's EMA weights; the *same* original teacher in every round)
shows a student how to cover a span Δ = 1/``student_steps`` of the flow in one Euler step.
Per micro-batch (reference: elf-official-code.md §8 and the branch's ``distill_train_step``)::

    routing, decoder rows, guidance scale w, time draw: exactly as ELF (ElfObjective.draw)
    PD rows:  t_s = u·max(1−Δ, 1e-6), u ~ the recipe's time distribution;  t_t = t_s + Δ
              z_s = t_s·x0 + (1−t_s)·s·ε  (condition positions clean)
              x̂_u = teacher([z_s, sc0], t_s, w);  sc = x̂_u (cond restored) if use_sc else sc0
              teacher sub-grid t_s < t_s + Δ·sort(u_1..u_{K−1}) < t_t, u_k ~ the time distribution
              K teacher Euler steps from z_s (first with sc, later with the previous x̂; cond pinned) → z_T
              target x = z_s + (1−t_s)/(t_t−t_s)·(z_T − z_s)   (one student Euler step lands on z_T)
                  K = 1: the teacher's direct x̂;  span < 1e-3: the last teacher x̂
              PD loss = token-mean of mean_D (x̂_student − target)²     (x space, no 1/(1−t)² weight)
    decoder rows (t=1, mode on): per-example token-mean CE, as ELF's branch
    loss = mean over examples of (PD loss or CE)

Differences from :class:`~elfkit.components.objectives.elf.ElfObjective`, all the branch's:
per-example token means averaged over examples (ELF: one shared token denominator); no guided
target (the teacher, run at the student's w, already is the guided model); the decoder rows'
self-cond slot holds the clean condition (ELF: all zero; the same on unconditional data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from elfkit.components.objectives.base import ObjectiveOutput, unwrap
from elfkit.components.objectives.elf import ElfDraws, ElfObjective, ElfObjectiveConfig
from elfkit.config import ComponentConfig
from elfkit.contracts import Target, TimeDistribution
from elfkit.core.flow import FlowPath, expand_time, x_to_v
from elfkit.errors import ElfkitError
from elfkit.records import Batch, ModelCapabilities

if TYPE_CHECKING:
    from elfkit.contracts import BackboneModule

SPAN_FLOOR = 1e-6
"""Clamp on the span t_t − t_s in the inversion, and on 1 − Δ when scaling t_s (reference)."""
SPAN_FALLBACK = 1e-3
"""Spans below this take the teacher's last x̂ as the target (reference)."""


def _elf_field(name: str) -> Any:
    """ELF's own field (default, bounds, docstring): the decoder branch, self-cond and guidance
    settings are ELF's, declared once in :class:`ElfObjectiveConfig`."""
    return ElfObjectiveConfig.model_fields[name]


class ProgressiveDistillationConfig(ComponentConfig):
    student_steps: int = Field(default=16, ge=1)
    """Student sampling steps this round: the student learns spans Δ = 1/student_steps."""
    teacher_substeps: int = Field(default=4, ge=1)
    """K teacher Euler sub-steps per student span (official round 1: 16 steps, K=4; Δ/K = 1/64)."""
    decoder_prob: float = _elf_field("decoder_prob")
    decoder_noise_scale: float = _elf_field("decoder_noise_scale")
    decoder_p_mean: float = _elf_field("decoder_p_mean")
    decoder_p_std: float = _elf_field("decoder_p_std")
    self_cond_prob: float = _elf_field("self_cond_prob")
    guidance_min: float = _elf_field("guidance_min")
    guidance_max: float = _elf_field("guidance_max")

    @model_validator(mode="after")
    def _check(self) -> ProgressiveDistillationConfig:
        if self.guidance_max < self.guidance_min:
            raise ValueError(f"guidance_max ({self.guidance_max}) < guidance_min ({self.guidance_min})")
        return self

    @property
    def step_size(self) -> float:
        """Δ, the span one student step covers."""
        return 1.0 / self.student_steps

    def elf(self) -> ElfObjectiveConfig:
        """The ELF settings these share (for ELF's draws: routing per example, as the torch branch)."""
        shared = {k: getattr(self, k) for k in ("decoder_prob", "decoder_noise_scale", "decoder_p_mean",
                                                  "decoder_p_std", "self_cond_prob", "guidance_min", "guidance_max")}
        return ElfObjectiveConfig(**shared, branch_mixing="per-example")


@dataclass
class PDDraws:
    """ELF's draws (``elf.t`` is the unscaled student time u) plus the teacher sub-grid's
    unsorted draws ``sub`` (B, K−1) in (0, 1)."""

    elf: ElfDraws
    sub: Tensor


def student_times(u: Tensor, is_dec: Tensor, step_size: float) -> tuple[Tensor, Tensor]:
    """(t_s, t_t): PD rows ``u·max(1−Δ, 1e-6)`` and that + Δ; decoder rows (1, 1)."""
    t_s = torch.where(is_dec, torch.ones_like(u), u * max(1.0 - step_size, SPAN_FLOOR))
    t_t = torch.where(is_dec, torch.ones_like(u), t_s + step_size)
    return t_s, t_t


def teacher_grid(t_s: Tensor, t_t: Tensor, sub: Tensor) -> Tensor:
    """(B, K+1) sub-step times: t_s, t_s + (t_t−t_s)·sort(sub), t_t."""
    inner = t_s[:, None] + (t_t - t_s)[:, None] * torch.sort(sub, dim=-1).values
    return torch.cat([t_s[:, None], inner, t_t[:, None]], dim=-1)


def one_step_target(z_s: Tensor, z_end: Tensor, t_s: Tensor, t_t: Tensor, x_last: Tensor) -> Tensor:
    """The x whose one Euler step from (z_s, t_s) lands on ``z_end`` at t_t:
    ``z_s + (1−t_s)/(t_t−t_s)·(z_end − z_s)``; spans below 1e-3 take ``x_last`` (reference).

    Closed form: on the straight path z_t = t·x + (1−t)·s·ε, the exact end point gives back x.
    """
    span = t_t - t_s
    ratio = expand_time((1 - t_s) / span.clamp_min(SPAN_FLOOR), z_s)
    target = z_s + ratio * (z_end - z_s)
    tiny = (span < SPAN_FALLBACK).view(-1, *([1] * (z_s.dim() - 1)))
    return torch.where(tiny, x_last, target)


class ProgressiveDistillation:
    """The PD loss. Holds the frozen teacher (:meth:`attach_teacher`) and its round's Δ and K."""

    def __init__(self, cfg: ProgressiveDistillationConfig) -> None:
        self.cfg = cfg
        self.teacher: BackboneModule | None = None
        self._elf = ElfObjective(cfg.elf())     # ELF's draws, with this objective's ELF settings

    def attach_teacher(self, teacher: nn.Module) -> None:
        """Freeze ``teacher`` (eval mode, no gradients) and use it for every target."""
        teacher.eval().requires_grad_(False)
        self.teacher = unwrap(teacher)

    def _teacher(self, device: torch.device) -> BackboneModule:
        if self.teacher is None:
            raise ElfkitError("the progressive-distillation objective has no teacher: run it through a recipe's "
                              "`distill:` section (elfkit run), or call objective.attach_teacher(model)")
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        return self.teacher

    # ------------------------------------------------------------------ random draws
    def draw(self, x0: Tensor, capabilities: ModelCapabilities, *, time: TimeDistribution,
             generator: torch.Generator | None) -> PDDraws:
        """ELF's draws (routing, u, noises, self-cond coin, w), then the K−1 teacher sub-grid draws."""
        elf = self._elf.draw(x0, capabilities, time=time, generator=generator)
        k = self.cfg.teacher_substeps
        b = x0.shape[0]
        sub = time.sample(b * (k - 1), generator, x0.device).to(x0.dtype).view(b, k - 1)
        return PDDraws(elf, sub)

    def __call__(self, backbone: nn.Module, batch: Batch, x0: Tensor, *, target: Target, time: TimeDistribution,
                 generator: torch.Generator | None = None, path: FlowPath | None = None) -> ObjectiveOutput:
        draws = self.draw(x0, unwrap(backbone).capabilities, time=time, generator=generator)
        return self.loss_from_draws(backbone, batch, x0, draws, target=target, path=path)

    # ------------------------------------------------------------------ the loss
    def loss_from_draws(self, backbone: nn.Module, batch: Batch, x0: Tensor, draws: PDDraws, *,
                        target: Target, path: FlowPath | None = None) -> ObjectiveOutput:
        """The loss for given draws (tests pass fixed tensors here)."""
        if path is not None:
            target = target.bind(path)
        cfg, d = self.cfg, draws.elf
        raw = unwrap(backbone)
        caps = raw.capabilities
        teacher = self._teacher(x0.device)
        cond = batch.cond_mask.to(torch.bool)[..., None]                       # (B,S,1)
        mask = batch.loss_mask.to(torch.float32)                                # (B,S)
        is_dec = d.is_dec
        dec, den = is_dec.nonzero(as_tuple=True)[0], (~is_dec).nonzero(as_tuple=True)[0]
        t_s, t_t = student_times(d.t, is_dec, cfg.step_size)
        z_s = torch.where(cond, x0, target.path.interpolate(x0, d.noise, t_s))
        sc0 = torch.where(cond, x0, torch.zeros_like(x0))
        w = d.w

        # --- the teacher's target on the PD rows (no grad, frozen EMA weights, the student's w)
        sc_slot = sc0.clone() if caps.self_conditioning else None
        x_tgt = torch.zeros_like(x0[den])
        if den.numel():
            with torch.no_grad():
                x_tgt, sc_pd = self._teacher_target(teacher, target, z_s[den], t_s[den], t_t[den],
                                                    None if w is None else w[den], x0[den], cond[den], sc0[den],
                                                    d.use_sc[den], draws.sub[den])
            if sc_slot is not None and sc_pd is not None:
                sc_slot[den] = sc_pd

        # --- one grad forward: decoder rows as ELF's branch (dz, t=1, mode on)
        z_in, t_in = z_s.clone(), t_s.clone()
        if dec.numel():
            lam = d.dec_lambda
            z_in[dec] = lam * x0[dec] + (1 - lam) * cfg.decoder_noise_scale * d.dec_noise
        out = backbone(z_in, t_in, self_cond=sc_slot, guidance=w, decode=is_dec if caps.decoder_head else None)

        n_tok = mask.sum(-1).clamp_min(1.0)                                     # (B,)
        per_example = torch.zeros(x0.shape[0], dtype=torch.float32, device=x0.device)
        x_hat = target.predict(out.out[den].float(), z_s[den], t_s[den]).x
        pd = ((x_hat - x_tgt.float()).pow(2).mean(-1) * mask[den]).sum(-1) / n_tok[den]
        per_example = per_example.index_put((den,), pd)
        if caps.decoder_head:
            m = mask[dec]
            keep = m > 0
            # always call the head (possibly on zero rows) so DDP sees every parameter used
            logits = raw.decode_logits(out.hidden[dec][keep]).float()
            ce_tok = torch.zeros_like(m)
            ce_tok[keep] = F.cross_entropy(logits, batch.input_ids[dec][keep], reduction="none")
            per_example = per_example.index_put((dec,), (ce_tok * m).sum(-1) / n_tok[dec])
        loss = per_example.mean()

        stats = torch.stack([loss.detach(), pd.detach().sum() / max(den.numel(), 1),
                             per_example.detach()[dec].sum() / max(dec.numel(), 1), is_dec.float().mean(),
                             (~is_dec & d.use_sc).float().mean()]).tolist()
        logs = {"loss": stats[0], "pd": stats[1], "ce": stats[2], "decoder_frac": stats[3], "self_cond_frac": stats[4]}
        return ObjectiveOutput(loss=loss, logs=logs)

    def _teacher_target(self, teacher: BackboneModule, target: Target, z_s: Tensor, t_s: Tensor, t_t: Tensor,
                        w: Tensor | None, x0: Tensor, cond: Tensor, sc0: Tensor, use_sc: Tensor,
                        sub: Tensor) -> tuple[Tensor, Tensor | None]:
        """(x target, self-cond slot) for PD rows: the teacher's no-self-cond x̂ seeds the slot
        (kept where ``use_sc``), then K Euler sub-steps from z_s to t_t, inverted to one step."""
        caps = teacher.capabilities

        def x_hat(z: Tensor, t: Tensor, sc: Tensor | None) -> Tensor:
            out = teacher(z, t, self_cond=sc, guidance=w, decode=False).out.float()
            return target.predict(out, z.float(), t).x.to(z.dtype)

        sc: Tensor | None = None
        if caps.self_conditioning:
            x_u = torch.where(cond, x0, x_hat(z_s, t_s, sc0))
            sc = torch.where(use_sc[:, None, None], x_u, sc0)
        k = self.cfg.teacher_substeps
        if k == 1:
            return x_hat(z_s, t_s, sc), sc
        grid = teacher_grid(t_s, t_t, sub)
        z, sc_k, x_last = z_s, sc, z_s
        for i in range(k):
            t_i, t_next = grid[:, i], grid[:, i + 1]
            x_last = x_hat(z, t_i, sc_k)
            v = x_to_v(x_last.float(), z.float(), t_i, target.path.t_eps)     # the teacher's Euler step
            z = torch.where(cond, x0, (z.float() + expand_time(t_next - t_i, z) * v).to(z.dtype))
            if caps.self_conditioning:
                sc_k = torch.where(cond, x0, x_last)
        return one_step_target(z_s, z, t_s, t_t, x_last), sc

