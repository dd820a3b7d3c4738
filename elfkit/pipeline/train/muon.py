"""Muon for 2-D parameters plus Nesterov-Adam for the rest, in one torch optimizer.

ELF trains with ``optax.contrib.muon`` defaults (reference ``utils/muon_utils.py`` in the
torch port reproduces them). The update rules, per optimiser step k = 1, 2, ...:

Muon (every 2-D parameter)::

    m  ← β·m + (1−β)·g                                   # EMA of gradients, β = 0.95
    u  = β·m/(1−β^{k+1}) + (1−β)·g/(1−β^k)               # Nesterov with bias correction
    o  = NS5(u)                                          # fp32; rows ≤ cols; u/(‖u‖_F + 1e-8)
    θ ← θ − lr·(sqrt(max(1, fan_out/fan_in))·o + wd·θ)

Nesterov-Adam (biases, norm scales, learned prefix tokens; optax ``adamw(nesterov=True)``)::

    m ← β1·m + (1−β1)·g;   v ← β2·v + (1−β2)·g²
    m̂ = β1·m/(1−β1^{k+1}) + (1−β1)·g/(1−β1^k);   v̂ = v/(1−β2^k)
    θ ← θ − lr·(m̂/(sqrt(v̂) + ε) + wd·θ)

``fan_out/fan_in`` is layout-aware: torch ``Linear`` weights are (out, in), while ELF's bare
decoder tensors ``proj_kernel``/``unembed_kernel`` are (in, out) like the JAX kernels the
formula was written for (param groups carry ``in_out=True`` for those).

``implementation="torch"`` routes the Muon groups through :class:`torch.optim.Muon` instead
(no bias correction, bf16 Newton–Schulz, shape[0]/shape[1] scaling): see
docs/optimisation.md for the exact differences.
"""

# torch._foreach_* are documented torch functions (multi-tensor ops) that torch's stubs do not export:
# pyright: reportPrivateImportUsage=false

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

try:  # FSDP2 shards parameters as DTensors; Muon needs the full matrix
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - torch without distributed
    DTensor = None  # type: ignore[assignment,misc]
    distribute_tensor = None  # type: ignore[assignment]


# ----------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------
def _wide_unit_norm(u: Tensor, eps: float, dtype: torch.dtype, caller: str) -> tuple[Tensor, bool]:
    """``u`` oriented with rows ≤ cols and divided by ``‖u‖_F + eps`` in fp32 (every singular value ≤ 1),
    cast to ``dtype``; also whether it was transposed. The shared start of both Newton–Schulz forms."""
    if u.dim() != 2:
        raise ValueError(f"{caller} expects a matrix, got shape {tuple(u.shape)}")
    x = u.float()
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    return (x / (torch.linalg.matrix_norm(x) + eps)).to(dtype), transposed


def newton_schulz(u: Tensor, steps: int = 5, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  eps: float = 1e-8, dtype: torch.dtype = torch.float32) -> Tensor:
    """Approximate the orthogonal polar factor of a matrix with the quintic Newton–Schulz map.

    Runs in ``dtype`` (fp32 = optax semantics; bf16 = Keller Jordan's original Muon, several
    times faster on CPUs with bf16 matmuls), on the orientation with rows ≤ cols, after
    dividing by ``‖u‖_F + eps`` (in fp32) so every singular value is ≤ 1. Returns ``dtype``.
    """
    x, transposed = _wide_unit_norm(u, eps, dtype, "newton_schulz")
    a, b, c = coefficients
    for _ in range(steps):
        gram = x @ x.T                                  # (r, r), r = min(rows, cols)
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.T if transposed else x


