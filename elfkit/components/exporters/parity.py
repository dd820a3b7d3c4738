"""Export-time parity: an artifact must match eager fp32 before it gets a manifest.

Protocol (ecosystem.md §D.5): random inputs at t ∈ {0.02, 0.25, 0.5, 0.75, 0.98}, at the
min, opt and max shapes of the exported ranges plus an odd length; for each case the max
abs error, relative L2 error and cosine similarity of the denoiser output, of the v̂
derived from it (the 1/max(1−t, t_eps) factor amplifies x̂ error near t=1) and of the
decoder logits. Each batch row carries one of the times, so one forward per shape
covers every t. Inputs lie on the model's own flow path and v̂ uses its own target: the
caller's bound target supplies both (a plugin target works like a built-in one).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from elfkit.components.exporters.spec import DimRange, ExportSpec, ParityThresholds
from elfkit.components.targets import Target
from elfkit.contracts import ModelRunner
from elfkit.errors import ExportError


@dataclass(frozen=True)
class Metrics:
    max_abs: float
    rel_l2: float
    cosine: float
    ref_absmax: float

    @property
    def scaled_max_abs(self) -> float:
        """max abs error in units of max(1, max|reference|) (what ``max_abs`` thresholds gate)."""
        return self.max_abs / max(1.0, self.ref_absmax)


def compare(actual: Tensor, reference: Tensor) -> Metrics:
    """Error figures of ``actual`` against ``reference`` (same shape), computed in float64.

    Non-finite values in ``actual`` give infinite errors and cosine −1 (always refused).
    Two all-zero tensors count as identical (cosine 1), a zero reference with a nonzero
    actual as infinitely wrong.
    """
    a, b = actual.detach().double().flatten().cpu(), reference.detach().double().flatten().cpu()
    if a.shape != b.shape:
        raise ExportError(f"parity: artifact output shape {tuple(actual.shape)} != eager {tuple(reference.shape)}")
    ref_absmax = float(b.abs().max()) if b.numel() else 0.0
    if not torch.isfinite(a).all():
        return Metrics(math.inf, math.inf, -1.0, ref_absmax)
    diff = (a - b).norm().item()
    na, nb = a.norm().item(), b.norm().item()
    rel = diff / nb if nb > 0 else (0.0 if diff == 0 else math.inf)
    if na == 0 and nb == 0:
        cos = 1.0
    elif na == 0 or nb == 0:
        cos = 0.0
    else:
        cos = float(torch.dot(a, b) / (na * nb))
    return Metrics(float((a - b).abs().max()) if a.numel() else 0.0, rel, cos, ref_absmax)


def violations(m: Metrics, th: ParityThresholds) -> list[str]:
    out = []
    if not m.rel_l2 <= th.rel_l2:
        out.append(f"rel_l2 {m.rel_l2:.3g} > {th.rel_l2:g}")
    if not m.scaled_max_abs <= th.max_abs:
        out.append(f"max_abs {m.max_abs:.3g} (×1/max(1,{m.ref_absmax:.3g})) > {th.max_abs:g}")
    if not m.cosine >= th.min_cosine:
        out.append(f"cosine {m.cosine:.6f} < {th.min_cosine:g}")
    return out


@dataclass(frozen=True)
class ParityCase:
    output: str            # "denoise" | "v" | "decode"
    batch: int
    seq: int
    t: float | None        # None for decode (always t=1)
    metrics: Metrics


@dataclass
class ParityReport:
    thresholds: ParityThresholds
    precision: str
    cases: list[ParityCase] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def failures(self) -> list[tuple[ParityCase, list[str]]]:
        return [(c, v) for c in self.cases if (v := violations(c.metrics, self.thresholds))]

    @property
    def passed(self) -> bool:
        return not self.failures()

    def worst(self) -> dict[str, dict[str, float]]:
        """Per output: the worst value of each figure over all cases."""
        out: dict[str, dict[str, float]] = {}
        for c in self.cases:
            w = out.setdefault(c.output, {"max_abs": 0.0, "rel_l2": 0.0, "cosine": 1.0, "scaled_max_abs": 0.0})
            w["max_abs"] = max(w["max_abs"], c.metrics.max_abs)
            w["scaled_max_abs"] = max(w["scaled_max_abs"], c.metrics.scaled_max_abs)
            w["rel_l2"] = max(w["rel_l2"], c.metrics.rel_l2)
            w["cosine"] = min(w["cosine"], c.metrics.cosine)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "precision": self.precision, "thresholds": self.thresholds.model_dump(),
            "worst": self.worst(), "notes": self.notes,
            "cases": [{"output": c.output, "batch": c.batch, "seq": c.seq, "t": c.t, **asdict(c.metrics)}
                      for c in self.cases],
        }

    def summary(self) -> str:
        rows = [f"{k}: max_abs {w['max_abs']:.3g}, rel_l2 {w['rel_l2']:.3g}, cosine {w['cosine']:.6f}"
                for k, w in self.worst().items()]
        return "; ".join(rows)

    def raise_if_failed(self, what: str) -> None:
        bad = self.failures()
        if not bad:
            return
        lines = [f"  {c.output} B={c.batch} S={c.seq}" + (f" t={c.t:g}" if c.t is not None else "") + ": "
                 + ", ".join(v) for c, v in bad[:8]]
        more = f"\n  ... and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise ExportError(
            f"{what}: parity check against eager fp32 failed at precision {self.precision} "
            f"({len(bad)}/{len(self.cases)} cases over threshold):\n" + "\n".join(lines) + more +
            "\nTry a wider precision (--precision fp32/bf16), or loosen the thresholds in the export spec "
            "if this deviation is acceptable for your use.")


def parity_shapes(batch: DimRange, seq: DimRange) -> list[tuple[int, int]]:
    """min, opt, max and an odd length inside the range (deduplicated, in that order)."""
    odd = [n for n in (seq.opt + 1, seq.opt - 1, seq.opt, seq.max - 1) if n % 2 and seq.min <= n <= seq.max]
    shapes = [(batch.min, seq.min), (batch.opt, seq.opt), (batch.max, seq.max)] + [(batch.opt, n) for n in odd[:1]]
    return list(dict.fromkeys(shapes))


def check_parity(artifact: ModelRunner, reference: ModelRunner, spec: ExportSpec, batch: DimRange, seq: DimRange,
                 target: Target, device: torch.device | str = "cpu") -> ParityReport:
    """Compare ``artifact`` with the fp32 ``reference`` on random inputs (deterministic in ``spec.seed``).

    ``target`` is bound to the model's flow path: inputs are drawn on that path and v̂ is
    derived with that target's conversions.
    """
    caps = reference.capabilities
    path = target.path
    report = ParityReport(thresholds=spec.thresholds(), precision=spec.precision)
    gen = torch.Generator().manual_seed(spec.seed)
    times = torch.tensor(spec.parity_times, dtype=torch.float32)
    zero_ref: set[str] = set()
    for b, s in parity_shapes(batch, seq):
        d = caps.latent_dim
        t = times[torch.arange(b) % len(times)]                                   # (B,) one time per row
        x = torch.randn(b, s, d, generator=gen)
        z = path.interpolate(x, torch.randn(b, s, d, generator=gen), t)           # (B,S,D) on the path
        sc = torch.randn(b, s, d, generator=gen) if caps.self_conditioning else None
        g = (0.5 + 4.5 * torch.rand(b, generator=gen)) if caps.guidance_tokens else None
        z, t = z.to(device), t.to(device)
        sc = sc.to(device) if sc is not None else None
        g = g.to(device) if g is not None else None
        out_a, out_r = artifact.denoise(z, t, sc, g), reference.denoise(z, t, sc, g)
        v_a, v_r = target.predict(out_a.float(), z, t).v, target.predict(out_r.float(), z, t).v
        if not out_r.abs().max() > 0:
            zero_ref.add("denoise")
        for tv in spec.parity_times:
            rows = (t - tv).abs() < 1e-6
            if rows.any():
                report.cases.append(ParityCase("denoise", b, s, tv, compare(out_a[rows], out_r[rows])))
                report.cases.append(ParityCase("v", b, s, tv, compare(v_a[rows], v_r[rows])))
        if caps.decoder_head:
            logits_r = reference.decode(x.to(device), g)
            if not logits_r.abs().max() > 0:
                zero_ref.add("decode")
            report.cases.append(ParityCase("decode", b, s, None, compare(artifact.decode(x.to(device), g), logits_r)))
    for name in sorted(zero_ref):
        report.notes.append(f"the eager {name} output is identically zero on some inputs (zero-initialised head of "
                            "an untrained model?): parity there proves little")
    return report
