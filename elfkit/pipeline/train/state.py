"""The trainer's state beyond the weights: data position, RNG streams, and the full-state
gather/restore of model and optimizer that a :class:`~elfkit.pipeline.checkpoint.Checkpoint` holds.

Model and optimizer state go through ``torch.distributed.checkpoint.state_dict`` with
``full_state_dict=True``: one code path for a single process, DDP and FSDP2 (FSDP2 shards are
gathered to full tensors on rank 0), so a checkpoint written by any of them resumes under
any other and ``model`` is always a plain backbone ``state_dict``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.optim import Optimizer

from elfkit.errors import CheckpointError
from elfkit.pipeline.checkpoint import Checkpoint


@dataclass
class Progress:
    """Where the run is: optimiser steps done and the data position of this rank."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0   # micro-batches of this rank consumed in ``epoch``
    loss: float | None = None


def seed_global_streams(seed: int) -> None:
    """Seed torch's, Python's and numpy's global RNGs from one number.

    elfkit draws from its own generators; the global streams are seeded too so that any draw
    from them (dropout, a library's shuffle) is reproducible, and so that the RNG state a
    checkpoint stores is the same in every process, which makes the checkpoint file itself
    byte-identical between two runs of the same recipe.
    """
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG stream as tensors and plain values (a checkpoint stores nothing else)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": plain_numpy_state(np.random.get_state(legacy=True))}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def plain_numpy_state(state: Any) -> tuple[str, list[int], int, int, float]:
    """numpy's legacy RNG state tuple with its key array as a list of ints (also for older checkpoints)."""
    name, key, pos, has_gauss, gauss = state
    return str(name), [int(k) for k in key], int(pos), int(has_gauss), float(gauss)


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, key, pos, has_gauss, gauss = plain_numpy_state(state["numpy"])
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class ParamView(nn.Module):
    """``model``'s parameters under their own names plus ``extra`` modules' under their prefix.

    torch's optimizer state dict names each stepped parameter through the module it is given
    and fails on any it cannot find. An optimiser that also steps an untied trainable embedder
    gets this view (never run forward): backbone names are unchanged and a parameter shared
    with the backbone keeps the backbone's name. Not for FSDP2 (the trainer refuses that case).
    """

    def __init__(self, model: nn.Module, extra: dict[str, nn.Module]) -> None:
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, p in model.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for prefix, module in extra.items():
            self.add_module(prefix, module)


def gather_training_state(model: nn.Module, optimizer: Optimizer, *,
                          optim_model: nn.Module | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Full model and optimizer state dicts (a collective under FSDP2: call on every rank).

    ``optim_model`` (default ``model``) names the optimizer's parameters, e.g. a :class:`ParamView`."""
    return (get_model_state_dict(model, options=_FULL),
            get_optimizer_state_dict(optim_model or model, optimizer, options=_FULL))


def restore_training_state(model: nn.Module, optimizer: Optimizer, checkpoint: Checkpoint, *,
                           optim_model: nn.Module | None = None) -> None:
    """Load model and optimizer from a full-state checkpoint (every rank reads the file)."""
    if checkpoint.optimizer is None:
        raise CheckpointError("the checkpoint holds weights but no optimizer state; training cannot resume from it")
    opts = StateDictOptions(full_state_dict=True)
    # torch annotates this read-only argument as an invariant dict[str, ValueType], which rejects dict[str, Tensor]
    set_model_state_dict(model, checkpoint.model, options=opts)  # pyright: ignore[reportArgumentType]
    set_optimizer_state_dict(optim_model or model, optimizer, checkpoint.optimizer, options=opts)