def newton_schulz_gram(u: Tensor, steps: int = 5, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                       eps: float = 1e-8, dtype: torch.dtype = torch.float32) -> Tensor:
    """:func:`newton_schulz`'s polynomial evaluated through the small Gram matrix (same maths, fewer FLOPs).

    Each step is ``X ← M·X`` with ``M = a·I + b·A + c·A²`` and ``A = X·Xᵀ`` (r×r, r = min(rows, cols)).
    Since every ``M`` is a polynomial in ``A₀ = X₀·X₀ᵀ``, ``A`` updates as ``M·A·M`` and the
    steps compose into one r×r matrix ``Q``: the result is ``Q·X₀``. Only ``A₀`` and ``Q·X₀``
    touch the long side (2·r²·n each instead of 4·r²·n per step), so a wide matrix such as
    the r×V unembedding costs ~5× less; the r×r work runs in fp32. Rounding differs from the
    step-by-step map: on well-conditioned matrices both are within ~1e-6 of float64, but the
    fp32 Gram matrix blurs directions with singular values below ~1e-3 (≤ 5e-4 per entry;
    bf16 direct: ~1e-2), so it is opt-in (``train.muon.ns_method: gram``). ``dtype`` is the
    precision of the two long matmuls.
    """
    x, transposed = _wide_unit_norm(u, eps, dtype, "newton_schulz_gram")
    gram = (x @ x.T).float()                            # (r, r)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    q = eye
    a, b, c = coefficients
    for _ in range(steps):
        m = a * eye + b * gram + c * (gram @ gram)
        q = m @ q
        gram = m @ gram @ m
    out = q.to(dtype) @ x
    return out.T if transposed else out


def muon_scale(shape: torch.Size | tuple[int, ...], in_out: bool) -> float:
    """``sqrt(max(1, fan_out/fan_in))``: (out, in) for torch Linear, (in, out) when ``in_out``."""
    fan_out, fan_in = (shape[1], shape[0]) if in_out else (shape[0], shape[1])
    return math.sqrt(max(1.0, fan_out / fan_in))


def nesterov_momentum(m: Tensor, g: Tensor, beta: float, k: int) -> Tensor:
    """optax's bias-corrected Nesterov mix ``β·m/(1−β^{k+1}) + (1−β)·g/(1−β^k)`` (m already updated)."""
    return m * (beta / (1 - beta ** (k + 1))) + g * ((1 - beta) / (1 - beta ** k))


def _full(t: Tensor) -> Tensor:
    return t.full_tensor() if DTensor is not None and isinstance(t, DTensor) else t


def _like(full: Tensor, ref: Tensor) -> Tensor:
    """Re-shard a full tensor like the DTensor ``ref`` (each rank keeps its own slice, no comms)."""
    if DTensor is not None and distribute_tensor is not None and isinstance(ref, DTensor):   # imported together
        return distribute_tensor(full, ref.device_mesh, ref.placements, src_data_rank=None)
    return full


