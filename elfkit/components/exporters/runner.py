"""Exported artifacts as :class:`~elfkit.contracts.ModelRunner` s, and the export entry point.

``load_runner(dir, registry=...)`` reads ``manifest.json`` and asks the exporter registered
under its ``format`` to open the files; what comes back plugs into the same samplers and
guidance as the eager backbone (``elfkit.generation.generate(runner, ...)``).
``export_backbone(...)`` is what ``elfkit export`` calls. Both use the registry they are
given (the run's, with its plugins): this layer never builds one of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError
from torch import Tensor, nn

from elfkit.components.exporters.manifest import read_manifest
from elfkit.components.exporters.spec import DimRange, ExportSpec
from elfkit.components.targets import Target
from elfkit.contracts import Exporter, ModelRunner
from elfkit.errors import ExportError, MissingDependencyError, RegistryError
from elfkit.records import ModelCapabilities

if TYPE_CHECKING:  # the registry sits above the components; only its type is needed here
    from elfkit.registry import Registry

TENSORRT_INSTALL = ('pip install "elfkit[trt]" ./plugins/elfkit-tensorrt  (on a CUDA 13 machine that can reach '
                    "NVIDIA's package index, pypi.nvidia.com)")

Fn = Callable[..., Tensor]


class ArtifactRunner:
    """A :class:`ModelRunner` over two compiled callables with the exported input order.

    ``denoise_fn(z, t, self_cond, guidance) -> out`` and ``decode_fn(z, guidance) -> logits``
    take tensors in the artifact's dtype on its device. This class accepts exactly what the
    eager backbone accepts (``self_cond=None`` → the zero slot; ``guidance`` required iff
    the model has guidance tokens), fills the fixed input layout (placeholders the graph
    ignores), checks shapes against the exported ranges, splits batches larger than the
    range, and returns results in the input's dtype on the caller's device.
    """

    def __init__(self, capabilities: ModelCapabilities, denoise_fn: Fn, decode_fn: Fn | None, *,
                 dtype: torch.dtype, device: torch.device | str, batch: DimRange | None = None,
                 seq: DimRange | None = None, name: str = "artifact") -> None:
        self.capabilities = capabilities
        self._denoise, self._decode = denoise_fn, decode_fn
        self.dtype, self.device = dtype, torch.device(device)
        self.batch, self.seq, self.name = batch, seq, name

    # --- ModelRunner ----------------------------------------------------------------------
    def denoise(self, z: Tensor, t: Tensor, self_cond: Tensor | None, guidance: Tensor | None) -> Tensor:
        b = self._check(z)
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device).reshape(-1)
        t = t.expand(b) if t.numel() == 1 else t                          # (B,)
        if self_cond is not None and not self.capabilities.self_conditioning:
            raise ExportError(f"{self.name}: this model has no self-conditioning slot; pass self_cond=None")
        sc = torch.zeros_like(z) if self_cond is None else self_cond      # ELF's "no self-cond" slot
        return self._batched(self._denoise, z, (z, t, sc, self._guidance(guidance, b, z)))

    def decode(self, z: Tensor, guidance: Tensor | None) -> Tensor:
        if self._decode is None:
            raise ExportError(f"{self.name}: this model has no decoder head, so the artifact has no decode module")
        b = self._check(z)
        return self._batched(self._decode, z, (z, self._guidance(guidance, b, z)))

    # --- helpers --------------------------------------------------------------------------
    def _guidance(self, guidance: Tensor | None, b: int, like: Tensor) -> Tensor:
        """The (B,) w input. Same rules as the eager backbone: required with guidance tokens,
        refused without them (the graph then ignores the placeholder zeros)."""
        if not self.capabilities.guidance_tokens:
            if guidance is not None:
                raise ExportError(f"{self.name}: this model has no guidance tokens; pass guidance=None")
            return torch.zeros(b, dtype=like.dtype, device=like.device)
        if guidance is None:
            raise ExportError(f"{self.name}: this model has guidance tokens: pass the self-cond CFG scale w as "
                              "guidance=(B,) on every call (w=1: no guidance)")
        g = torch.as_tensor(guidance, dtype=like.dtype, device=like.device).reshape(-1)
        return g.expand(b) if g.numel() == 1 else g

    def _check(self, z: Tensor) -> int:
        d = self.capabilities.latent_dim
        if z.dim() != 3 or z.shape[-1] != d:
            raise ExportError(f"{self.name}: expected z of shape (B, S, {d}), got {tuple(z.shape)}")
        s = z.shape[1]
        if self.seq is not None and not self.seq.min <= s <= self.seq.max:
            raise ExportError(f"{self.name}: sequence length {s} is outside the exported range {self.seq} "
                              f"(MIN:OPT:MAX); re-export with --seq covering {s}")
        if self.batch is not None and z.shape[0] < self.batch.min:
            raise ExportError(f"{self.name}: batch {z.shape[0]} is below the exported minimum {self.batch.min}")
        return z.shape[0]

    def _batched(self, fn: Fn, like: Tensor, args: tuple[Tensor, ...]) -> Tensor:
        """Run ``fn`` in chunks of at most ``batch.max`` rows (an artifact's batch range is
        fixed at export; sampling 1000 sequences should not need a re-export)."""
        cast = tuple(a.to(device=self.device, dtype=self.dtype).contiguous() for a in args)
        step = self.batch.max if self.batch is not None else cast[0].shape[0]
        outs = []
        for i in range(0, cast[0].shape[0], step):
            part = tuple(a[i:i + step] for a in cast)
            if self.batch is not None and part[0].shape[0] < self.batch.min:  # tail below min: pad with row 0
                pad = self.batch.min - part[0].shape[0]
                part = tuple(torch.cat([p, p[:1].expand(pad, *p.shape[1:])]) for p in part)
                outs.append(fn(*part)[:-pad])
            else:
                outs.append(fn(*part))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        return out.to(device=like.device, dtype=like.dtype if like.is_floating_point() else torch.float32)


def eager_reference_runner(denoise: nn.Module, decode: nn.Module | None, capabilities: ModelCapabilities,
                           device: torch.device | str) -> ArtifactRunner:
    """The fp32 eager modules behind the same adapter (parity reference, benchmarks)."""
    def call(module: nn.Module) -> Fn:
        def fn(*args: Tensor) -> Tensor:
            with torch.no_grad():
                return module(*args)
        return fn
    return ArtifactRunner(capabilities, call(denoise), call(decode) if decode is not None else None,
                          dtype=torch.float32, device=device, name="eager")


# ----------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------
def get_exporter(fmt: str, registry: Registry, config: Mapping[str, Any] | None = None) -> Exporter:
    """Build the exporter registered as ``fmt``; a missing TensorRT plugin says how to install it."""
    try:
        spec = registry.get("exporter", fmt)
    except RegistryError:
        if fmt == "tensorrt":
            raise MissingDependencyError(
                "the TensorRT exporter is a separate plugin and is not installed. Install it with\n"
                f"  {TENSORRT_INSTALL}\n"
                "On a machine without TensorRT use --format torch-export (AOTInductor) or --format onnx.") from None
        raise
    try:
        return spec.build(dict(config or {}))
    except ValidationError as exc:
        raise ExportError(f"invalid config for exporter {fmt!r}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']} "
                          f"(allowed keys: {', '.join(spec.config.model_fields)})") from None


def export_backbone(backbone: nn.Module, fmt: str, out_dir: Path, spec: ExportSpec, registry: Registry, *,
                    target: Target, config: Mapping[str, Any] | None = None,
                    metadata: Mapping[str, Any] | None = None) -> Path:
    """Export ``backbone`` with the exporter registered as ``fmt``; returns the manifest path.

    ``target`` is the model's target bound to its flow path (``Components.target``): the
    parity check derives v̂ with it and the manifest records it. ``config`` is the exporter's
    own config (e.g. ``{"aot_inductor": True}``); ``metadata`` (checkpoint path, recipe,
    step...) is copied into the manifest under ``"source"``.
    Raises :class:`ExportError` (export failed or parity refused) or
    :class:`MissingDependencyError` (format not available here).
    """
    exporter = get_exporter(fmt, registry, config)
    return exporter.export(backbone, Path(out_dir), spec, target=target, metadata=dict(metadata or {}))


def load_runner(artifact_dir: Path, device: torch.device | str = "cpu", *, registry: Registry) -> ModelRunner:
    """Open an export folder as a :class:`ModelRunner`, dispatching on the manifest's ``format``."""
    manifest = read_manifest(Path(artifact_dir))
    exporter = get_exporter(manifest["format"], registry, manifest.get("exporter_config") or {})
    return exporter.load(Path(artifact_dir), device)
