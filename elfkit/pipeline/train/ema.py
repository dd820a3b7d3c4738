"""Exponential moving average of the weights (ELF: decay 0.9999, used for sampling).

Reference semantics: the shadow starts as a copy of the *initial* parameters (step 0), has
no warmup and no bias correction, and is updated ``ema ← d·ema + (1−d)·θ`` only after real
optimiser steps (never on gradient-accumulation micro-steps).
"""

# torch._foreach_* are documented torch functions (multi-tensor ops) that torch's stubs do not export:
# pyright: reportPrivateImportUsage=false

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


class EMA:
    """Shadow copies of a module's trainable parameters.

    Usage::

        ema = EMA(backbone, decay=0.9999)
        ...; optimizer.step(); ema.update(backbone)
        torch.save(ema.state_dict(backbone), ...)   # full state dict with EMA weights
    """

    def __init__(self, module: nn.Module, decay: float = 0.9999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.num_updates = 0
        with torch.no_grad():
            self.shadow: dict[str, Tensor] = {
                name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}

    def _pairs(self, module: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        params = dict(module.named_parameters())
        missing = [n for n in self.shadow if n not in params]
        if missing:
            raise KeyError(f"EMA tracks parameters the module lacks: {missing[:3]}")
        names = list(self.shadow)
        return [self.shadow[n] for n in names], [params[n].detach() for n in names]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """``ema ← d·ema + (1−d)·θ`` for every tracked parameter (call after optimizer.step)."""
        shadow, params = self._pairs(module)
        if shadow:
            torch._foreach_lerp_(shadow, params, 1.0 - self.decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Overwrite the module's parameters with the EMA weights (e.g. before sampling)."""
        shadow, params = self._pairs(module)
        torch._foreach_copy_(params, shadow)

    def state_dict(self, module: nn.Module | None = None, *, full: bool = True) -> dict[str, Any]:
        """A ``module.state_dict()``-shaped dict with EMA weights (buffers taken from ``module``).

        Without ``module`` only the tracked parameters are returned. DTensor shards (FSDP2)
        are gathered to full tensors when ``full`` (a collective: call on every rank).
        """
        def gather(t: Tensor) -> Tensor:
            full_tensor = getattr(t, "full_tensor", None) if full else None   # DTensor (FSDP2)
            return full_tensor() if full_tensor is not None else t
        if module is None:
            return {n: gather(t).detach().clone() for n, t in self.shadow.items()}
        out = {}
        for name, value in module.state_dict().items():
            out[name] = gather(self.shadow[name] if name in self.shadow else value).detach().clone()
        return out

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load EMA weights (full tensors; copied into local shards for DTensor shadows)."""
        for name, t in self.shadow.items():
            if name not in state:
                raise KeyError(f"EMA state lacks parameter '{name}'")
            src = state[name]
            if hasattr(t, "full_tensor"):  # DTensor shadow: keep this rank's slice
                from torch.distributed.tensor import distribute_tensor
                shard = cast("DTensor", t)   # hasattr above is the DTensor test (DTensor is imported for typing only)
                src = distribute_tensor(src.to(t.device, t.dtype), shard.device_mesh, shard.placements,
                                        src_data_rank=None)
                t.copy_(src)
            else:
                t.copy_(src.to(t.device, t.dtype))
