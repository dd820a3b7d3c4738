"""Token agreement of few-step samplers with a 256-step reference, on a trained checkpoint.

Every sampler starts from the same z₀ (one seed) on the same *uniform* grid; agreement is the
fraction of token positions whose argmax equals the reference's (euler, ``--ref-steps``
intervals). Deterministic samplers integrate the same ODE, so agreement measures integration
error where it matters: the decoded text. ``old-euler`` integrates the clamped velocity into
t = 1 (elfkit before the x̂ fix), for comparison::

    python benchmarks/sampler_agreement.py runs/qs-base            # a run directory or a checkpoint
    python benchmarks/sampler_agreement.py runs/qs-base --steps 16 32 64 --num 64 --ref-steps 256

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
from elfkit.contracts import Sampler  # noqa: E402
from elfkit.generation import generate  # noqa: E402
from elfkit.pipeline.trained import load_trained  # noqa: E402
from tests.fixtures.broken_samplers import ClampedLastStep as OldEuler  # noqa: E402  (elfkit's Euler before the x̂ fix)

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

    def tokens(sampler: Sampler) -> Tensor:
        out = generate(runner, c.target, sampler, uniform, guidance, num=a.num, length=length,
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
