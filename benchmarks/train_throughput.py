"""Training throughput of the ELF objective: tokens/s, step time, peak memory, FLOPs/token, MFU.

Measures whole optimiser steps (objective + backward + clip + Muon/Adam + EMA) on synthetic
latents (the frozen embedder is excluded: it is a separate, cacheable cost). ``--reference-style``
runs the same objective with ``execution: reference``: the official torch port's cost
structure (both no-grad self-conditioning passes over the full batch, decoder logits for
every row in every pass), so both can be timed side by side on one machine::

    python benchmarks/train_throughput.py --depth 4 --width 256 --latent-dim 384 --vocab 30522 \\
        --batch 32 --seq 128 --precision fp32
    python benchmarks/train_throughput.py ... --reference-style

FLOPs/token counts matmuls (2·m·n·k) from the architecture, in expectation over the
objective's branch draws: the trained forward + backward (3× a forward) for every row, the
decoder head for decoder rows only (fast) or every row (reference), and the extra no-grad
forwards (x̂_u, x̂_c) for self-conditioned denoiser rows (fast) or every row (reference).
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_model_args  # noqa: E402

from elfkit.components.backbones import ELFBackbone  # noqa: E402
from elfkit.components.objectives import ElfObjective, ElfObjectiveConfig  # noqa: E402
from elfkit.core.flow import FlowPath  # noqa: E402
from elfkit.pipeline.train.ema import EMA  # noqa: E402
from elfkit.pipeline.train.optimizers import build_optimizer, clip_grad_norm  # noqa: E402
from elfkit.recipe.schema import MuonSection, TrainSection  # noqa: E402
from elfkit.records import Batch  # noqa: E402
from elfkit.registry import build_registry  # noqa: E402

# Dense peak TFLOP/s per precision (SXM parts; fp32 = TF32 tensor cores when TF32 is on).
PEAK_TFLOPS = {"H100": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},
               "H200": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0}}


def build_backbone(args: argparse.Namespace) -> ELFBackbone:
    cfg = {"latent_dim": args.latent_dim, "vocab_size": args.vocab, "max_length": args.seq,
           "decoder_hidden": args.decoder_hidden}
    if args.preset:
        cfg["preset"] = args.preset
    else:
        cfg.update(preset=None, depth=args.depth, width=args.width, heads=args.heads or max(1, args.width // 64))
    return build_registry(entry_points=False).build("backbone", "elf", cfg)


def forward_flops(backbone: ELFBackbone, seq: int) -> tuple[float, float]:
    """(backbone forward FLOPs per sequence without the decoder head, decoder head FLOPs per token)."""
    c, s = backbone.cfg, backbone.sizes
    d, h, r, v, e = s.latent_dim, s.width, c.bottleneck_dim, s.vocab_size, c.decoder_hidden
    inner, qkv = s.mlp_inner, s.heads * s.head_dim
    n = seq + c.num_prefix
    f = 2 * seq * (d * r + r * h)                                        # bottleneck input projection
    if c.self_conditioning:
        f += 2 * seq * (2 * d) * d                                        # self_cond_proj
    f += 2 * (256 * h + h * h) * (2 if c.guidance_tokens else 1)          # timestep / w embedders
    per_block = 2 * n * h * 3 * qkv + 2 * 2 * n * n * qkv + 2 * n * qkv * h + 2 * n * h * 2 * inner + 2 * n * inner * h
    f += s.depth * per_block
    f += 2 * seq * h * d                                                 # x head
    head = 2 * (h * e + e * v) if c.decoder_head else 0.0
    return float(f), float(head)


def flops_per_token(backbone: ELFBackbone, seq: int, obj: ElfObjectiveConfig, reference: bool) -> float:
    fwd_seq, head_tok = forward_flops(backbone, seq)
    fwd_tok = fwd_seq / seq
    p_dec, p_sc = obj.decoder_prob, obj.self_cond_prob
    helper_passes = 2 if obj.guided_target else 1
    if reference:
        return 3 * (fwd_tok + head_tok) + helper_passes * (fwd_tok + head_tok)
    return 3 * fwd_tok + 3 * p_dec * head_tok + helper_passes * (1 - p_dec) * p_sc * fwd_tok


def synthetic_batch(args: argparse.Namespace, device: torch.device, g: torch.Generator) -> tuple[Batch, torch.Tensor]:
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g, device=device)
    valid = torch.ones(args.batch, args.seq, dtype=torch.bool, device=device)
    batch = Batch(ids, valid, torch.zeros_like(valid), valid.float())
    x0 = torch.randn(args.batch, args.seq, args.latent_dim, generator=g, device=device)
    return batch, x0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "CUDA max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process max RSS"


def default_peak(device: torch.device, precision: str, tf32: bool) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, table in PEAK_TFLOPS.items():
        if key in name:
            return table["bf16" if precision == "bf16" else ("tf32" if tf32 else "fp32")]
    return None



def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add_model_args(p)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--no-tf32", action="store_true", help="strict fp32 matmuls on CUDA")
    p.add_argument("--optimizer", choices=["muon", "adamw"], default="muon")
    p.add_argument("--muon-implementation", choices=["reference", "torch"], default="reference",
                   help="reference: optax semantics; torch: torch.optim.Muon")
    p.add_argument("--ns-dtype", choices=["fp32", "bf16"], default="fp32",
                   help="reference Muon's Newton–Schulz precision")
    p.add_argument("--reference-style", action="store_true", help="the official port's cost structure")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--peak-tflops", type=float, default=None, help="for MFU (defaults known for H100/H200)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (use 1 on a shared machine: OpenMP spin-waits collapse under contention)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of 2 steps")
    args = p.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
        torch.backends.cudnn.allow_tf32 = not args.no_tf32
    torch.manual_seed(args.seed)
    net = build_backbone(args).to(device).train()
    if args.compile:
        net.compile()
    obj_cfg = ElfObjectiveConfig(execution="reference" if args.reference_style else "fast")
    objective = ElfObjective(obj_cfg)
    registry = build_registry(entry_points=False)
    target = registry.build("target", "x").bind(FlowPath())          # ELF: x-prediction, v loss, its path
    time_c = registry.build("time", "logit-normal")
    train = TrainSection(batch_size=args.batch, optimizer=args.optimizer,
                         muon=MuonSection(implementation=args.muon_implementation, ns_dtype=args.ns_dtype))
    opt = build_optimizer(net, train)
    ema = EMA(net, train.ema_decay)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    data_gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    batch, x0 = synthetic_batch(args, device, data_gen)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step() -> tuple[float, float]:
        """One optimiser step; returns (objective forward+backward seconds, optimiser seconds)."""
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with amp:
            out = objective(net, batch, x0, target=target, time=time_c, generator=gen)
        out.loss.backward()
        sync(device)
        t1 = time.perf_counter()
        clip_grad_norm(net.parameters(), train.clip_grad)
        opt.step()
        ema.update(net)
        sync(device)
        return t1 - t0, time.perf_counter() - t1

    for _ in range(args.warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [step() for _ in range(args.steps)]
    fb = sum(t[0] for t in times) / args.steps
    op = sum(t[1] for t in times) / args.steps
    dt = fb + op
    tokens = args.batch * args.seq
    fpt = flops_per_token(net, args.seq, obj_cfg, args.reference_style)
    mem, mem_kind = peak_memory_gib(device)
    peak = args.peak_tflops or default_peak(device, args.precision, not args.no_tf32)
    n_params = sum(p.numel() for p in net.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"device            {name} ({device.type}, {torch.get_num_threads()} threads)")
    print(f"torch             {torch.__version__}")
    print(f"model             depth {net.sizes.depth} width {net.sizes.width} heads {net.sizes.heads} "
          f"D {net.sizes.latent_dim} V {net.sizes.vocab_size} ({n_params / 1e6:.2f}M params)")
    print(f"run               batch {args.batch}×{args.seq} {args.precision} {args.optimizer} "
          f"{'reference-style' if args.reference_style else 'elfkit'}{' compiled' if args.compile else ''}")
    print(f"step time         {dt * 1e3:.1f} ms  (objective fwd+bwd {fb * 1e3:.1f} ms, "
          f"clip+optimizer+EMA {op * 1e3:.1f} ms)")
    print(f"fwd+bwd tokens/s  {tokens / fb:,.0f}")
    print(f"tokens/s          {tokens / dt:,.0f}")
    print(f"peak memory       {mem:.2f} GiB ({mem_kind})")
    print(f"FLOPs/token       {fpt / 1e6:.1f} MFLOP (expected over branch draws)")
    achieved = fpt * tokens / dt
    print(f"achieved          {achieved / 1e12:.3f} TFLOP/s")
    if peak:
        print(f"MFU               {100 * achieved / (peak * 1e12):.1f}% of {peak:g} TFLOP/s")
    else:
        print("MFU               (pass --peak-tflops)")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for _ in range(2):
                step()
            sync(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=15))


if __name__ == "__main__":
    main()
