"""The small helpers objectives share; :class:`ObjectiveOutput` (re-exported here) lives in
:mod:`elfkit.records` with the other records the contracts name."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from elfkit.records import ObjectiveOutput

if TYPE_CHECKING:
    from elfkit.contracts import BackboneModule

__all__ = ["ObjectiveOutput", "deterministic", "is_sharded", "unwrap"]


def unwrap(module: nn.Module) -> BackboneModule:
    """The bare backbone behind a DDP wrapper (FSDP2 and ``module.compile()`` keep identity).

    Objectives receive the backbone as an ``nn.Module`` (it may be wrapped); what is behind
    the wrapper is the recipe's backbone, which the type checker cannot see through DDP.
    """
    return cast("BackboneModule", module.module if isinstance(module, DistributedDataParallel) else module)


def is_sharded(module: nn.Module) -> bool:
    """FSDP2 module: every forward is a collective, so all ranks must make the same calls."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(module, FSDPModule)


@contextmanager
def deterministic(module: nn.Module) -> Iterator[None]:
    """Eval mode for the no-grad helper passes (the reference runs them with dropout off)."""
    was_training = module.training
    if was_training:
        module.train(False)
    try:
        yield
    finally:
        if was_training:
            module.train(True)
