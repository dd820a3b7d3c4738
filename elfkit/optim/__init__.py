"""Optimisers for elfkit: ELF's Muon + Nesterov-Adam, the warmup-constant schedule, EMA."""

from elfkit.optim.build import (
    IN_OUT_PARAMETERS,
    ParamPartition,
    WarmupConstant,
    build_optimizer,
    build_scheduler,
    clip_grad_norm,
    partition_parameters,
    resolve_lr,
)
from elfkit.optim.ema import EMA
from elfkit.optim.muon import MuonAdam, muon_scale, nesterov_momentum, newton_schulz

__all__ = [
    "EMA", "IN_OUT_PARAMETERS", "MuonAdam", "ParamPartition", "WarmupConstant", "build_optimizer",
    "build_scheduler", "clip_grad_norm", "muon_scale", "nesterov_momentum", "newton_schulz",
    "partition_parameters", "resolve_lr",
]
