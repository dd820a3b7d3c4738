"""ELF's training objective: flow-matching denoiser loss + decoder-branch CE in one network.

Per micro-batch (reference: ELF §4, Appendix B; the torch port's per-example mixing)::

    t ~ time.sample;  z = t·x0 + (1−t)·s·ε;  z[cond] = x0[cond]
    label-dropped rows: x0[cond] = z[cond] = 0
    decoder rows (prob 0.2):  dz = λ·x0 + (1−λ)·s_dec·ε',  λ = sigmoid(N(0.8, 0.8)) per token,
                              run at t=1, mode on, self-cond slot all zero; CE on the logits (fp32)
    denoiser rows:            use_sc ~ Bernoulli(0.5), w with 1+w log-uniform on [1.5, 6]
        x̂_u = sg(net([z, sc0], t, w))            sc0 = 0 except condition positions = x0
        sc  = x̂_u (cond restored) if use_sc else sc0
        x̂_c = sg(net([z, x̂_u], t, w))
        target = v* + use_sc·(1−1/w)·(v(x̂_c) − v(x̂_u))      (in the target's loss space)
        L2 = mean_D (v̂ − target)²
    loss = (Σ CE·mask_dec + Σ L2·mask_den) / Σ loss_mask      (one shared token denominator)

Speed, with identical values: the two no-grad passes run only on denoiser rows with
use_sc=1 (~40% of the batch), decoder logits are computed only for decoder rows at their
loss positions, and both branches share one grad forward. ``execution: reference``
reproduces the official port's cost structure (full-batch helper passes, logits for every
row in every pass) for benchmarks and parity tests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from elfkit.components.objectives.base import ObjectiveOutput, deterministic, is_sharded, unwrap
from elfkit.components.objectives.guided import guided_target, log_uniform_guidance
from elfkit.config import ComponentConfig
from elfkit.contracts import Target, TimeDistribution
from elfkit.core.flow import FlowPath
from elfkit.records import Batch, ModelCapabilities, Prediction

if TYPE_CHECKING:
    from elfkit.contracts import BackboneModule


class ElfObjectiveConfig(ComponentConfig):
    decoder_prob: float = Field(default=0.2, ge=0, le=1)
    """Probability that an example (or a whole step, see branch_mixing) trains the decoder CE branch."""
    decoder_noise_scale: float = Field(default=5.0, ge=0)
    """s_dec in dz = λ·x0 + (1−λ)·s_dec·ε' (ELF: 5.0 for OWT, 1.0 for De-En/XSum)."""
    decoder_p_mean: float = 0.8
    """Mean of the normal behind the per-token λ = sigmoid(N(mean, std)) of the decoder corruption."""
    decoder_p_std: float = Field(default=0.8, ge=0)
    """Std of that normal."""
    self_cond_prob: float = Field(default=0.5, ge=0, le=1)
    """Probability that a denoiser example is self-conditioned on the model's own no-grad x̂."""
    guidance_min: float = Field(default=0.5, ge=0)
    """Self-cond guidance scale w: 1+w is log-uniform on [1+guidance_min, 1+guidance_max]."""
    guidance_max: float = Field(default=5.0, ge=0)
    """Upper end of that range."""
    guided_target: bool = True
    """Train the self-cond guidance into the target: v* + use_sc·(1−1/w)·sg(v(x̂_c) − v(x̂_u))."""
    branch_mixing: Literal["per-example", "per-step"] = "per-example"
    """'per-example': each row picks its branch (the authors' torch port). 'per-step': one draw
    per micro-batch and rank picks the branch for the whole batch (the JAX reference)."""
    execution: Literal["fast", "reference"] = "fast"
    """'fast': helper passes only on the rows that need them, logits only for decoder rows.
    'reference': the official port's cost structure (same values, ~2–4× slower); for benchmarks."""


@dataclass
class ElfDraws:
    """Every random number one micro-batch needs; drawn once, used by both executions.

    t (B,); noise (B,S,D) unit ε₀; is_dec (B,) bool; dec_lambda (n_dec,S,1) and dec_noise
    (n_dec,S,D) unit ε' for the decoder rows in ascending row order; use_sc (B,) bool;
    w (B,) or None when the backbone has no guidance tokens.
    """

    t: Tensor
    noise: Tensor
    is_dec: Tensor
    dec_lambda: Tensor
    dec_noise: Tensor
    use_sc: Tensor
    w: Tensor | None


def _rows(mask: Tensor) -> Tensor:
    return mask.nonzero(as_tuple=True)[0]


