"""Denoiser latency and sampling throughput: eager vs torch.compile vs each export format.

For every runner that can be built here (eager, torch.compile, torch-export, AOTInductor,
ONNX, TensorRT when present) it reports the per-call ``denoise`` latency (median, p99 over
``--iters`` calls after ``--warmup``) at one (batch, seq) shape, and samples/s of a full
``--steps``-step SDE generation (ELF's sampler with self-cond guidance w=3, plus the one
decode forward). Export/compile time is reported separately. The model is a randomly
initialised ELF backbone of the given size (latency does not depend on the weights).

    python benchmarks/denoiser_latency.py                        # small CPU model, all formats
    python benchmarks/denoiser_latency.py --preset ELF-B --latent-dim 512 --vocab 32100 \\
        --seq 128 --batch 32 --device cuda --formats eager,compile,torch-export,tensorrt

Keep runs short on shared CPUs (``--iters``, ``--formats``); results go to stdout and,
with ``--json``, to a file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import torch
from _common import cpu_name  # benchmarks/ is the script directory, so on sys.path

from elfkit.components.backbones import EagerRunner, ELFBackbone, ELFBackboneConfig, build_elf_backbone
from elfkit.components.exporters import ExportSpec, export_backbone, load_runner, read_manifest
from elfkit.components.exporters.manifest import library_versions
from elfkit.components.exporters.spec import DimRange
from elfkit.components.guidance import SelfCondConfig
from elfkit.components.samplers import SdeConfig
from elfkit.contracts import Backbone
from elfkit.core.flow import FlowPath
from elfkit.errors import ElfkitError
from elfkit.generation import generate
from elfkit.registry import build_registry

ALL = ("eager", "compile", "torch-export", "aoti", "onnx", "tensorrt")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--preset", default=None, help="ELF-B/M/L; default: --depth/--width/--heads")
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--latent-dim", type=int, default=64)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--steps", type=int, default=SdeConfig().steps, help="SDE steps for the throughput run")
    p.add_argument("--iters", type=int, default=30, help="timed denoise calls per runner")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--sample-reps", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--device", default="auto")
    p.add_argument("--formats", default=",".join(ALL), help=f"comma list from {ALL}")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(0.99 * (len(xs) - 1))))]


def build_runners(bb: ELFBackbone, args: argparse.Namespace, device: torch.device, workdir: Path,
                  registry: Any, target: Any) -> dict[str, tuple[Any, float, str]]:
    """name → (runner, build seconds, note); unavailable formats get runner None and the reason."""
    wanted = [f.strip() for f in args.formats.split(",") if f.strip()]
    spec = ExportSpec(precision=args.precision, device=str(device),
                      batch=DimRange(min=1, opt=args.batch, max=max(args.batch, 2)),
                      seq=DimRange(min=2, opt=args.seq, max=args.seq))
    autocast = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    runners: dict[str, tuple[Any, float, str]] = {}
    for name in wanted:
        t0 = time.perf_counter()
        try:
            if name == "eager":
                runner, note = EagerRunner(bb, autocast_dtype=autocast), ""
            elif name == "compile":
                # the compiled module forwards attribute access (capabilities, decode_logits) to bb
                compiled = cast(Backbone, torch.compile(bb, dynamic=False))
                runner, note = EagerRunner(compiled, autocast_dtype=autocast), "first calls"
            else:
                fmt, config = {"torch-export": ("torch-export", {}), "aoti": ("torch-export", {"aot_inductor": True}),
                               "onnx": ("onnx", {}), "tensorrt": ("tensorrt", {})}[name]
                out = workdir / name
                export_backbone(bb, fmt, out, spec, registry, target=target, config=config)
                runner = load_runner(out, device=device, registry=registry)
                worst = read_manifest(out)["parity"]["worst"]["denoise"]
                note = f"parity rel_l2 {worst['rel_l2']:.1e}"
        except ElfkitError as exc:
            runners[name] = (None, 0.0, " ".join(str(exc).split())[:160])
            continue
        runners[name] = (runner, time.perf_counter() - t0, note)
        print(f"built {name} in {runners[name][1]:.1f} s {note}", flush=True)
    return runners


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    torch.manual_seed(0)
    size = {"preset": args.preset} if args.preset else {"preset": None, "depth": args.depth, "width": args.width,
                                                        "heads": args.heads}
    cfg = ELFBackboneConfig(**size, latent_dim=args.latent_dim, vocab_size=args.vocab, max_length=args.seq)
    bb = build_elf_backbone(cfg).to(device).eval()
    with torch.no_grad():  # non-zero x head, so every format computes something real
        torch.nn.init.normal_(bb.final_layer.linear.weight, std=0.02)
    registry = build_registry()
    B, S, D = args.batch, args.seq, args.latent_dim
    g = torch.Generator(device="cpu").manual_seed(0)
    z, t = torch.randn(B, S, D, generator=g).to(device), torch.rand(B, generator=g).to(device)
    sc, w = torch.randn(B, S, D, generator=g).to(device), torch.full((B,), 3.0, device=device)
    target = registry.build("target", "x").bind(FlowPath(), name="x")     # ELF: x-prediction on its path
    parts = dict(target=target, sampler=registry.build("sampler", "sde", {"steps": args.steps}),
                 grid_time=registry.build("time", "logit-normal"),
                 guidance=registry.build("guidance", "self-cond", SelfCondConfig()))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        built = build_runners(bb, args, device, Path(tmp), registry, target)
        live = {n: r for n, (r, _, _) in built.items() if r is not None}
        lat: dict[str, list[float]] = {n: [] for n in live}
        gen: dict[str, list[float]] = {n: [] for n in live}
        # Round-robin: one call of each runner per round, so load from other processes on a
        # shared machine hits every runner alike instead of whichever ran during a spike.
        with torch.inference_mode():
            for i in range(args.warmup + args.iters):
                for name, runner in live.items():
                    sync(device)
                    t0 = time.perf_counter()
                    runner.denoise(z, t, sc, w)
                    sync(device)
                    if i >= args.warmup:
                        lat[name].append(time.perf_counter() - t0)
            for rep in range(args.sample_reps + 1):              # rep 0 is warm-up
                for name, runner in live.items():
                    t0 = time.perf_counter()
                    generate(runner, **parts, num=B, length=S, generator=torch.Generator().manual_seed(rep),
                             device=device)
                    sync(device)
                    if rep:
                        gen[name].append(time.perf_counter() - t0)
        for name, (runner, build_s, note) in built.items():
            if runner is None:
                rows.append({"runner": name, "skipped": note})
                continue
            rows.append({"runner": name, "median_ms": 1e3 * statistics.median(lat[name]),
                         "p99_ms": 1e3 * p99(lat[name]), "samples_per_s": B / statistics.median(gen[name]),
                         "build_s": build_s, "note": note})

    versions = {k: v for k, v in library_versions().items() if v}
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{cpu_name()} ({torch.get_num_threads()} torch threads)"
    print(f"\nELF backbone {size} D={D} V={args.vocab}; batch {B} × seq {S}; {args.precision}; "
          f"{args.steps}-step SDE; device {device_name}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    header = f"| {'runner':<13}| {'median ms':>10} | {'p99 ms':>8} | {'samples/s':>9} | {'build s':>8} | note"
    print(header + "\n|" + "-" * (len(header) - 1))
    for r in rows:
        if "skipped" in r:
            print(f"| {r['runner']:<13}| {'—':>10} | {'—':>8} | {'—':>9} | {'—':>8} | skipped: {r['skipped']}")
        else:
            print(f"| {r['runner']:<13}| {r['median_ms']:>10.2f} | {r['p99_ms']:>8.2f} | {r['samples_per_s']:>9.1f} "
                  f"| {r['build_s']:>8.1f} | {r['note']}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "device": device_name,
                                         "versions": versions, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
