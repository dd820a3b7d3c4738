"""Stage 1 of every export: the backbone's two modes as ``torch.export`` programs.

Each exporter starts from the same :class:`TracedBackbone`: the denoise and decode
modules (autocast to the export precision) traced with a shared dynamic ``batch`` and
``seq`` dimension, plus the eager fp32 modules that parity compares against. ONNX translates the
programs, TensorRT compiles them, torch-export saves them as they are.

Input order is part of the artifact format (the runner feeds positionally):
    denoise: z (B,S,D), t (B,), self_cond (B,S,D), guidance (B,)  → out (B,S,D)
    decode:  z (B,S,D), guidance (B,)                             → logits (B,S,V)
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from elfkit.components.exporters.spec import DimRange, ExportSpec
from elfkit.contracts import Backbone
from elfkit.errors import ExportError
from elfkit.records import ModelCapabilities

if TYPE_CHECKING:  # torch.export costs ~0.4 s to import; every CLI start builds the registry
    from torch.export import ExportedProgram

DENOISE_INPUTS: tuple[str, ...] = ("z", "t", "self_cond", "guidance")
DECODE_INPUTS: tuple[str, ...] = ("z", "guidance")


def export_modules(backbone: Backbone) -> tuple[nn.Module, nn.Module]:
    """The (denoise, decode) nn.Modules with tensor-only signatures for tracing.

    A backbone may provide its own ``export_modules()``; otherwise the standard wrappers
    of :mod:`elfkit.components.backbones.runner` (which only use the backbone contract
    ``forward(z, t, *, self_cond, guidance, decode)`` / ``decode_logits``) are used.
    """
    own: Callable[[], tuple[nn.Module, nn.Module]] | None = getattr(backbone, "export_modules", None)
    if callable(own):
        return own()
    from elfkit.components.backbones.runner import DecodeModule, DenoiseModule
    return DenoiseModule(backbone), DecodeModule(backbone)


class _Positional(nn.Module):
    """The fixed artifact signature around a denoise/decode module.

    Inputs the model has no capability for stay in the signature (so every artifact has
    the same layout) but are passed on as None, which is what the backbone expects.
    Reduced precision is autocast, as in training: parameters stay fp32, the backbone
    keeps its own fp32 islands (input projections, embedders, heads), the blocks run in
    ``dtype``; tracing turns this into explicit casts, which TensorRT's strong typing and
    onnxruntime follow.
    """

    def __init__(self, inner: nn.Module, keep: tuple[bool, ...], dtype: torch.dtype, device_type: str) -> None:
        super().__init__()
        self.inner, self.keep, self.dtype, self.device_type = inner, keep, dtype, device_type

    def _run(self, *args: Tensor) -> Tensor:
        kept = tuple(a if k else None for a, k in zip(args, self.keep, strict=True))
        if self.dtype == torch.float32:
            return self.inner(*kept)
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.inner(*kept)


class _DenoiseSignature(_Positional):
    def forward(self, z: Tensor, t: Tensor, self_cond: Tensor, guidance: Tensor) -> Tensor:
        return self._run(z, t, self_cond, guidance)          # (B, S, D)


class _DecodeSignature(_Positional):
    def forward(self, z: Tensor, guidance: Tensor) -> Tensor:
        return self._run(z, guidance)                        # (B, S, V)


def backbone_config(backbone: nn.Module) -> dict[str, Any] | None:
    """The backbone's config as JSON-able dict (for the manifest), if it exposes one."""
    cfg = getattr(backbone, "cfg", None) or getattr(backbone, "config", None)
    if cfg is None:
        return None
    if hasattr(cfg, "model_dump"):
        return cfg.model_dump(mode="json")
    return dict(cfg) if isinstance(cfg, dict) else None


def max_length_of(backbone: nn.Module) -> int | None:
    cfg = backbone_config(backbone) or {}
    value = cfg.get("max_length")
    return int(value) if value is not None else None


