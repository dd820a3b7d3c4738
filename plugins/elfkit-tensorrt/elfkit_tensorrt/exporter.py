"""``tensorrt``: torch.export programs compiled by ``torch_tensorrt.dynamo.compile``.

Stage 1 (``torch.export`` with the shared batch/seq dims, parity reference) is elfkit's
own and runs anywhere; stage 2 needs torch-tensorrt, the TensorRT libraries and a CUDA
GPU, and is only imported inside :meth:`TensorRTExporter.export` / ``load``.

Written against torch-tensorrt 2.13/2.14 (TensorRT 11, CUDA 13; ecosystem.md §D):
- ``attn_bias_is_causal=False`` always: the default rewrites attention that carries a
  bias into *causal* attention, which is wrong for a bidirectional denoiser.
- precision is never passed as ``enabled_precisions`` (silently ignored on the dynamo
  path since 2.13): either the graph carries it (autocast traced into explicit casts;
  TensorRT is strongly typed and follows) or ``enable_autocast`` lowers it inside TensorRT.
- saved with ``torch_tensorrt.save`` as an ExportedProgram (default) or an AOTInductor
  package, re-traced with the same shared dims; loaded with ``torch_tensorrt.load``.
Engines are specific to the GPU architecture and TensorRT major version they were built
with (unless ``hardware_compatible`` / ``version_compatible``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from elfkit.components.exporters.build import Built, export_artifact
from elfkit.components.exporters.manifest import capabilities_from, read_manifest
from elfkit.components.exporters.runner import ArtifactRunner
from elfkit.components.exporters.spec import DTYPES, DimRange, ExportSpec
from elfkit.components.exporters.trace import DECODE_INPUTS, DENOISE_INPUTS, TracedBackbone
from elfkit.components.targets import Target
from elfkit.config import ComponentConfig
from elfkit.errors import ExportError
from elfkit_tensorrt._import import require_torch_tensorrt

# Compiler options elfkit sets itself (or that do nothing on the dynamo path since 2.13).
_RESERVED = {"attn_bias_is_causal", "arg_inputs", "inputs", "enabled_precisions", "enable_autocast",
             "autocast_low_precision_type"}


class TensorRTConfig(ComponentConfig):
    aot_inductor: bool = False
    """Save an AOTInductor package (runs from C++ with libtorchtrt_runtime.so) instead of an ExportedProgram."""
    precision_mode: Literal["graph", "autocast"] = "graph"
    """'graph': the traced graph carries fp16/bf16 as explicit casts (norms, embedders, heads stay fp32) and
    TensorRT's strong typing follows it. 'autocast': trace fp32 and let TensorRT choose (enable_autocast)."""
    min_block_size: int = Field(default=1, ge=1)
    """Smallest subgraph TensorRT takes over (torch-tensorrt default 5)."""
    require_full_compilation: bool = False
    """Fail instead of leaving unsupported ops to PyTorch (use in GPU CI to catch graph breaks)."""
    optimization_level: int | None = Field(default=None, ge=0, le=5)
    """Builder optimisation level 0–5 (None = TensorRT's default, 3); higher builds slower, may run faster."""
    workspace_size: int = Field(default=0, ge=0)
    """Builder workspace limit in bytes (0 = TensorRT's default)."""
    use_fp32_acc: bool = False
    """Accumulate fp16 matmuls in fp32 (slower, more accurate)."""
    disable_tf32: bool = True
    """Keep fp32 layers in true fp32 (TF32 would fail the 1e-4 fp32 parity threshold)."""
    hardware_compatible: bool = False
    """Build engines that run on any Ampere-or-newer GPU (slower)."""
    version_compatible: bool = False
    """Build engines that newer TensorRT versions can run (lean runtime)."""
    compiler_options: dict[str, Any] = Field(default_factory=dict)
    """Further ``torch_tensorrt.dynamo.compile`` keywords (not the ones elfkit sets itself)."""

    @field_validator("compiler_options")
    @classmethod
    def _not_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(_RESERVED & set(value))
        if bad:
            raise ValueError(f"compiler_options may not set {', '.join(bad)}: elfkit sets attention and inputs "
                             "itself, and precision comes from --precision with precision_mode "
                             "('enabled_precisions' is silently ignored by torch-tensorrt >= 2.13)")
        return value


def _check_device(device: torch.device) -> None:
    if device.type != "cuda":
        raise ExportError(f"TensorRT engines run on CUDA devices only, not {device}; export/load with device='cuda'")


