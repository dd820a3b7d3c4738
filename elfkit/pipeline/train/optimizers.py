"""Optimizer, LR schedule and gradient clipping from a recipe's ``train`` section.

ELF: Muon on every 2-D parameter and Nesterov-Adam on the rest, both at the same
``lr = blr·batch·grad_accum/256``; linear warmup from 0, then constant; global-norm clip 1.0
before the optimizer; no weight decay.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from elfkit.errors import RecipeError
from elfkit.pipeline.train.muon import MuonAdam
from elfkit.recipe.schema import TrainSection

IN_OUT_PARAMETERS = frozenset({"proj_kernel", "unembed_kernel"})
"""Names (last dotted component) of ELF's bare decoder tensors stored (in, out) rather than (out, in)."""


@dataclass(frozen=True)
class ParamPartition:
    """Which parameters go to which rule (names as in ``named_parameters``)."""

    muon: list[tuple[str, nn.Parameter]]          # 2-D, stored (out, in)
    muon_in_out: list[tuple[str, nn.Parameter]]   # 2-D, stored (in, out)
    adam: list[tuple[str, nn.Parameter]]          # everything else


def resolve_lr(train: TrainSection) -> float:
    """``train.lr`` if given, else ``blr·batch_size·grad_accum/256`` (ELF: 1e-3·512/256 = 2e-3)."""
    if train.lr is not None:
        return float(train.lr)
    return train.blr * train.batch_size * train.grad_accum / 256


def _in_out_names(model: nn.Module) -> frozenset[str]:
    # A backbone may declare its own (in, out) tensors; ELF's decoder head names are the default.
    declared = getattr(model, "in_out_parameters", None)
    return frozenset(declared) if declared is not None else IN_OUT_PARAMETERS


def partition_parameters(model: nn.Module,
                         extra: Iterable[tuple[str, nn.Parameter]] = ()) -> ParamPartition:
    """Split trainable parameters by rank: every 2-D tensor → Muon, the rest → Adam.

    Frozen parameters (``requires_grad=False``, e.g. a frozen embedder) are never included,
    so they hold no optimiser state. ``extra`` adds parameters of other trainable modules;
    each parameter is taken once, by identity, under its first name (a ``learned-table``
    tied to the unembedding is both ``embedder.weight`` and the backbone's ``unembed_table``:
    it is stepped once, with the backbone's name and layout).
    """
    in_out = _in_out_names(model)
    muon, muon_io, adam = [], [], []
    seen: set[int] = set()
    for name, p in [*model.named_parameters(), *extra]:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() == 2:
            (muon_io if name.rsplit(".", 1)[-1] in in_out else muon).append((name, p))
        else:
            adam.append((name, p))
    return ParamPartition(muon, muon_io, adam)


def build_optimizer(model: nn.Module, train: TrainSection, *,
                    extra: Iterable[tuple[str, nn.Parameter]] = ()) -> Optimizer:
    """The recipe's optimizer over ``model``'s trainable parameters (plus ``extra``).

    ``optimizer: muon`` → :class:`MuonAdam` (ELF); ``optimizer: adamw`` → ``torch.optim.AdamW``
    with ``adam_betas``/``adam_eps``/``weight_decay`` on every parameter.
    """
    lr = resolve_lr(train)
    part = partition_parameters(model, extra)
    if train.optimizer == "adamw":
        params = [p for _, p in part.muon + part.muon_in_out + part.adam]
        return torch.optim.AdamW(params, lr=lr, betas=train.adam_betas, eps=train.adam_eps,
                                 weight_decay=train.weight_decay)
    groups = []
    if part.muon:
        groups.append({"params": [p for _, p in part.muon], "algo": "muon", "in_out": False})
    if part.muon_in_out:
        groups.append({"params": [p for _, p in part.muon_in_out], "algo": "muon", "in_out": True})
    if part.adam:
        groups.append({"params": [p for _, p in part.adam], "algo": "adam"})
    if not groups:
        raise RecipeError("the model has no trainable parameters (every parameter has requires_grad=False)")
    return MuonAdam(groups, lr=lr, momentum=train.muon.momentum, ns_steps=train.muon.ns_steps,
                    betas=train.adam_betas, eps=train.adam_eps, weight_decay=train.weight_decay,
                    implementation=train.muon.implementation, ns_dtype=train.muon.ns_dtype,
                    ns_method=train.muon.ns_method)


class WarmupConstant:
    """LR multiplier: ``step/warmup`` for step < warmup, then 1 (optax linear→constant).

    ``step`` counts optimiser updates already applied, so the first update has LR 0 when
    warming up, exactly as optax evaluates its schedule at the pre-update count.
    A class (not a lambda) so ``LambdaLR.state_dict`` can save it.
    """

    def __init__(self, warmup_steps: int) -> None:
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step: int) -> float:
        if self.warmup_steps <= 0:
            return 1.0
        return min(1.0, step / self.warmup_steps)


def build_scheduler(optimizer: Optimizer, train: TrainSection) -> LambdaLR:
    """Linear warmup from 0 over ``train.warmup_steps``, then constant. Step it once per update."""
    return LambdaLR(optimizer, WarmupConstant(train.warmup_steps))


def clip_grad_norm(params: Iterable[Tensor], max_norm: float | None) -> Tensor:
    """optax ``clip_by_global_norm``: scale every grad by ``min(1, max_norm/‖g‖)``; returns ‖g‖.

    Unlike ``torch.nn.utils.clip_grad_norm_`` there is no 1e-6 in the denominator. Works for
    FSDP2 DTensor gradients (the norm is reduced across shards).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm(grads, 2.0)   # a replicated DTensor under FSDP2
    if max_norm is not None:
        coef = torch.clamp(max_norm / norm, max=1.0)      # norm 0 → inf → 1
        # a documented torch function that torch's stubs do not export
        torch._foreach_mul_(grads, coef)  # pyright: ignore[reportPrivateImportUsage]
    full_tensor = getattr(norm, "full_tensor", None)   # DTensor (FSDP2)
    return full_tensor() if full_tensor is not None else norm
