"""One prepared GPU check: gpu tests, ELF-B training MFU, sampling latency, export parity — one table.

On a CUDA machine (≤ 8 minutes on an H100/H200)::

    python benchmarks/gpu_check.py                      # --device cuda, ELF-B sizes

1. the ``gpu``/``trt``-marked tests (``pytest -m "gpu or trt"``);
2. ELF-B training throughput, bf16 autocast, eager and ``torch.compile`` (tokens/s, achieved
   TFLOP/s, MFU against the card's data-sheet bf16 peak or, elsewhere, the measured matmul peak);
3. 32-step SDE sampling latency (γ 1.5, self-cond w 3, bf16) for 1×1024 and 64×1024;
4. a ``torch-export`` of the backbone on the device and its parity against eager fp32.

``--device cpu`` runs the same stages at a tiny size (seconds; ``torch.compile`` only with
``--compile``), which is what the test suite checks; ``--tiny`` forces the tiny sizes on any
device. A stage that fails is a row with its error; the exit code is 1 if any stage failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_throughput  # noqa: E402
from _common import describe_host, sync  # noqa: E402

from elfkit.components.backbones import EagerRunner, ELFBackbone  # noqa: E402
from elfkit.components.exporters import ExportSpec, export_backbone, read_manifest  # noqa: E402
from elfkit.components.exporters.spec import DimRange  # noqa: E402
from elfkit.components.guidance import SelfCondConfig  # noqa: E402
from elfkit.core.flow import FlowPath  # noqa: E402
from elfkit.generation import generate  # noqa: E402
from elfkit.registry import build_registry  # noqa: E402

ELF_B = {"preset": "ELF-B", "latent_dim": 512, "vocab": 32100, "seq": 1024, "batch": 32, "decoder_hidden": 512}
TINY = {"preset": None, "depth": 2, "width": 64, "heads": 2, "latent_dim": 16, "vocab": 300, "seq": 32,
        "batch": 4, "decoder_hidden": 32}

Row = tuple[str, str, str, float]


def stage(rows: list[Row], name: str, setting: str, fn: Callable[[], str]) -> bool:
    """Run one check; record (name, setting, result or error, seconds)."""
    t0 = time.perf_counter()
    try:
        result, ok = fn(), True
    except Exception as exc:   # a failed stage is a row, not the end of the check
        result, ok = f"FAILED: {type(exc).__name__}: {' '.join(str(exc).split())[:150]}", False
    rows.append((name, setting, result, time.perf_counter() - t0))
    print(f"[{time.perf_counter() - T0:6.1f} s] {name}: {result}", flush=True)
    return ok


def run_gpu_tests(timeout: float) -> str:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu or trt", "-p", "no:cacheprovider", str(ROOT / "tests")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    tail = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
    if proc.returncode == 5:                    # pytest: no tests collected
        return f"no gpu/trt-marked tests collected ({tail[0]})"
    if proc.returncode != 0:
        raise RuntimeError(f"pytest exit {proc.returncode}: {tail[0]}")
    return tail[0]


def train_args(size: dict, device: torch.device, compile_: bool, steps: int, warmup: int) -> argparse.Namespace:
    ns = argparse.Namespace(preset=size["preset"], depth=size.get("depth", 4), width=size.get("width", 256),
                            heads=size.get("heads"), latent_dim=size["latent_dim"], vocab=size["vocab"],
                            decoder_hidden=size["decoder_hidden"], batch=size["batch"], seq=size["seq"],
                            precision="bf16", no_tf32=False, optimizer="muon", muon_implementation="reference",
                            ns_dtype="fp32", ns_method="direct", reference_style=False, variant=None,
                            compile=compile_, steps=steps, warmup=warmup, peak_tflops=None, clock="wall",
                            peak_size=2048 if device.type == "cuda" else 256, device=str(device), threads=None,
                            seed=0, profile=False)
    return ns


def train_stage(size: dict, device: torch.device, compile_: bool, steps: int, warmup: int) -> str:
    row = train_throughput.run(train_args(size, device, compile_, steps, warmup))[0]
    return (f"{row['tokens_per_s']:,.0f} tokens/s, {float(row['gflops']) / 1e3:.3f} TFLOP/s, "
            f"MFU {100 * float(row['fraction_of_peak']):.1f}% of {float(row['peak_gflops']) / 1e3:,.1f} TFLOP/s")


def build_net(size: dict, device: torch.device) -> ELFBackbone:
    cfg = {"latent_dim": size["latent_dim"], "vocab_size": size["vocab"], "max_length": size["seq"],
           "decoder_hidden": size["decoder_hidden"]}
    if size["preset"]:
        cfg["preset"] = size["preset"]
    else:
        cfg.update(preset=None, depth=size["depth"], width=size["width"], heads=size["heads"])
    torch.manual_seed(0)
    net = cast(ELFBackbone, build_registry(entry_points=False).build("backbone", "elf", cfg)).to(device).eval()
    with torch.no_grad():                       # a non-zero x head, so the check computes something real
        torch.nn.init.normal_(net.final_layer.linear.weight, std=0.02)
    return net


def sample_stage(net: ELFBackbone, num: int, length: int, device: torch.device, repeats: int) -> str:
    reg = build_registry(entry_points=False)
    runner = EagerRunner(net, torch.bfloat16)
    target = reg.build("target", "x").bind(FlowPath())
    sampler = reg.build("sampler", "sde", {"steps": 32, "gamma": 1.5})
    grid = reg.build("time", "logit-normal")
    guidance = reg.build("guidance", "self-cond", SelfCondConfig())
    times = []
    for i in range(repeats + 1):                # the first call is a warm-up
        gen = torch.Generator(device=device).manual_seed(i)
        sync(device)
        t0 = time.perf_counter()
        generate(runner, target, sampler, grid, guidance, num=num, length=length, generator=gen, device=device)
        sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    best = min(times)
    return f"{1e3 * best:,.1f} ms per batch (best of {repeats}), {num * length / best:,.0f} tokens/s"


def export_stage(net: ELFBackbone, size: dict, device: torch.device) -> str:
    reg = build_registry()
    target = reg.build("target", "x").bind(FlowPath(), name="x")
    seq = size["seq"]
    spec = ExportSpec(precision="fp32", device=str(device), batch=DimRange(min=1, opt=2, max=4),
                      seq=DimRange(min=2, opt=seq // 2, max=seq))
    with tempfile.TemporaryDirectory() as tmp:
        export_backbone(net, "torch-export", Path(tmp) / "export", spec, reg, target=target)
        worst = read_manifest(Path(tmp) / "export")["parity"]["worst"]
    parts = ", ".join(f"{k} rel_l2 {v['rel_l2']:.1e}" for k, v in worst.items() if isinstance(v, dict))
    return f"passed ({parts})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the default on CPU)")
    p.add_argument("--skip-tests", action="store_true", help="skip the pytest stage")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 10 on CUDA, 2 tiny)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile (default: on CUDA only; an inductor build on a CPU takes minutes)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu for the tiny CPU version", file=sys.stderr)
        return 2
    tiny = args.tiny or device.type != "cuda"
    size = TINY if tiny else ELF_B
    steps = args.steps or (2 if tiny else 10)
    warmup = 1 if tiny else 3
    lengths = [(1, size["seq"]), (4 if tiny else 64, size["seq"])]
    label = "tiny" if tiny else "ELF-B"
    rows: list[Row] = []
    ok = True
    print(f"device: {describe_host(device)}", flush=True)
    if not args.skip_tests:
        ok &= stage(rows, "gpu-marked tests", 'pytest -m "gpu or trt"', lambda: run_gpu_tests(300))
    with_compile = device.type == "cuda" if args.compile is None else args.compile
    for compile_ in (False, True) if with_compile else (False,):
        ok &= stage(rows, "training throughput", f"{label} bf16 batch {size['batch']}×{size['seq']}"
                    f"{' compiled' if compile_ else ' eager'}",
                    lambda c=compile_: train_stage(size, device, c, steps, warmup))
    net = build_net(size, device)
    for num, length in lengths:
        ok &= stage(rows, "sampling latency", f"{label} bf16 {num}×{length}, 32-step SDE, self-cond w 3",
                    lambda n=num, length=length: sample_stage(net, n, length, device, 1 if tiny else 3))
    ok &= stage(rows, "export parity", f"{label} torch-export fp32 on {device.type}",
                lambda: export_stage(net, size, device))
    print(f"\nGPU check — {describe_host(device)}")
    print(f"| {'check':<20} | {'setting':<52} | {'result':<70} | {'s':>6} |")
    print(f"|{'-' * 22}|{'-' * 54}|{'-' * 72}|{'-' * 8}|")
    for name, setting, result, secs in rows:
        print(f"| {name:<20} | {setting:<52} | {result:<70} | {secs:>6.1f} |")
    print(f"total {time.perf_counter() - T0:.0f} s; {'all stages passed' if ok else 'SOME STAGES FAILED'}")
    return 0 if ok else 1


T0 = time.perf_counter()

if __name__ == "__main__":
    sys.exit(main())