@dataclass(frozen=True)
class _HelperInputs:
    """What the no-grad self-conditioning passes read, for all rows or a subset (:meth:`take`)."""

    raw: BackboneModule   # the bare backbone (never DDP-wrapped: these passes are not synchronised)
    z: Tensor             # (B,S,D) interpolant, condition positions clean
    t: Tensor             # (B,)
    w: Tensor | None      # (B,) guidance scale, None without guidance tokens
    x0: Tensor            # (B,S,D) clean latents (label-dropped conditions zeroed)
    cond: Tensor          # (B,S,1) bool, condition positions
    sc0: Tensor           # (B,S,D) the empty self-cond slot: the clean condition, zeros elsewhere
    target: Target        # bound to the path
    guided: bool          # also move the loss target by the guided term

    def take(self, rows: Tensor) -> _HelperInputs:
        return replace(self, z=self.z[rows], t=self.t[rows], w=None if self.w is None else self.w[rows],
                       x0=self.x0[rows], cond=self.cond[rows], sc0=self.sc0[rows])

    def predict(self, sc: Tensor, logits: bool = False) -> Prediction:
        """One helper forward with ``sc`` in the self-cond slot; ``logits``: also run the decoder head,
        as the official port does whenever it passes a mode gate (reference execution)."""
        out = self.raw(self.z, self.t, self_cond=sc, guidance=self.w, decode=False)
        if logits:
            self.raw.decode_logits(out.hidden)
        return self.target.predict(out.out.float(), self.z, self.t)

    def guide(self, tgt: Tensor, pred_c: Prediction, pred_u: Prediction, use_sc: Tensor) -> Tensor:
        assert self.w is not None, "guided targets need guidance tokens (w)"
        return guided_target(tgt, self.target.in_loss_space(pred_c).float(),
                             self.target.in_loss_space(pred_u).float(), use_sc, self.w)


