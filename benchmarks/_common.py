"""Helpers shared by the benchmark scripts: the model options, the host description, the matmul peak."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--preset/--depth/--width/--heads/--latent-dim/--vocab/--decoder-hidden/--batch/--seq."""
    p.add_argument("--preset", choices=["ELF-B", "ELF-M", "ELF-L"], default=None)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=None, help="default: width/64")
    p.add_argument("--latent-dim", type=int, default=384)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--decoder-hidden", type=int, default=512, help="width of the decoder head (ELF: 512)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)


def cpu_name() -> str:
    """``model name`` from /proc/cpuinfo (what ``lscpu`` prints), else the platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def describe_host(device: torch.device) -> str:
    """One line naming the device: CPU model, AMX / AVX512-BF16, threads and load (figures depend on all four)."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda), torch {torch.__version__}"
    flags = cpu_flags()
    amx = "AMX-BF16" if "amx_bf16" in flags else "no AMX"
    bf16 = ", AVX512-BF16" if "avx512_bf16" in flags else ""
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (f"{cpu_name()} ({amx}{bf16}), {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"load average {load}, torch {torch.__version__}")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def add_clock_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: perf_counter; cpu: this process's CPU time (process_time), which on a shared "
                        "machine leaves out the time spent waiting for a core (use with --threads 1)")


def clock_fn(name: str) -> Callable[[], float]:
    return time.process_time if name == "cpu" else time.perf_counter


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 3,
                clock: Callable[[], float] = time.perf_counter) -> float:
    """FLOP/s of an n×n @ n×n matmul in ``dtype`` on this device now (median of ``reps`` after one warm-up).

    The denominator of the benchmarks' "fraction of peak": what this machine's BLAS reaches at
    this precision and thread count, measured in the same run as the step it is compared to.
    """
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device).to(dtype)
    b = torch.randn(n, n, generator=g, device=device).to(dtype)
    _ = a @ b                                   # warm-up
    sync(device)
    times = []
    for _ in range(reps):
        t0 = clock()
        _ = a @ b
        sync(device)
        times.append(clock() - t0)
    return 2 * n ** 3 / statistics.median(times)