@contextlib.contextmanager
def _no_tf32(enabled: bool) -> Iterator[None]:
    """Eager reference in true fp32 too (ecosystem.md §D.4), restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class TensorRTExporter:
    """torch.export → TensorRT engines (dynamic batch/seq profiles) → ExportedProgram / AOTInductor."""

    format = "tensorrt"

    def __init__(self, cfg: TensorRTConfig) -> None:
        self.cfg = cfg

    # --- export ---------------------------------------------------------------------------
    def export(self, backbone: nn.Module, out_dir: Path, spec: ExportSpec, *, target: Target,
               metadata: dict[str, Any] | None = None) -> Path:
        trt = require_torch_tensorrt("--format tensorrt")   # fail before spending minutes tracing
        device = torch.device(spec.device or "cuda")
        _check_device(device)
        autocast_in_trt = self.cfg.precision_mode == "autocast" and spec.precision != "fp32"

        def build(traced: TracedBackbone, out: Path) -> Built:
            return self._build(trt, traced, out, spec, autocast_in_trt)

        with _no_tf32(self.cfg.disable_tf32):
            return export_artifact(
                backbone, out_dir, spec.model_copy(update={"device": str(device)}), target=target, fmt=self.format,
                exporter_config=self.cfg, default_device="cuda", build=build, open_runner=self.open,
                metadata=metadata, trace_precision="fp32" if autocast_in_trt else None,
                extra_versions=("tensorrt-cu13", "tensorrt-cu13-libs"))

    def _inputs(self, trt: Any, traced: TracedBackbone, names: tuple[str, ...]) -> list[Any]:
        """One ``torch_tensorrt.Input`` per positional input, with the min/opt/max profile."""
        d, b, s = traced.capabilities.latent_dim, traced.batch, traced.seq
        per_row = {"z": lambda bb, ss: (bb, ss, d), "self_cond": lambda bb, ss: (bb, ss, d),
                   "t": lambda bb, ss: (bb,), "guidance": lambda bb, ss: (bb,)}
        return [trt.Input(min_shape=per_row[n](b.min, s.min), opt_shape=per_row[n](b.opt, s.opt),
                          max_shape=per_row[n](b.max, s.max), dtype=traced.dtype, name=n) for n in names]

    def compile_options(self, spec: ExportSpec, autocast_in_trt: bool) -> dict[str, Any]:
        """Keywords for ``torch_tensorrt.dynamo.compile`` (besides the program and inputs)."""
        cfg = self.cfg
        opts: dict[str, Any] = {
            "min_block_size": cfg.min_block_size, "require_full_compilation": cfg.require_full_compilation,
            "use_fp32_acc": cfg.use_fp32_acc, "disable_tf32": cfg.disable_tf32,
            "hardware_compatible": cfg.hardware_compatible, "version_compatible": cfg.version_compatible,
            **cfg.compiler_options,
        }
        if cfg.optimization_level is not None:
            opts["optimization_level"] = cfg.optimization_level
        if cfg.workspace_size:
            opts["workspace_size"] = cfg.workspace_size
        if autocast_in_trt:
            opts.update(enable_autocast=True, autocast_low_precision_type=spec.dtype)
        opts["attn_bias_is_causal"] = False   # bidirectional attention; never overridable
        return opts

    def _build(self, trt: Any, traced: TracedBackbone, out_dir: Path, spec: ExportSpec,
               autocast_in_trt: bool) -> Built:
        suffix = "trt.pt2" if self.cfg.aot_inductor else "trt.ep"
        output_format = "aot_inductor" if self.cfg.aot_inductor else "exported_program"
        jobs = [("denoise", traced.denoise_program, DENOISE_INPUTS, traced.denoise_example,
                 traced.denoise_dynamic_shapes),
                ("decode", traced.decode_program, DECODE_INPUTS, traced.decode_example, traced.decode_dynamic_shapes)]
        files: dict[str, str] = {}
        for role, program, names, example, dynamic in jobs:
            if program is None:
                continue
            files[role] = f"{role}.{suffix}"
            try:
                compiled = trt.dynamo.compile(program, arg_inputs=self._inputs(trt, traced, names),
                                              **self.compile_options(spec, autocast_in_trt))
                trt.save(compiled, str(out_dir / files[role]), output_format=output_format,
                         arg_inputs=list(example()), dynamic_shapes=dynamic(), retrace=True)
            except Exception as exc:  # TensorRT raises its own error types from the builder
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ExportError(f"TensorRT compilation of the {role} module failed: {type(exc).__name__}: "
                                  f"{first}. Try precision_mode='autocast', a narrower --seq/--batch, or "
                                  "require_full_compilation=false to leave unsupported ops to PyTorch.") from exc
        return Built(files, {"runtime": output_format, "tensorrt": {
            "torch_tensorrt": getattr(trt, "__version__", None),
            "precision_mode": "autocast" if autocast_in_trt else "graph",
            "compile_options": {k: str(v) for k, v in self.compile_options(spec, autocast_in_trt).items()},
            "gpu": torch.cuda.get_device_name(traced.device) if traced.device.type == "cuda" else None}})

    # --- load -----------------------------------------------------------------------------
    def load(self, artifact_dir: Path, device: torch.device | str = "cuda") -> ArtifactRunner:
        manifest = read_manifest(artifact_dir)
        if manifest["format"] != self.format:
            raise ExportError(f"{artifact_dir} holds a {manifest['format']!r} export, not {self.format!r}")
        return self.open(Path(artifact_dir), manifest, torch.device(device))

    def open(self, artifact_dir: Path, manifest: dict[str, Any], device: torch.device) -> ArtifactRunner:
        trt = require_torch_tensorrt("loading a TensorRT artifact")   # registers tensorrt::execute_engine
        _check_device(device)
        files = manifest["files"]

        def fn(role: str) -> Any:
            if role not in files:
                return None
            path = str(artifact_dir / files[role])
            if manifest.get("runtime") == "aot_inductor":
                from torch._inductor import aoti_load_package
                return aoti_load_package(path)
            return trt.load(path).module()

        shapes = manifest["shapes"]
        return ArtifactRunner(capabilities_from(manifest), fn("denoise"), fn("decode"),
                              dtype=DTYPES[manifest["io_dtype"]], device=device,
                              batch=DimRange(**shapes["batch"]), seq=DimRange(**shapes["seq"]),
                              name=f"tensorrt artifact {artifact_dir}")
