"""benchmarks/gpu_check.py runs end to end on a CPU at its tiny size and prints its one table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_and_prints_one_table() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu",
                           "--skip-tests"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout.split("GPU check —", 1)[1]
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and "check" not in ln]
    assert [r.split("|")[1].strip() for r in rows] == ["training throughput", "sampling latency",
                                                        "sampling latency", "export parity"]
    assert "tokens/s" in rows[0] and "MFU" in rows[0]
    assert "1×32" in rows[1] and "4×32" in rows[2]
    assert "passed" in rows[3] and "FAILED" not in table
    assert "all stages passed" in table


@pytest.mark.slow
def test_gpu_check_refuses_cuda_without_a_gpu() -> None:
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--device cpu" in proc.stderr
