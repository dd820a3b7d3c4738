"""Sampler error on the closed-form Gaussian toy (exact x̂) at a few step counts.

Two numbers per sampler and step count, on uniform grids:

- *path error*: RMS distance of the final z from the exact flow map ``μ + (σ/s)·z₀`` (the
  ODE's answer; meaningful for deterministic samplers only, "–" for stochastic ones);
- *std error*: max over dimensions of |std/σ − 1| of 8192 samples (what a stochastic sampler
  gets right or wrong about the data distribution).

::

    python benchmarks/sampler_toy_error.py                 # 8, 16, 32 steps
    python benchmarks/sampler_toy_error.py --steps 8 16 32 64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elfkit.contracts import Sampler  # noqa: E402
from elfkit.registry import default_registry  # noqa: E402
from elfkit.testing import GaussianToy  # noqa: E402
from elfkit.testing.sampler_kit import convergence_errors  # noqa: E402

CONFIGS: list[tuple[str, str, dict[str, float]]] = [
    ("euler", "euler", {}),
    ("sde γ=0", "sde", {"gamma": 0.0}),
    ("sde γ=1.5 (ELF)", "sde", {"gamma": 1.5}),
    ("dpmpp-2m", "dpmpp-2m", {}),
    ("dpmpp-2m η=1", "dpmpp-2m", {"eta": 1.0}),
    ("heun (plugin)", "heun", {}),
]


def std_error(sampler: Sampler, steps: int, toy: GaussianToy) -> float:
    z0 = toy.prior((4096, 2), torch.Generator().manual_seed(0))
    out = sampler(toy.denoiser(), z0, torch.linspace(0, 1, steps + 1, dtype=torch.float64),
                  noise_scale=toy.noise_scale, generator=torch.Generator().manual_seed(1))
    return toy.moment_errors(out.z)[1].abs().max().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32])
    a = p.parse_args()
    toy, registry = GaussianToy(), default_registry()
    print(f"Gaussian toy μ={toy.mean} σ={toy.std}, s={toy.noise_scale}; uniform grids; "
          "path error (RMS vs exact flow) | max |std/σ − 1|")
    print(f"{'sampler':20s}{'NFE/step':>9s}" + "".join(f"{f'{k} steps':>22s}" for k in a.steps))
    for label, name, kw in CONFIGS:
        if name not in registry.names("sampler"):
            print(f"{label:20s}  (not installed)")
            continue
        cells = []
        for k in a.steps:
            sampler = registry.build("sampler", name, {"steps": k, **kw})
            deterministic = getattr(sampler, "order", None) is not None
            path = f"{convergence_errors(sampler, steps=[k])[0]:.4f}" if deterministic else "–"
            cells.append(f"{path} | {std_error(sampler, k, toy):.4f}")
        ratio = registry.build("sampler", name, {"steps": 8, **kw}).nfe(8) / 8
        print(f"{label:20s}{ratio:>9.2f}" + "".join(f"{cell:>22s}" for cell in cells))


if __name__ == "__main__":
    main()