class ElfObjective:
    """The ELF loss. Stateless apart from its config; call once per micro-batch."""

    def __init__(self, cfg: ElfObjectiveConfig) -> None:
        if cfg.guidance_max < cfg.guidance_min:
            raise ValueError(f"guidance_max ({cfg.guidance_max}) < guidance_min ({cfg.guidance_min})")
        self.cfg = cfg

    # ------------------------------------------------------------------ random draws
    def draw(self, x0: Tensor, capabilities: ModelCapabilities, *, time: TimeDistribution,
             generator: torch.Generator | None) -> ElfDraws:
        """Draw t, noises, branch choice, self-cond mask and guidance scale for a (B,S,D) batch."""
        cfg, (b, s, d), dev = self.cfg, x0.shape, x0.device
        t = time.sample(b, generator, dev).to(x0.dtype)
        noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
        p_dec = cfg.decoder_prob if capabilities.decoder_head else 0.0
        if cfg.branch_mixing == "per-step":
            is_dec = (torch.rand(1, generator=generator, device=dev) < p_dec).expand(b).clone()
        else:
            is_dec = torch.rand(b, generator=generator, device=dev) < p_dec
        n_dec = int(is_dec.sum())
        lam = torch.sigmoid(torch.randn(n_dec, s, 1, generator=generator, device=dev, dtype=x0.dtype)
                            * cfg.decoder_p_std + cfg.decoder_p_mean)
        dec_noise = torch.randn(n_dec, s, d, generator=generator, device=dev, dtype=x0.dtype)
        p_sc = cfg.self_cond_prob if capabilities.self_conditioning else 0.0
        use_sc = torch.rand(b, generator=generator, device=dev) < p_sc
        w = (log_uniform_guidance(b, cfg.guidance_min, cfg.guidance_max, generator, dev).to(x0.dtype)
             if capabilities.guidance_tokens else None)
        return ElfDraws(t, noise, is_dec, lam, dec_noise, use_sc, w)

    def __call__(self, backbone: nn.Module, batch: Batch, x0: Tensor, *, target: Target, time: TimeDistribution,
                 generator: torch.Generator | None = None, path: FlowPath | None = None) -> ObjectiveOutput:
        """Loss of one micro-batch. ``x0`` (B,S,D) clean latents; ``backbone`` may be DDP-wrapped;
        ``target`` is bound to the flow path (``path``, if given, binds or rebinds it)."""
        draws = self.draw(x0, unwrap(backbone).capabilities, time=time, generator=generator)
        return self.loss_from_draws(backbone, batch, x0, draws, target=target, path=path)

    # ------------------------------------------------------------------ the loss
    def loss_from_draws(self, backbone: nn.Module, batch: Batch, x0: Tensor, draws: ElfDraws, *,
                        target: Target, path: FlowPath | None = None) -> ObjectiveOutput:
        """The loss for given draws (tests pass fixed tensors here). ``path`` binds an unbound
        ``target`` (or overrides the bound path), for callers that hold the two separately."""
        if path is not None:
            target = target.bind(path)
        raw = unwrap(backbone)
        caps = raw.capabilities
        cfg = self.cfg
        t, w = draws.t, draws.w
        cond = batch.cond_mask.to(torch.bool)[..., None]                   # (B,S,1)
        mask = batch.loss_mask.to(torch.float32)                            # (B,S)

        # --- the interpolant, clean (or dropped) condition positions
        z = torch.where(cond, x0, target.path.interpolate(x0, draws.noise, t))   # (B,S,D)
        if batch.label_drop is not None and bool(batch.label_drop.any()):
            dropped = cond & batch.label_drop.to(torch.bool)[:, None, None]
            z = z.masked_fill(dropped, 0.0)
            x0 = x0.masked_fill(dropped, 0.0)
        tgt = target.in_loss_space(target.truth(x0, draws.noise, z, t)).float()   # v* (B,S,D)

        is_dec = draws.is_dec
        dec, den = _rows(is_dec), _rows(~is_dec)
        sc_rows = _rows(~is_dec & draws.use_sc)
        guided = bool(cfg.guided_target and caps.self_conditioning and caps.guidance_tokens
                      and cfg.self_cond_prob > 0)

        # --- self-conditioning slot and guided target (no grad, current weights, same w)
        sc_slot = None
        if caps.self_conditioning:
            helper = _HelperInputs(raw=raw, z=z, t=t, w=w, x0=x0, cond=cond,
                                   sc0=torch.where(cond, x0, torch.zeros_like(x0)), target=target, guided=guided)
            if cfg.execution == "fast":
                sc_slot, tgt = self._self_cond_fast(helper, tgt, sc_rows)
            else:
                sc_slot, tgt = self._self_cond_reference(helper, tgt, ~is_dec & draws.use_sc)

        # --- one grad forward: decoder rows get dz, t=1, zero self-cond slot, mode on
        z_in, t_in = z.clone(), t.clone()
        if dec.numel():
            x0_dec = x0[dec]
            z_in[dec] = draws.dec_lambda * x0_dec + (1 - draws.dec_lambda) * cfg.decoder_noise_scale * draws.dec_noise
            t_in[dec] = 1.0
            if sc_slot is not None:
                sc_slot[dec] = 0.0
        gate = is_dec if caps.decoder_head else None
        out = backbone(z_in, t_in, self_cond=sc_slot, guidance=w, decode=gate)

        # --- denoiser rows: L2 in the target's loss space
        pred = target.predict(out.out[den].float(), z[den], t[den])
        l2_sum = (target.loss(pred, tgt[den]) * mask[den]).sum()
        # --- decoder rows: CE in fp32, logits only where the loss is taken
        ce_sum = l2_sum.new_zeros(())
        if caps.decoder_head:
            ce_sum = self._ce_sum(raw, out.hidden, batch.input_ids, mask, is_dec, dec)
        n_tok = mask.sum()
        loss = (ce_sum + l2_sum) / n_tok.clamp_min(1.0)

        n_dec_tok, n_den_tok = mask[dec].sum(), mask[den].sum()
        stats = torch.stack([loss.detach(), l2_sum.detach() / n_den_tok.clamp_min(1.0),
                             ce_sum.detach() / n_dec_tok.clamp_min(1.0), is_dec.float().mean(),
                             (~is_dec & draws.use_sc).float().mean()]).tolist()
        logs = {"loss": stats[0], "l2": stats[1], "ce": stats[2], "decoder_frac": stats[3], "self_cond_frac": stats[4]}
        return ObjectiveOutput(loss=loss, logs=logs)

    def _ce_sum(self, raw: BackboneModule, hidden: Tensor, ids: Tensor, mask: Tensor, is_dec: Tensor,
                dec: Tensor) -> Tensor:
        if self.cfg.execution == "reference":   # logits for every row, masked afterwards
            logits = raw.decode_logits(hidden).float()                               # (B,S,V)
            ce = F.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="none").view_as(mask)
            return (ce * mask * is_dec[:, None].float()).sum()
        m = mask[dec]                                                                 # (n_dec,S)
        keep = m > 0
        # Always call the head (possibly on zero rows) so DDP sees every parameter used.
        logits = raw.decode_logits(hidden[dec][keep]).float()                         # (N,V)
        ce = F.cross_entropy(logits, ids[dec][keep], reduction="none")
        return (ce * m[keep]).sum()

    @staticmethod
    def _self_cond_fast(inp: _HelperInputs, tgt: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Helper passes on the self-conditioned denoiser ``rows`` only: (self-cond slot, loss target)."""
        sc_slot = inp.sc0.clone()
        if rows.numel() == 0 and not is_sharded(inp.raw):   # FSDP2: every rank runs the (empty) pass too
            return sc_slot, tgt
        sub = inp.take(rows)
        with torch.no_grad(), deterministic(inp.raw):
            pred_u = sub.predict(sub.sc0)
            x_u = torch.where(sub.cond, sub.x0, pred_u.x.to(sub.x0.dtype))
            sc_slot[rows] = x_u
            if inp.guided:
                pred_c = sub.predict(x_u)
                tgt = tgt.clone()
                tgt[rows] = sub.guide(tgt[rows], pred_c, pred_u, torch.ones_like(sub.t))
        return sc_slot, tgt

    @staticmethod
    def _self_cond_reference(inp: _HelperInputs, tgt: Tensor, use: Tensor) -> tuple[Tensor, Tensor]:
        """The official port's helper passes: every row, logits included, masked by ``use`` (B,) afterwards."""
        with torch.no_grad(), deterministic(inp.raw):
            pred_u = inp.predict(inp.sc0, logits=True)
            x_u = torch.where(inp.cond, inp.x0, pred_u.x.to(inp.x0.dtype))
            sc_slot = torch.where(use[:, None, None], x_u, inp.sc0)
            if inp.guided:
                pred_c = inp.predict(x_u, logits=True)
                tgt = inp.guide(tgt, pred_c, pred_u, use)
        return sc_slot, tgt
