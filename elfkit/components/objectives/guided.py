"""ELF's trained-in self-conditioning guidance: the guided target and the scale it is trained at.

Both are pure tensor functions; :class:`~elfkit.components.objectives.elf.ElfObjective`
draws w with :func:`log_uniform_guidance` and moves the target with :func:`guided_target`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def log_uniform_guidance(n: int, w_min: float, w_max: float,
                         generator: torch.Generator | None = None,
                         device: torch.device | str = "cpu") -> Tensor:
    """Self-conditioning guidance scale drawn so that ``1+w`` is log-uniform on [1+w_min, 1+w_max].

    Reference: ``w = (1+w_min)·((1+w_max)/(1+w_min))^u − 1``, u ~ U(0,1). The range is the
    objective's config (``guidance_min``/``guidance_max``; ELF 0.5 and 5.0), not a default here.
    """
    u = torch.rand(n, generator=generator, device=device)
    return (1 + w_min) * ((1 + w_max) / (1 + w_min)) ** u - 1


def guided_target(target_value: Tensor, pred_cond: Tensor, pred_uncond: Tensor,
                  use_sc: Tensor, w: Tensor) -> Tensor:
    """ELF's trained-in self-conditioning guidance: ``tgt + use_sc·(1−1/w)·(c − u)``.

    All tensors (B,S,D) except ``use_sc`` and ``w`` (B,). The caller stops gradients.
    """
    coef = (use_sc.to(target_value.dtype) * (1 - 1 / w.to(target_value.dtype)))
    return target_value + coef.view(-1, 1, 1) * (pred_cond - pred_uncond)
