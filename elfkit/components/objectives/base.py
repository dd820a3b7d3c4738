"""What every objective returns, and the small helpers objectives share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


@dataclass
class ObjectiveOutput:
    """``loss``: the scalar to backpropagate (one micro-batch, already normalised).
    ``logs``: plain floats for the progress bar and ``train_log.jsonl`` (e.g. ``l2``, ``ce``)."""

    loss: Tensor
    logs: dict[str, float] = field(default_factory=dict)


def unwrap(module: nn.Module) -> nn.Module:
    """The bare backbone behind a DDP wrapper (FSDP2 and ``module.compile()`` keep identity)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


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