# ----------------------------------------------------------------------------------------
# The optimizer
# ----------------------------------------------------------------------------------------
class MuonAdam(Optimizer):
    """One optimizer, two rules: each param group has ``algo`` = 'muon' or 'adam'.

    Build it with :func:`elfkit.pipeline.train.optimizers.build_optimizer` (which partitions a model by ndim);
    groups may set ``in_out=True`` for (in, out)-stored matrices. State lives in
    ``self.state`` keyed by parameter, so ``state_dict``/``load_state_dict`` and
    ``torch.distributed.checkpoint`` work unchanged.
    """

    def __init__(self, params: Iterable[dict[str, Any]], lr: float = 1e-3, *, momentum: float = 0.95,
                 ns_steps: int = 5, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, implementation: Literal["reference", "torch"] = "reference",
                 ns_dtype: Literal["fp32", "bf16"] = "fp32", ns_method: Literal["direct", "gram"] = "direct") -> None:
        if implementation not in ("reference", "torch"):
            raise ValueError(f"implementation must be 'reference' or 'torch', got {implementation!r}")
        if ns_dtype not in ("fp32", "bf16"):
            raise ValueError(f"ns_dtype must be 'fp32' or 'bf16', got {ns_dtype!r}")
        if ns_method not in ("direct", "gram"):
            raise ValueError(f"ns_method must be 'direct' or 'gram', got {ns_method!r}")
        self.ns_dtype = torch.bfloat16 if ns_dtype == "bf16" else torch.float32
        self.ns_method = ns_method
        defaults = dict(lr=lr, momentum=momentum, ns_steps=ns_steps, betas=betas, eps=eps,
                        weight_decay=weight_decay, algo="adam", in_out=False,
                        # keys torch.optim.Muon reads from its groups (implementation="torch")
                        nesterov=True, ns_coefficients=NS_COEFFICIENTS, adjust_lr_fn=None)
        super().__init__(list(params), defaults)
        self.implementation = implementation
        for group in self.param_groups:
            if group["algo"] not in ("muon", "adam"):
                raise ValueError(f"param group algo must be 'muon' or 'adam', got {group['algo']!r}")
            if group["algo"] == "muon" and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon param groups may only hold 2-D parameters")
        self._torch_muon: Optimizer | None = None
        if implementation == "torch":
            self._torch_muon = self._make_torch_muon()

    def _make_torch_muon(self) -> Optimizer | None:
        """torch.optim.Muon sharing this optimizer's Muon groups and state (one state_dict)."""
        groups = [g for g in self.param_groups if g["algo"] == "muon"]
        if not groups or not hasattr(torch.optim, "Muon"):
            if groups:
                raise RuntimeError("train.muon.implementation='torch' needs torch>=2.9 (torch.optim.Muon)")
            return None
        tm = torch.optim.Muon([p for g in groups for p in g["params"]], lr=groups[0]["lr"], weight_decay=0.0)
        tm.param_groups = groups       # same dicts: the LR schedule and state_dict see one optimizer
        tm.state = self.state
        return tm

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["algo"] == "adam":
                self._adam_group(group)
            elif self._torch_muon is None:
                self._muon_group(group)
        if self._torch_muon is not None:
            self._torch_muon.step()
        return loss

    def _muon_group(self, group: dict[str, Any]) -> None:
        beta, lr, wd = group["momentum"], group["lr"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            g = p.grad
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            k = int(state["step"].item())
            m = state["momentum_buffer"]
            m.lerp_(g, 1 - beta)                                       # m ← β·m + (1−β)·g
            u = nesterov_momentum(m, g, beta, k)
            o = self._orthogonalise(_full(u), group)
            o = _like(o.to(p.dtype), p)
            if wd:
                p.mul_(1 - lr * wd)
            p.add_(o, alpha=-lr * muon_scale(p.shape, group["in_out"]))

    def _orthogonalise(self, u: Tensor, group: dict[str, Any]) -> Tensor:
        """Newton–Schulz of the Nesterov mix; ``gram`` only where it is cheaper (long side ≥ 2× short)."""
        gram = self.ns_method == "gram" and max(u.shape) >= 2 * min(u.shape)
        fn = newton_schulz_gram if gram else newton_schulz
        return fn(u, group["ns_steps"], group["ns_coefficients"], group["eps"], self.ns_dtype)

    def _adam_group(self, group: dict[str, Any]) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        (b1, b2), eps, lr, wd = group["betas"], group["eps"], group["lr"], group["weight_decay"]
        ms, vs, grads = [], [], []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            ms.append(state["exp_avg"])
            vs.append(state["exp_avg_sq"])
            grads.append(p.grad)
        k = int(self.state[params[0]]["step"].item())   # the group steps together
        torch._foreach_lerp_(ms, grads, 1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
        # m̂ = β1·m/(1−β1^{k+1}) + (1−β1)·g/(1−β1^k);  denom = sqrt(v/(1−β2^k)) + ε
        m_hat = torch._foreach_mul(ms, b1 / (1 - b1 ** (k + 1)))
        torch._foreach_add_(m_hat, torch._foreach_mul(grads, (1 - b1) / (1 - b1 ** k)))
        denom = torch._foreach_sqrt(torch._foreach_mul(vs, 1 / (1 - b2 ** k)))
        torch._foreach_add_(denom, eps)
        if wd:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_addcdiv_(params, m_hat, denom, value=-lr)
