"""What an export must cover: precision, dynamic batch/sequence ranges, parity thresholds.

One :class:`ExportSpec` drives every exporter (torch-export, ONNX, TensorRT), so the same
CLI flags mean the same thing for each format. Ranges are ``MIN:OPT:MAX`` like TensorRT
optimisation profiles; ``opt`` is the shape engines tune for and the example size used
when tracing. The model's target and flow path are not settings of the export: the caller
passes the bound target the model was trained with (see :func:`~.runner.export_backbone`).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import ConfigDict, Field, ValidationError, model_validator

from elfkit.config import StrictModel
from elfkit.errors import ExportError

Precision = Literal["fp32", "fp16", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Suggested in ecosystem.md §D.5 (Torch-TensorRT's own model tests gate on cosine > 0.99).
# max_abs is measured against max(1, |reference|_max) so O(10) logits are not held to an
# absolute tolerance meant for O(1) latents.
_DEFAULT_THRESHOLDS: dict[str, tuple[float, float, float]] = {
    #        rel_l2, max_abs, min_cosine
    "fp32": (1e-4, 1e-4, 0.99999),
    "fp16": (1e-2, 2e-2, 0.999),
    "bf16": (3e-2, 1e-1, 0.995),
}


class _Frozen(StrictModel):
    model_config = ConfigDict(frozen=True)


class DimRange(_Frozen):
    """A dynamic dimension: smallest, tuned-for and largest size, ``min ≤ opt ≤ max``."""

    min: int = Field(ge=1)
    """Smallest size the artifact accepts."""
    opt: int = Field(ge=1)
    """Size engines are tuned for (TensorRT opt profile); also the tracing example when inside the range."""
    max: int = Field(ge=1)
    """Largest size the artifact accepts."""

    @model_validator(mode="after")
    def _ordered(self) -> DimRange:
        if not self.min <= self.opt <= self.max:
            raise ValueError(f"need min <= opt <= max, got {self.min}:{self.opt}:{self.max}")
        return self

    @property
    def static(self) -> bool:
        return self.min == self.max

    def example(self) -> int:
        """A tracing size strictly inside (min, max) and ≥ 2.

        torch.export specialises a dimension traced at size 0/1 or at its lower bound
        (pytorch#176349), so the example must avoid both. A static range returns its size.
        """
        if self.static:
            return self.min
        lo, hi = max(self.min + 1, 2), self.max - 1
        if lo > hi:  # e.g. 1:1:2 — no size strictly inside; take max (≥2) and let export say so
            return max(self.max, 2)
        return min(max(self.opt, lo), hi)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


def parse_range(text: str, what: str = "range") -> DimRange:
    """``"MIN:OPT:MAX"`` (or ``"N"`` for a static size) → :class:`DimRange`.

    Used by ``elfkit export --batch/--seq``; a malformed value is an :class:`ExportError`
    that repeats what was given and the expected form.
    """
    parts = text.strip().split(":")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) == 1:
        nums = nums * 3
    if len(nums) != 3:
        raise ExportError(f"{what}: expected MIN:OPT:MAX (e.g. 1:8:64) or a single size, got {text!r}")
    try:
        return DimRange(min=nums[0], opt=nums[1], max=nums[2])
    except ValueError as exc:
        detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise ExportError(f"{what}: invalid range {text!r}: {detail}") from None


class ParityThresholds(_Frozen):
    """Largest deviation from eager fp32 an artifact may show before export is refused."""

    rel_l2: float = Field(gt=0)
    """Relative L2 error ‖a−b‖/‖b‖, per checked case."""
    max_abs: float = Field(gt=0)
    """Max abs error divided by max(1, max|reference|); derived v̂ gets this × 1/t_eps (its amplification)."""
    min_cosine: float = Field(ge=-1, le=1)
    """Smallest cosine similarity between flattened outputs."""

    @classmethod
    def for_precision(cls, precision: str) -> ParityThresholds:
        rel, mx, cos = _DEFAULT_THRESHOLDS[precision]
        return cls(rel_l2=rel, max_abs=mx, min_cosine=cos)


class ExportSpec(_Frozen):
    """Everything an exporter needs besides the backbone, its bound target and the output folder."""

    precision: Precision = "fp32"
    """Weights and activations dtype of the artifact; the parity reference is always eager fp32."""
    batch: DimRange = DimRange(min=1, opt=8, max=64)
    """Dynamic batch range."""
    seq: DimRange | None = None
    """Dynamic sequence range; None = 2:max_length/2:max_length from the backbone config."""
    device: str | None = None
    """Device to trace and check on; None = the exporter's default (cpu; cuda for TensorRT)."""
    parity: ParityThresholds | None = None
    """Refusal thresholds; None = the defaults for ``precision``."""
    check_parity: bool = True
    """Compare against eager fp32 before writing the manifest (refuse above thresholds)."""
    parity_times: tuple[float, ...] = (0.02, 0.25, 0.5, 0.75, 0.98)
    """Times at which the denoiser is compared (v̂'s 1/(1−t) amplification peaks near 1)."""
    seed: int = 0
    """Seed of the parity inputs."""

    def thresholds(self) -> ParityThresholds:
        return self.parity or ParityThresholds.for_precision(self.precision)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    def seq_range(self, max_length: int | None) -> DimRange:
        """The sequence range, defaulted from and checked against the backbone's ``max_length``."""
        if self.seq is None:
            if max_length is None:
                raise ExportError("the backbone config has no max_length: pass a sequence range (--seq MIN:OPT:MAX)")
            return DimRange(min=min(2, max_length), opt=max(min(2, max_length), max_length // 2), max=max_length)
        if max_length is not None and self.seq.max > max_length:
            raise ExportError(f"--seq max {self.seq.max} exceeds the backbone's max_length {max_length} "
                              f"(its position tables stop there); use --seq {self.seq.min}:"
                              f"{min(self.seq.opt, max_length)}:{max_length} or less")
        return self.seq
