"""Training throughput of the ELF objective: tokens/s, step time, FLOP/s and its fraction of the matmul peak.

Measures whole optimiser steps (objective + backward + clip + Muon/Adam + EMA) on synthetic
latents (the frozen embedder is excluded: it is a separate, cacheable cost). ``--reference-style``
runs the same objective with ``execution: reference``: the official torch port's cost
structure (both no-grad self-conditioning passes over the full batch, decoder logits for
every row in every pass).

``--variant`` (repeatable) runs several settings in one process, alternating one step of
each, so load from other processes hits all of them alike; speed-ups are reported as ratios
to the first variant. A variant is ``key=value`` pairs: ``style`` (fast|reference),
``precision`` (fp32|bf16), ``ns`` (Newton–Schulz dtype fp32|bf16), ``ns_method``
(direct|gram), ``optimizer`` (muon|adamw)::

    python benchmarks/train_throughput.py --batch 32 --seq 128 --precision fp32 \\
        --variant style=reference --variant ns_method=gram

The same run measures this device's own matmul peak (a 2048² matmul, ``--peak-size``) in
fp32 and bf16, and prints each variant's achieved FLOP/s as a fraction of the peak of the
precision it computes in (model FLOPs; the optimiser's Newton–Schulz FLOPs in a second column).

FLOPs/token counts matmuls (2·m·n·k) from the architecture, in expectation over the
objective's branch draws: the trained forward + backward (3× a forward) for every row, the
decoder head for decoder rows only (fast) or every row (reference), and the extra no-grad
forwards (x̂_u, x̂_c) for self-conditioned denoiser rows (fast) or every row (reference).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_clock_arg, add_model_args, clock_fn, describe_host, matmul_peak, sync  # noqa: E402

from elfkit.components.backbones import ELFBackbone  # noqa: E402
from elfkit.components.objectives import ElfObjective, ElfObjectiveConfig  # noqa: E402
from elfkit.core.flow import FlowPath  # noqa: E402
from elfkit.pipeline.train.ema import EMA  # noqa: E402
from elfkit.pipeline.train.muon import MuonAdam  # noqa: E402
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


def newton_schulz_flops(net: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
    """Matmul FLOPs of one Muon step's Newton–Schulz iterations over every Muon parameter."""
    if not isinstance(opt, MuonAdam):
        return 0.0
    total = 0.0
    for group in opt.param_groups:
        if group["algo"] != "muon":
            continue
        for p in group["params"]:
            r, n = sorted(p.shape)
            steps = group["ns_steps"]
            if opt.ns_method == "gram" and n >= 2 * r:
                total += 2 * (2 * r * r * n) + steps * 4 * (2 * r ** 3)
            else:
                total += steps * (2 * (2 * r * r * n) + 2 * r ** 3)
    return total


def synthetic_batch(args: argparse.Namespace, device: torch.device, g: torch.Generator) -> tuple[Batch, torch.Tensor]:
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g, device=device)
    valid = torch.ones(args.batch, args.seq, dtype=torch.bool, device=device)
    batch = Batch(ids, valid, torch.zeros_like(valid), valid.float())
    x0 = torch.randn(args.batch, args.seq, args.latent_dim, generator=g, device=device)
    return batch, x0


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "CUDA max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process max RSS (all variants)"


def default_peak(device: torch.device, precision: str, tf32: bool) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, table in PEAK_TFLOPS.items():
        if key in name:
            return table["bf16" if precision == "bf16" else ("tf32" if tf32 else "fp32")]
    return None


VARIANT_KEYS = {"style": ("fast", "reference"), "precision": ("fp32", "bf16"), "ns": ("fp32", "bf16"),
                "ns_method": ("direct", "gram"), "optimizer": ("muon", "adamw")}


