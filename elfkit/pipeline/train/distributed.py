"""Process-group setup and model wrapping for ``torchrun`` (DDP or FSDP2).

A plain ``python`` run is one process on one device: nothing here does anything. Under
``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment) the trainer joins a
process group (nccl on CUDA, gloo on CPU), wraps the backbone in DDP or FSDP2
``fully_shard`` and uses the helpers below for rank-0-only work and stop agreement.
"""

from __future__ import annotations

import os
import socket
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeGuard

import torch
import torch.distributed as dist
from torch import nn

from elfkit.errors import DistributedSetupError, RecipeError

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    created_group: bool   # we called init_process_group (and so destroy it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | torch.device | None = None) -> DistInfo:
    """Read the torchrun environment, join the process group if needed, pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = False
    if world > 1 and not dist.is_initialized():
        check_master_addr()
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        created = True
    return DistInfo(rank, world, local_rank, dev, created)


def check_master_addr() -> None:
    """Refuse a ``MASTER_ADDR`` this machine cannot resolve, before joining the group.

    ``init_process_group`` would otherwise retry the connection until its 30-minute timeout
    without a word about why (a launch script that exports a host name from another network,
    a typo, a CI host missing from ``/etc/hosts``).
    """
    addr = os.environ.get("MASTER_ADDR")
    if not addr:
        return
    try:
        socket.getaddrinfo(addr, None)
    except (socket.gaierror, UnicodeError) as e:
        raise DistributedSetupError(
            f"MASTER_ADDR={addr!r} does not resolve on this machine ({e}), so the process group could "
            "never connect. Set MASTER_ADDR to an address every rank can reach (127.0.0.1 on one machine); "
            "under torchrun, pass --local-addr 127.0.0.1 on one machine or --rdzv-endpoint HOST:PORT "
            "across machines."
        ) from e


def teardown(info: DistInfo) -> None:
    if info.created_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if it is True on any (so all ranks stop and checkpoint together)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_across(values: list[float], info: DistInfo) -> list[float]:
    """Average a few scalars over ranks (for logging only)."""
    if not info.distributed or not values:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / info.world_size).tolist()


def broadcast_parameters(module: nn.Module, info: DistInfo) -> None:
    """Make every rank start from rank 0's weights (FSDP2 shards whatever each rank holds)."""
    if not info.distributed:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def wrap(module: nn.Module, parallel: str, info: DistInfo) -> nn.Module:
    """DDP (``auto``/``ddp``) or FSDP2 ``fully_shard`` (``fsdp``); identity on one process.

    FSDP2 shards each entry of ``module.blocks`` (if any) and then the root; the decoder head
    method ``decode_logits`` is registered so calling it outside ``forward`` gathers the
    root's parameters first.
    """
    if not info.distributed:
        return module
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
        broadcast_parameters(module, info)
        for block in getattr(module, "blocks", []):
            fully_shard(block)
        fully_shard(module)
        if hasattr(module, "decode_logits"):
            register_fsdp_forward_method(module, "decode_logits")
        return module
    from torch.nn.parallel import DistributedDataParallel
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def is_fsdp(module: nn.Module) -> TypeGuard[FSDPModule]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(module, FSDPModule)


def grad_sync(model: nn.Module, sync: bool) -> AbstractContextManager:
    """Skip the gradient all-reduce on accumulation micro-steps (DDP ``no_sync``; FSDP2 flag)."""
    no_sync = getattr(model, "no_sync", None)   # DDP
    if no_sync is not None and not sync:
        return no_sync()
    if is_fsdp(model):
        model.set_requires_gradient_sync(sync)
    return nullcontext()


def check_parallel(parallel: str, implementation: str, info: DistInfo) -> None:
    if info.distributed and parallel == "fsdp" and implementation == "torch":
        raise RecipeError("train.muon.implementation: 'torch' (torch.optim.Muon) cannot orthogonalise FSDP2 "
                          "shards; use implementation: reference with train.parallel: fsdp, or parallel: ddp")
