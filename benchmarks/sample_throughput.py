"""Sampling throughput: samples/s and tokens/s of ELF generation (32 SDE steps + 1 decode).

Runs :func:`elfkit.generation.generate` (the same path ``elfkit sample`` uses) with the
SDE sampler (γ=1.5), the trained-in self-conditioning guidance (w=3, one forward per step)
and the random logit-normal grid, on a randomly initialised ELF backbone (weights do not
change the cost). Defaults are read from the components' configs::

    python benchmarks/sample_throughput.py --depth 4 --width 256 --latent-dim 384 --vocab 30522 \\
        --batch 32 --seq 128 --steps 32 --precision fp32 bf16

Several ``--precision`` values are timed alternately in one process (ratios to the first).
Each is also printed as FLOP/s (the backbone's matmuls per forward × forwards, plus the
decode) and as a fraction of this machine's matmul peak at that precision, measured in the
same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_clock_arg, add_model_args, clock_fn, describe_host, matmul_peak, sync  # noqa: E402
from train_throughput import forward_flops  # noqa: E402

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
    p.add_argument("--precision", choices=["fp32", "bf16"], nargs="+", default=["fp32"],
                   help="one or more; several are timed alternately")
    p.add_argument("--repeats", type=int, default=3, help="timed batches (per precision)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (1 on a shared machine)")
    add_clock_arg(p)
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = clock_fn(args.clock)
    reg = build_registry(entry_points=False)
    cfg = {"latent_dim": args.latent_dim, "vocab_size": args.vocab, "max_length": args.seq,
           "decoder_hidden": args.decoder_hidden}
    if args.preset:
        cfg["preset"] = args.preset
    else:
        cfg.update(preset=None, depth=args.depth, width=args.width, heads=args.heads or max(1, args.width // 64))
    net = reg.build("backbone", "elf", cfg).to(device).eval()
    if args.compile:
        net.compile()
    target = reg.build("target", "x").bind(FlowPath())            # ELF: x-prediction on its path
    sampler = reg.build("sampler", "sde", {"steps": args.steps, "gamma": args.gamma})
    grid = reg.build("time", "logit-normal")
    guidance = reg.build("guidance", "self-cond", SELF_COND)
    runners = {prec: EagerRunner(net, torch.bfloat16 if prec == "bf16" else None) for prec in args.precision}
    times: dict[str, list[float]] = {prec: [] for prec in args.precision}
    nfe = 0

    def once(prec: str, seed: int) -> float:
        nonlocal nfe
        gen = torch.Generator(device=device).manual_seed(seed)       # same draws for every precision
        t0 = clock()
        res = generate(runners[prec], target, sampler, grid, guidance, num=args.batch, length=args.seq,
                       generator=gen, device=device)
        sync(device)
        nfe = res.nfe
        return clock() - t0

    for i in range(args.warmup + args.repeats):
        for prec in args.precision:
            dt = once(prec, i)
            if i >= args.warmup:
                times[prec].append(dt)
    peak = {"fp32": matmul_peak(torch.float32, device, clock=clock),
            "bf16": matmul_peak(torch.bfloat16, device, clock=clock)}
    fwd_seq, head_tok = forward_flops(net, args.seq)
    flops = args.batch * (nfe * fwd_seq + (fwd_seq + args.seq * head_tok))   # nfe denoiser forwards + 1 decode
    print(f"device        {describe_host(device)}")
    print(f"model         depth {net.cfg.depth} width {net.cfg.width} D {net.cfg.latent_dim} V {net.cfg.vocab_size}")
    print(f"run           batch {args.batch}×{args.seq}, {args.steps}-step SDE γ={args.gamma}, "
          f"self-cond w={SELF_COND.scale:g}: {nfe} denoiser forwards + 1 decode per batch; {args.clock} clock")
    print(f"peak          2048² matmul: fp32 {peak['fp32'] / 1e9:,.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:,.0f} GFLOP/s")
    base = None
    for prec in args.precision:
        dt = statistics.median(times[prec])
        base = base or dt
        print(f"{prec:<5} batch {dt * 1e3:9.1f} ms  {args.batch / dt:7.2f} samples/s  "
              f"{args.batch * args.seq / dt:8,.0f} tokens/s  {base / dt:5.2f}× first  "
              f"{flops / dt / 1e9:6.1f} GFLOP/s = {100 * flops / dt / peak[prec]:4.1f}% of the {prec} peak")


if __name__ == "__main__":
    main()