@dataclass
class TracedBackbone:
    """Both modes of one backbone, ready for an exporter, plus their fp32 eager reference."""

    capabilities: ModelCapabilities
    dtype: torch.dtype                 # of the artifact's inputs/outputs (fp32: precision is inside)
    device: torch.device
    batch: DimRange
    seq: DimRange
    denoise: nn.Module                 # fixed signature, autocast to the export precision
    decode: nn.Module | None           # None when the model has no decoder head
    reference_denoise: nn.Module       # same fp32 modules without autocast (parity reference)
    reference_decode: nn.Module | None
    denoise_program: ExportedProgram
    decode_program: ExportedProgram | None

    # --- example inputs and dynamic shapes (shared by exporters) ----------------------
    def denoise_example(self, batch: int | None = None, seq: int | None = None) -> tuple[Tensor, ...]:
        b, s, d = batch or self.batch.example(), seq or self.seq.example(), self.capabilities.latent_dim
        kw = {"dtype": self.dtype, "device": self.device}
        # (B,S,D) z, (B,) t, (B,S,D) self_cond, (B,) guidance
        return (torch.randn(b, s, d, **kw), torch.rand(b, **kw), torch.randn(b, s, d, **kw),
                1 + torch.rand(b, **kw))

    def decode_example(self, batch: int | None = None, seq: int | None = None) -> tuple[Tensor, ...]:
        z, _, _, g = self.denoise_example(batch, seq)
        return (z, g)

    def dims(self) -> tuple[Any, Any]:
        """Shared ``batch``/``seq`` dims (a static range stays an int)."""
        from torch.export import Dim
        b = self.batch.min if self.batch.static else Dim("batch", min=self.batch.min, max=self.batch.max)
        s = self.seq.min if self.seq.static else Dim("seq", min=self.seq.min, max=self.seq.max)
        return b, s

    def denoise_dynamic_shapes(self) -> tuple[dict[int, Any], ...]:
        b, s = self.dims()
        return ({0: b, 1: s}, {0: b}, {0: b, 1: s}, {0: b})

    def decode_dynamic_shapes(self) -> tuple[dict[int, Any], ...]:
        b, s = self.dims()
        return ({0: b, 1: s}, {0: b})

    def input_layout(self) -> dict[str, Any]:
        """Symbolic input/output shapes for the manifest."""
        d, v = self.capabilities.latent_dim, self.capabilities.vocab_size
        bsd = ["batch", "seq", d]
        out: dict[str, Any] = {"denoise": {"inputs": {"z": bsd, "t": ["batch"], "self_cond": bsd,
                                                      "guidance": ["batch"]},
                                           "outputs": {"out": bsd}}}
        if self.decode is not None:
            out["decode"] = {"inputs": {"z": bsd, "guidance": ["batch"]},
                             "outputs": {"logits": ["batch", "seq", v]}}
        return out


@contextlib.contextmanager
def quiet_torch_deprecations() -> Iterator[None]:
    """Hide torch's own pytree deprecation noise (``LeafSpec``) raised inside export/compile
    internals: not caused by, nor fixable in, the caller's code."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        yield


def _export(module: nn.Module, example: tuple[Tensor, ...], dynamic_shapes: Any, what: str,
            inline_autocast: bool) -> ExportedProgram:
    try:
        with torch.no_grad(), quiet_torch_deprecations():
            program = torch.export.export(module, example, dynamic_shapes=dynamic_shapes)
            return program.run_decompositions({}) if inline_autocast else program
    except Exception as exc:  # torch.export raises many kinds (UserError, guard failures, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"torch.export failed on the {what} module: {type(exc).__name__}: {first}\n"
            "Common causes: a shape-dependent Python branch, data-dependent ops (.item(), nonzero), or a "
            "range the model cannot take (e.g. --seq beyond its position tables). Narrow --batch/--seq "
            "or fix the model code.") from exc


def trace_backbone(backbone: nn.Module, spec: ExportSpec, device: torch.device | str) -> TracedBackbone:
    """Wrap and ``torch.export`` both modes of ``backbone`` with dynamic batch/seq.

    Works on an fp32 copy in eval mode (the caller's module is left as it was). With a
    reduced precision the autocast region is inlined into explicit casts
    (``run_decompositions({})``) so downstream compilers see plain aten ops.
    """
    caps: ModelCapabilities | None = getattr(backbone, "capabilities", None)
    if caps is None or not isinstance(backbone, Backbone):
        raise ExportError(f"{type(backbone).__name__} has no .capabilities; only elfkit backbones can be exported")
    device = torch.device(device)
    seq = spec.seq_range(max_length_of(backbone))
    model = copy.deepcopy(backbone).to(device=device, dtype=torch.float32).eval()
    denoise, decode = export_modules(model)
    sc, g = bool(caps.self_conditioning), bool(caps.guidance_tokens)
    has_decode = bool(caps.decoder_head)

    def den(dtype: torch.dtype) -> nn.Module:
        return _DenoiseSignature(denoise, (True, True, sc, g), dtype, device.type).eval()

    def dec(dtype: torch.dtype) -> nn.Module | None:
        return _DecodeSignature(decode, (True, g), dtype, device.type).eval() if has_decode else None

    traced = TracedBackbone(
        capabilities=caps, dtype=torch.float32, device=device, batch=spec.batch, seq=seq,
        denoise=den(spec.dtype), decode=dec(spec.dtype),
        reference_denoise=den(torch.float32), reference_decode=dec(torch.float32),
        denoise_program=None, decode_program=None,  # type: ignore[arg-type]  # filled below
    )
    inline = spec.dtype != torch.float32
    traced.denoise_program = _export(traced.denoise, traced.denoise_example(), traced.denoise_dynamic_shapes(),
                                     "denoise", inline)
    if traced.decode is not None:
        traced.decode_program = _export(traced.decode, traced.decode_example(), traced.decode_dynamic_shapes(),
                                        "decode", inline)
    return traced
