"""Sampling throughput: samples/s and tokens/s of ELF generation (32 SDE steps + 1 decode).

Runs :func:`elfkit.generation.generate` (the same path ``elfkit sample`` uses) with the
SDE sampler (γ=1.5), the trained-in self-conditioning guidance (w=3, one forward per step)
and the random logit-normal grid, on a randomly initialised ELF backbone (weights do not
change the cost). Defaults are read from the components' configs::

    python benchmarks/sample_throughput.py --depth 4 --width 256 --latent-dim 384 --vocab 30522 \\
        --batch 32 --seq 128 --steps 32
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_model_args  # noqa: E402

from elfkit.components.backbones import EagerRunner  # noqa: E402
from elfkit.components.guidance import SelfCondConfig  # noqa: E402
from elfkit.components.samplers import SdeConfig  # noqa: E402
from elfkit.core.flow import FlowPath  # noqa: E402
from elfkit.generation import generate  # noqa: E402
from elfkit.registry import build_registry  # noqa: E402

SDE, SELF_COND = SdeConfig(), SelfCondConfig()   # ELF's sampling defaults, declared in the components


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add_model_args(p)
    p.add_argument("--steps", type=int, default=SDE.steps, help="sampler grid intervals")
    p.add_argument("--gamma", type=float, default=SDE.gamma)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--repeats", type=int, default=3, help="timed batches")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (1 on a shared machine)")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    reg = build_registry(entry_points=False)
    cfg = {"latent_dim": args.latent_dim, "vocab_size": args.vocab, "max_length": args.seq}
    if args.preset:
        cfg["preset"] = args.preset
    else:
        cfg.update(preset=None, depth=args.depth, width=args.width, heads=args.heads or max(1, args.width // 64))
    net = reg.build("backbone", "elf", cfg).to(device).eval()
    if args.compile:
        net.compile()
    runner = EagerRunner(net, torch.bfloat16 if args.precision == "bf16" else None)
    target = reg.build("target", "x").bind(FlowPath())            # ELF: x-prediction on its path
    sampler = reg.build("sampler", "sde", {"steps": args.steps, "gamma": args.gamma})
    grid = reg.build("time", "logit-normal")
    guidance = reg.build("guidance", "self-cond", SELF_COND)
    gen = torch.Generator(device=device).manual_seed(0)

    def once() -> int:
        res = generate(runner, target, sampler, grid, guidance, num=args.batch, length=args.seq,
                       generator=gen, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return res.nfe

    for _ in range(args.warmup):
        once()
    t0 = time.perf_counter()
    nfe = 0
    for _ in range(args.repeats):
        nfe = once()
    dt = (time.perf_counter() - t0) / args.repeats
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"device        {name} ({device.type}, {torch.get_num_threads()} threads)")
    print(f"torch         {torch.__version__}")
    print(f"model         depth {net.cfg.depth} width {net.cfg.width} D {net.cfg.latent_dim} V {net.cfg.vocab_size}")
    print(f"run           batch {args.batch}×{args.seq}, {args.steps}-step SDE γ={args.gamma}, "
          f"self-cond w={SELF_COND.scale:g}, "
          f"{args.precision}: {nfe} denoiser forwards + 1 decode per batch")
    print(f"batch time    {dt * 1e3:.1f} ms")
    print(f"samples/s     {args.batch / dt:,.1f}")
    print(f"tokens/s      {args.batch * args.seq / dt:,.0f}")


if __name__ == "__main__":
    main()
