"""Token agreement of few-step samplers with a 256-step reference, on a trained checkpoint.

Every sampler starts from the same z₀ (one seed) on the same *uniform* grid; agreement is the
fraction of token positions whose argmax equals the reference's (euler, ``--ref-steps``
intervals). Deterministic samplers integrate the same ODE, so agreement measures integration
error where it matters: the decoded text. ``old-euler`` integrates the clamped velocity into
t = 1 (elfkit before the x̂ fix), for comparison::

    python benchmarks/sampler_agreement.py runs/qs-base            # a run directory or a checkpoint
    python benchmarks/sampler_agreement.py runs/qs-base --steps 16 32 64 --num 64 --ref-steps 256
    python benchmarks/sampler_agreement.py runs/qs-base --where 0.5 0.9 0.95   # which times cost agreement

``--where A …`` splits the time axis at each A: Euler runs the reference's fine spacing on one
side of A and the coarse spacing (``--steps``' last value) on the other, and the script prints
the agreement of both mixtures with the fine reference. The disagreement of the coarse grid
is then located: the part a coarse [0, A] costs, and the part a coarse [A, 1] costs.

The model is loaded through :func:`elfkit.pipeline.trained.load_trained` (the path ``elfkit
sample`` uses), so the script does not depend on the checkpoint's layout (a run in the old
pickle format needs ``elfkit checkpoint convert`` first, like ``elfkit sample``).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elfkit.components.backbones import EagerRunner  # noqa: E402
from elfkit.components.samplers.base import SamplerConfig  # noqa: E402
from elfkit.components.time import UniformConfig, UniformTime  # noqa: E402
from elfkit.contracts import Sampler, TimeDistribution  # noqa: E402
from elfkit.core.distributions import uniform_grid  # noqa: E402
from elfkit.generation import generate  # noqa: E402
from elfkit.pipeline.trained import load_trained  # noqa: E402
from tests.fixtures.broken_samplers import ClampedLastStep as OldEuler  # noqa: E402  (elfkit's Euler before the x̂ fix)


class GivenGrid(UniformTime):
    """Uniform time whose sampling grid is one fixed grid (the split grids of ``--where``); it
    draws nothing, so z₀ is the same draw as on the uniform grid."""

    def __init__(self, grid: Tensor) -> None:
        super().__init__(UniformConfig())
        self.fixed = grid

    def grid(self, steps: int, generator: torch.Generator | None = None,
             device: torch.device | str = "cpu") -> Tensor:
        return self.fixed.to(device)


def split_grid(fine: int, coarse: int, split: float, *, fine_first: bool) -> Tensor:
    """A grid with ``fine`` uniform intervals' spacing on one side of ``split`` and ``coarse``
    intervals' spacing on the other (both grids keep their own points; ``split`` should be a
    point of both)."""
    f, c = uniform_grid(fine), uniform_grid(coarse)
    below, above = (f, c) if fine_first else (c, f)
    eps = 1e-6
    return torch.cat([below[below <= split + eps], above[above > split + eps]])


SAMPLERS: dict[str, tuple[str, dict[str, float]]] = {
    "euler": ("euler", {}),
    "sde γ=0": ("sde", {"gamma": 0.0}),
    "dpmpp-2m": ("dpmpp-2m", {}),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run directory (its last checkpoint) or a checkpoint")
    p.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--ref-steps", type=int, default=256)
    p.add_argument("--num", type=int, default=64, help="sequences (one batch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-old", action="store_true", help="skip the pre-fix Euler")
    p.add_argument("--where", type=float, nargs="+", metavar="A",
                   help="locate Euler's disagreement: split the time axis at each A (see above)")
    p.add_argument("--self-reference", action="store_true",
                   help="compare each sampler with itself at --ref-steps (its own convergence) instead of "
                        "with Euler's; the pre-fix Euler is then skipped")
    a = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ckpt = a.run
    trained = load_trained(ckpt)
    r, c = trained.recipe, trained.components
    registry = c.registry
    guidance = registry.build("guidance", r.sample.guidance.name, r.sample.guidance.config)
    uniform = registry.build("time", "uniform", {})
    runner = EagerRunner(c.backbone)
    length, pad = r.data.config.max_length, c.embedder.tokenizer.pad_id

    def tokens(sampler: Sampler, grid_time: TimeDistribution = uniform) -> Tensor:
        out = generate(runner, c.target, sampler, grid_time, guidance, num=a.num, length=length,
                       generator=torch.Generator().manual_seed(a.seed))
        return out.token_ids                                                     # (B, S)

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    print(f"checkpoint {ckpt} (step {trained.step}), recipe {r.data.name} / {r.backbone.name}, "
          f"guidance {r.sample.guidance.name}, {a.num}×{length} tokens, seed {a.seed}, uniform grid; CPU {cpu}")
    t0 = time.perf_counter()
    ref = tokens(registry.build("sampler", "euler", {"steps": a.ref_steps}))
    print(f"reference: {'each sampler itself' if a.self_reference else 'euler'}, {a.ref_steps} steps "
          f"({time.perf_counter() - t0:.0f} s); {(ref != pad).float().mean().item():.1%} of Euler's reference "
          "positions are not padding")
    if a.where:
        coarse = a.steps[-1]
        print(f"euler, {coarse} (coarse) and {a.ref_steps} (fine) uniform intervals, split at A:")
        whole = (tokens(registry.build("sampler", "euler", {"steps": coarse})) == ref).float().mean().item()
        print(f"{'coarse everywhere':34s}{whole:.3f}")
        print(f"{'A':>6s}{'fine on [0, A], coarse after':>32s}{'coarse on [0, A], fine after':>32s}")
        for split in a.where:
            cells = []
            for fine_first in (True, False):
                grid = split_grid(a.ref_steps, coarse, split, fine_first=fine_first)
                sampler = registry.build("sampler", "euler", {"steps": grid.numel() - 1})
                cells.append((tokens(sampler, GivenGrid(grid)) == ref).float().mean().item())
            print(f"{split:6.3f}{cells[0]:32.3f}{cells[1]:32.3f}", flush=True)
        return

    def builder(name: str, kw: dict[str, float]) -> Callable[[int], Sampler]:
        return lambda k: registry.build("sampler", name, {"steps": k, **kw})
    rows = [(label, builder(name, kw)) for label, (name, kw) in SAMPLERS.items()]
    if not (a.no_old or a.self_reference):
        rows.append(("old euler (clamped into t=1)", lambda k: OldEuler(SamplerConfig(steps=k))))
    print(f"{'sampler':30s}" + "".join(f"{f'{k} steps':>22s}" for k in a.steps))
    print(f"{'':30s}" + "".join(f"{'all / non-pad':>22s}" for _ in a.steps))
    for label, make in rows:
        own = tokens(make(a.ref_steps)) if a.self_reference and label != "euler" else ref
        text = own != pad
        cells = []
        for k in a.steps:
            same = tokens(make(k)) == own
            cells.append(f"{same.float().mean().item():.3f} / {same[text].float().mean().item():.3f}")
        print(f"{label:30s}" + "".join(f"{cell:>22s}" for cell in cells), flush=True)


if __name__ == "__main__":
    main()