@dataclass
class Variant:
    """One setting under test, with its own model/optimizer/EMA (same initial weights as the others)."""

    style: str
    precision: str
    ns: str
    ns_method: str
    optimizer: str
    times: list[tuple[float, float]] = field(default_factory=list)

    @property
    def label(self) -> str:
        opt = self.optimizer if self.optimizer == "adamw" else f"muon NS {self.ns} {self.ns_method}"
        return f"{'reference-style' if self.style == 'reference' else 'elfkit'} {self.precision} {opt}"


def parse_variant(spec: str, args: argparse.Namespace) -> Variant:
    """``key=value,…`` over the command-line defaults; a clear error for unknown keys or values."""
    values = {"style": "reference" if args.reference_style else "fast", "precision": args.precision,
              "ns": args.ns_dtype, "ns_method": args.ns_method, "optimizer": args.optimizer}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in VARIANT_KEYS or value not in VARIANT_KEYS[key]:
            allowed = "; ".join(f"{k}={'|'.join(v)}" for k, v in VARIANT_KEYS.items())
            raise SystemExit(f"--variant {spec!r}: bad item {item!r} (allowed: {allowed})")
        values[key] = value
    return Variant(**values)


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
    p.add_argument("--ns-method", choices=["direct", "gram"], default="direct",
                   help="reference Muon's Newton–Schulz evaluation (train.muon.ns_method)")
    p.add_argument("--reference-style", action="store_true", help="the official port's cost structure")
    p.add_argument("--variant", action="append", default=None,
                   help="key=value,... (style, precision, ns, ns_method, optimizer); repeat to compare")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    p.add_argument("--steps", type=int, default=10, help="timed steps (per variant)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak for MFU (default: the measured matmul peak; H100/H200 data-sheet values on CUDA)")
    p.add_argument("--peak-size", type=int, default=2048, help="n of the n×n matmul that measures the peak")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (use 1 on a shared machine: OpenMP spin-waits collapse under contention)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table of 2 steps (first variant)")
    add_clock_arg(p)
    args = p.parse_args(argv)
    run(args)


