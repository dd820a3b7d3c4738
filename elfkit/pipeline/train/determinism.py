"""What decides whether a run repeats bit for bit, recorded in the run's ``train_log.jsonl``.

Same recipe, same seed, same machine and software → the same weights, samples and metrics:
every random draw comes from the recipe's seed, and CPU kernels are deterministic for a fixed
thread count. On CUDA some kernels accumulate with atomics (index_add/scatter-add in embedding
and gather backward passes, some attention backward kernels), so their sums vary run to run
unless ``train.deterministic`` asks torch for deterministic versions (docs/reproducibility.md).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """With ``enabled``, torch uses deterministic kernels (and raises where none exists) inside
    the block; the process's previous flags come back afterwards. cuBLAS needs its workspace
    setting before its first use; it is set here unless already set."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1], before[2]


def environment_facts(device: torch.device, world_size: int) -> dict[str, Any]:
    """Software, hardware and flags a bit-for-bit comparison depends on."""
    facts: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "world_size": world_size,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        facts["cuda"] = torch.version.cuda
        facts["cublas_workspace_config"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    return facts