def run(args: argparse.Namespace) -> list[dict[str, float | str]]:
    """Time every variant; print one table; return its rows (for callers such as gpu_check.py)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
        torch.backends.cudnn.allow_tf32 = not args.no_tf32
    variants = [parse_variant(v, args) for v in (args.variant or [""])]
    clock = clock_fn(getattr(args, "clock", "wall"))
    registry = build_registry(entry_points=False)
    target = registry.build("target", "x").bind(FlowPath())          # ELF: x-prediction, v loss, its path
    time_c = registry.build("time", "logit-normal")
    batch, x0 = synthetic_batch(args, device, torch.Generator(device=device).manual_seed(args.seed + 1))

    steppers = []
    for v in variants:
        torch.manual_seed(args.seed)                                  # same initial weights for every variant
        net = build_backbone(args).to(device).train()
        if args.compile:
            net.compile()
        obj_cfg = ElfObjectiveConfig(execution="reference" if v.style == "reference" else "fast")
        objective = ElfObjective(obj_cfg)
        train = TrainSection(batch_size=args.batch, optimizer=v.optimizer,   # type: ignore[arg-type]
                             muon=MuonSection(implementation=args.muon_implementation, ns_dtype=v.ns,  # type: ignore[arg-type]
                                              ns_method=v.ns_method))  # type: ignore[arg-type]
        opt = build_optimizer(net, train)
        ema = EMA(net, train.ema_decay)
        gen = torch.Generator(device=device).manual_seed(args.seed)
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=v.precision == "bf16")

        def step(net=net, objective=objective, opt=opt, ema=ema, gen=gen, amp=amp, clip=train.clip_grad,
                 ) -> tuple[float, float]:
            """One optimiser step; returns (objective forward+backward seconds, optimiser seconds)."""
            t0 = clock()
            opt.zero_grad(set_to_none=True)
            with amp:
                out = objective(net, batch, x0, target=target, time=time_c, generator=gen)
            out.loss.backward()
            sync(device)
            t1 = clock()
            clip_grad_norm(net.parameters(), clip)
            opt.step()
            ema.update(net)
            sync(device)
            return t1 - t0, clock() - t1

        fpt = flops_per_token(net, args.seq, obj_cfg, v.style == "reference")
        steppers.append((v, step, fpt, newton_schulz_flops(net, opt), net))

    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}

    def measure_peaks() -> None:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            peaks[name].append(matmul_peak(dtype, device, args.peak_size, clock=clock))

    measure_peaks()
    for _ in range(args.warmup):
        for _v, step, *_ in steppers:
            step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.steps):                                       # alternate: one step of each variant
        for v, step, *_ in steppers:
            v.times.append(step())
        if i == args.steps // 2:
            measure_peaks()                                           # the peak under the same load, mid-run
    measure_peaks()

    tokens = args.batch * args.seq
    peak = {k: statistics.median(x) for k, x in peaks.items()}
    mem, mem_kind = peak_memory_gib(device)
    first = steppers[0][4]
    n_params = sum(p.numel() for p in first.parameters())
    print(f"device   {describe_host(device)}")
    print(f"model    depth {first.sizes.depth} width {first.sizes.width} heads {first.sizes.heads} "
          f"D {first.sizes.latent_dim} V {first.sizes.vocab_size} decoder hidden {first.cfg.decoder_hidden} "
          f"({n_params / 1e6:.2f}M params); batch {args.batch}×{args.seq}{' compiled' if args.compile else ''}; "
          f"{args.steps} timed steps per variant, alternating; {getattr(args, 'clock', 'wall')} clock")
    print(f"peak     {args.peak_size}² matmul: fp32 {peak['fp32'] / 1e9:,.0f} GFLOP/s, "
          f"bf16 {peak['bf16'] / 1e9:,.0f} GFLOP/s (median of {len(peaks['fp32'])} measurements in this run)")
    print(f"memory   {mem:.2f} GiB ({mem_kind})")
    header = (f"| {'variant':<40} | {'step ms':>8} | {'fwd+bwd':>8} | {'opt+EMA':>8} | {'tokens/s':>9} | "
              f"{'× first':>7} | {'MFLOP/tok':>9} | {'GFLOP/s':>8} | {'% peak':>6} | {'+NS %':>6} |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    rows: list[dict[str, float | str]] = []
    base = None
    for v, _step, fpt, ns_flops, _net in steppers:
        fb = statistics.median(t[0] for t in v.times)
        op = statistics.median(t[1] for t in v.times)
        dt = fb + op
        tps = tokens / dt
        base = base or tps
        achieved = fpt * tokens / dt
        ref_peak = args.peak_tflops * 1e12 if args.peak_tflops else \
            (default_peak(device, v.precision, not args.no_tf32) or 0) * 1e12 or peak[v.precision]
        frac = achieved / ref_peak
        frac_ns = (fpt * tokens + ns_flops) / dt / ref_peak
        rows.append({"variant": v.label, "step_ms": 1e3 * dt, "tokens_per_s": tps, "ratio": tps / base,
                     "gflops": achieved / 1e9, "fraction_of_peak": frac, "peak_gflops": ref_peak / 1e9})
        print(f"| {v.label:<40} | {1e3 * dt:>8.1f} | {1e3 * fb:>8.1f} | {1e3 * op:>8.1f} | {tps:>9,.0f} | "
              f"{tps / base:>6.2f}× | {fpt / 1e6:>9.1f} | {achieved / 1e9:>8.1f} | {100 * frac:>5.1f}% | "
              f"{100 * frac_ns:>5.1f}% |")
    print("(medians over the timed steps; % peak = model FLOP/s over the measured matmul peak of the variant's "
          "precision; +NS adds the Newton–Schulz FLOPs)")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        step = steppers[0][1]
        with profile(activities=acts, record_shapes=True) as prof:
            for _ in range(2):
                step()
            sync(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=20,
                                                                  max_name_column_width=40,
                                                                  max_shapes_column_width=60))
    return rows


if __name__ == "__main__":
    main()
