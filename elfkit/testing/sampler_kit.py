"""``check_sampler``: the conformance suite every sampler (built-in or plugin) must pass.

One call in a test::

    from elfkit.testing import check_sampler

    def test_my_sampler():
        check_sampler(MySampler)                   # class, factory, registry name or instance
        check_sampler(MySampler, MyConfig(steps=8, churn=0.0))

The model behind the denoiser is the closed-form Gaussian toy (:class:`GaussianToy`), whose
x̂ depends on (z, t), so an estimate that is extrapolated, stale or mixed up shows. Checks, each
failing with a ``ConformanceError`` that starts with ``[name]``, says what was expected and what
came back, and carries the sampler's own traceback when its code raised:

- ``protocol``: ``steps`` (int > 0), ``nfe(steps) -> int ≥ 1``, ``__call__(denoiser, z, grid, *,
  noise_scale, generator)`` returning a :class:`SamplerOutput`; ``order``, if declared, an int ≥ 1;
- ``calls``: on grids of 1, 2, 3 and 7 intervals the denoiser is called exactly ``nfe(steps)``
  times with (B,) times in [0, 1) of z's dtype and the output's nfe is the call count; inputs are
  not modified;
- ``self-conditioning``: the first call gets ``None``, every later call exactly the previous
  call's x̂ (not an extrapolated or combined estimate);
- ``x_hat``: the output's ``x_hat`` is the last call's x̂;
- ``ends-at-x̂``: the last call is in the final interval and the step into t = 1 returns that
  call's x̂ exactly — with ELF's clamp ``1−t ≥ 0.05`` in the model's velocity, so integrating
  the velocity over a last interval that starts above 0.95 fails;
- ``grids``: grids with ties, points above 0.95 and very short first intervals give finite
  output, ``nfe(steps)`` calls and still end on x̂;
- ``determinism``: the same seeded generator gives identical output whatever the global RNG;
- ``stateless``: no attribute changes, and a run nested inside another run's denoiser call
  (same instance) leaves both equal to separate runs — and does not crash them;
- ``shapes``: batch size 1 and odd sequence lengths;
- ``dtype-device``: float32 and float64 latents (with a float32 grid, as time components
  produce) keep their dtype and device (CUDA too when available);
- ``transport``: on the toy with the exact x̂, a fine uniform grid carries N(0, s²) to
  N(μ, σ²): per-dimension |mean error| ≤ ``mean_tol``·σ and |std/σ − 1| ≤ ``std_rtol``.
  Deliberately biased samplers (ELF's churn at large γ contracts the variance, see
  ``elfkit.components.samplers.sde``) pass a config in which they are near-exact;
- ``order`` (samplers that declare ``order = p``): the error of the final z against the toy's
  exact flow map ``z₁ = μ + (σ/s)·z₀`` must fall at least as ``N^−(p − ½)`` over uniform grids
  of 128 … 1024 intervals (fine grids, because an exponential integrator's λ-steps at both ends
  of a uniform t-grid stay O(1) and add a log N factor). Stochastic configs declare ``None``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor

from elfkit.contracts import Denoiser, Sampler
from elfkit.core import flow
from elfkit.records import Prediction, SamplerOutput
from elfkit.testing._build import ConformanceError, builder, check_unchanged, fail, raised, snapshot
from elfkit.testing.toy import GaussianToy

TOY = GaussianToy()
ELF_TOY = GaussianToy(t_eps=flow.T_EPS)
"""The same toy with ELF's clamp on 1−t in the reported velocity, as a real x-predicting model."""

ORDER_STEPS = (128, 256, 512, 1024)


@dataclass
class _Call:
    z: Tensor
    t: Tensor
    self_cond: Tensor | None
    pred: Prediction


class _Recorder:
    """Wraps a denoiser and records every call (inputs cloned, outputs kept)."""

    def __init__(self, inner: Denoiser, hook: Callable[[int], None] | None = None) -> None:
        self.inner, self.hook, self.calls = inner, hook, []

    def __call__(self, z: Tensor, t: Tensor, self_cond: Tensor | None = None) -> Prediction:
        if self.hook is not None:
            self.hook(len(self.calls))
        pred = self.inner(z, t, self_cond)
        self.calls.append(_Call(z.clone(), t.clone(), None if self_cond is None else self_cond.clone(), pred))
        return pred


def _grid(steps: int, seed: int) -> Tensor:
    """A random increasing float32 grid 0 < … ≤ 0.9 < 1 with ``steps`` intervals."""
    g = torch.Generator().manual_seed(seed)
    inner = torch.sort(0.02 + 0.88 * torch.rand(steps - 1, generator=g)).values
    return torch.cat([torch.zeros(1), inner, torch.ones(1)])


HARD_GRIDS: dict[str, Tensor] = {
    "a tie in the middle": torch.tensor([0.0, 0.3, 0.3, 0.7, 1.0]),
    "a tie before the last interval": torch.tensor([0.0, 0.4, 0.8, 0.8, 1.0]),
    "points above 0.95": torch.tensor([0.0, 0.5, 0.96, 0.99, 1.0]),
    "64 uniform intervals": torch.linspace(0, 1, 65),
    "a very short first interval": torch.tensor([0.0, 1e-6, 0.4, 0.8, 1.0]),
    "two very short first intervals": torch.tensor([0.0, 1e-4, 2e-4, 0.5, 1.0]),
}
"""float32 grids (as time components draw them) that break samplers which divide by step
sizes, integrate a clamped velocity into t = 1 or assume a long first step."""


def _gen(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _run(sampler: Sampler, denoiser: Denoiser, z: Tensor, grid: Tensor, seed: int | None = 0,
         noise_scale: float = TOY.noise_scale) -> SamplerOutput:
    gen = None if seed is None else _gen(seed, z.device)
    out = sampler(denoiser, z, grid, noise_scale=noise_scale, generator=gen)
    if not isinstance(out, SamplerOutput):
        raise fail("protocol", f"a sampler must return elfkit.contracts.SamplerOutput, got {type(out).__name__}")
    return out


def _max_diff(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item()


def _fmt_grid(grid: Tensor) -> str:
    values = grid.tolist()
    shown = values if len(values) <= 8 else values[:3] + ["…"] + values[-3:]
    return "[" + ", ".join(v if isinstance(v, str) else f"{v:.4g}" for v in shown) + "]"


# ----------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------
def _check_protocol(sampler: Any) -> None:
    if not isinstance(sampler, Sampler):
        raise fail("protocol", f"{type(sampler).__name__} lacks `steps`, `nfe` or `__call__` "
                               "(see elfkit.contracts.Sampler)")
    if not isinstance(sampler.steps, int) or isinstance(sampler.steps, bool) or sampler.steps < 1:
        raise fail("protocol", f"`steps` must be a positive int, got {sampler.steps!r}")
    for k in (1, 2, 5, sampler.steps):
        n = sampler.nfe(k)
        if not isinstance(n, int) or n < 1:
            raise fail("protocol", f"nfe({k}) must be a positive int, got {n!r}")
    order = getattr(sampler, "order", None)
    if order is not None and (not isinstance(order, int) or isinstance(order, bool) or order < 1):
        raise fail("protocol", f"`order` must be None or an int ≥ 1 (the convergence order the kit measures), "
                               f"got {order!r}")
    try:
        inspect.signature(sampler.__call__).bind(None, None, None, noise_scale=1.0, generator=None)
    except TypeError as exc:
        raise fail("protocol", "the call signature must accept (denoiser, z, grid, *, noise_scale, "
                               f"generator): {exc}") from None


def _recorded_run(sampler: Sampler, grid: Tensor, seed: int, toy: GaussianToy = TOY
                  ) -> tuple[Tensor, SamplerOutput, list[_Call]]:
    z0 = toy.prior((2, 5), _gen(seed))
    z_in, grid_in = z0.clone(), grid.clone()
    rec = _Recorder(toy.denoiser())
    out = _run(sampler, rec, z0, grid, seed=seed)
    steps = grid.numel() - 1
    where = f"on the grid {_fmt_grid(grid)}"
    n, expected = len(rec.calls), sampler.nfe(steps)
    if n != expected:
        raise fail("calls", f"{where}: expected nfe({steps}) = {expected} denoiser calls, got {n}")
    if out.nfe != n:
        raise fail("calls", f"{where}: expected SamplerOutput.nfe = {n} (the calls made), got {out.nfe}")
    if not torch.equal(z0, z_in) or not torch.equal(grid, grid_in):
        raise fail("calls", f"{where}: the sampler modified its input z or grid in place")
    return z0, out, rec.calls


def _check_calls(sampler: Sampler) -> None:
    for steps in (1, 2, 3, 7):
        grid = _grid(steps, seed=steps)
        z0, _, calls = _recorded_run(sampler, grid, seed=100 + steps)
        where = f"on a {steps}-interval grid"
        for i, c in enumerate(calls):
            if c.t.shape != (z0.shape[0],) or c.t.dtype != z0.dtype:
                raise fail("calls", f"{where}: call {i}: expected t of shape ({z0.shape[0]},) and dtype {z0.dtype}, "
                                    f"got {tuple(c.t.shape)} {c.t.dtype} (see elfkit.components.samplers.base"
                                    ".batch_time)")
            if c.t.min() < 0 or c.t.max() >= 1:
                raise fail("calls", f"{where}: call {i}: expected times in [0, 1), got t = {c.t.tolist()} "
                                    "(x-prediction is clamped at t → 1)")


def _check_self_conditioning(sampler: Sampler) -> None:
    for steps in (2, 3, 7):
        _, _, calls = _recorded_run(sampler, _grid(steps, seed=steps), seed=200 + steps)
        where = f"on a {steps}-interval grid"
        if calls[0].self_cond is not None:
            raise fail("self-conditioning", f"{where}: expected self_cond = None at the first call, got a tensor")
        for i in range(1, len(calls)):
            got, expected = calls[i].self_cond, calls[i - 1].pred.x
            if got is None:
                raise fail("self-conditioning", f"{where}: call {i}: expected self_cond = the previous call's x̂, "
                                                "got None")
            if got.shape != expected.shape or not torch.equal(got, expected):
                diff = _max_diff(got, expected) if got.shape == expected.shape else float("nan")
                raise fail("self-conditioning", f"{where}: call {i}: expected self_cond = the previous call's x̂ "
                                                f"exactly, got a tensor {diff:.3g} away (max |Δ|): pass the model's "
                                                "x̂ itself, not an extrapolated or combined estimate")


def _check_x_hat(sampler: Sampler) -> None:
    for steps in (1, 3, 7):
        _, out, calls = _recorded_run(sampler, _grid(steps, seed=steps), seed=300 + steps)
        if out.x_hat.shape != calls[-1].pred.x.shape or not torch.equal(out.x_hat, calls[-1].pred.x):
            diff = (_max_diff(out.x_hat, calls[-1].pred.x) if out.x_hat.shape == calls[-1].pred.x.shape
                    else float("nan"))
            raise fail("x_hat", f"on a {steps}-interval grid: expected SamplerOutput.x_hat = the last call's x̂, "
                                f"got a tensor {diff:.3g} away (max |Δ|)")


def _check_end(check: str, sampler: Sampler, grid: Tensor, label: str, seed: int) -> None:
    """The last call lies in the final interval and the step into t = 1 returns its x̂."""
    _, out, calls = _recorded_run(sampler, grid, seed=seed, toy=ELF_TOY)
    where = f"on a grid with {label} {_fmt_grid(grid)}"
    if not (torch.isfinite(out.z).all() and torch.isfinite(out.x_hat).all()):
        raise fail(check, f"{where}: expected finite z and x_hat, got NaN/inf (a division by a step size "
                          "or by t at a tie or a tiny interval?)")
    t_last, t_start = calls[-1].t.min().item(), grid[-2].item()
    if t_last < t_start - 1e-6:
        raise fail(check, f"{where}: expected the last denoiser call in the final interval [{t_start:.4g}, 1], "
                          f"got it at t = {t_last:.4g}")
    err = _max_diff(out.z, calls[-1].pred.x)
    if not err < 1e-6:
        raise fail(check, f"{where}: expected the step into t = 1 to return the last call's x̂ exactly (the flow's "
                          f"limit), got z {err:.3g} away (max |Δ|). Integrating v̂ = (x̂ − z)/max(1 − t, 0.05) "
                          "stops short of x̂ when the last interval starts above 0.95: end with "
                          "elfkit.components.samplers.base.euler_step (or return the call's x̂)")


def _check_ends_at_x_hat(sampler: Sampler) -> None:
    for steps in (1, 2, 7):
        _check_end("ends-at-x̂", sampler, _grid(steps, seed=steps), "random points", seed=400 + steps)
    _check_end("ends-at-x̂", sampler, HARD_GRIDS["points above 0.95"], "points above 0.95", seed=410)


def _check_grids(sampler: Sampler) -> None:
    for i, (label, grid) in enumerate(HARD_GRIDS.items()):
        try:
            _check_end("grids", sampler, grid, label, seed=500 + i)
        except ConformanceError as err:
            raise fail("grids", str(err).removeprefix("[calls] ").removeprefix("[grids] ")) from None
        except Exception as exc:
            raise raised("grids", exc, f"on a grid with {label} {_fmt_grid(grid)}, the sampler") from exc


def _check_determinism(sampler: Sampler) -> None:
    grid = torch.linspace(0, 1, 9)
    z0 = TOY.prior((3, 4), _gen(7))
    den = TOY.denoiser()
    torch.manual_seed(1)
    a = _run(sampler, den, z0, grid, seed=11)
    torch.manual_seed(2)
    b = _run(sampler, den, z0, grid, seed=11)
    if not (torch.equal(a.z, b.z) and torch.equal(a.x_hat, b.x_hat)):
        raise fail("determinism", f"expected identical output from identically seeded generators, got results "
                                  f"{_max_diff(a.z, b.z):.3g} apart: draw randomness only from the `generator` "
                                  "argument (never the global RNG)")
    _run(sampler, den, z0, grid, seed=None)   # generator=None must work too


def _check_stateless(sampler: Sampler) -> None:
    before = snapshot(sampler)
    grid = torch.linspace(0, 1, 6)
    den = TOY.denoiser()
    z_a, z_b = TOY.prior((2, 3), _gen(1)), TOY.prior((3, 5), _gen(2))
    ref_a = _run(sampler, den, z_a, grid, seed=21)
    ref_b = _run(sampler, den, z_b, grid, seed=22)
    nested: list[SamplerOutput] = []
    at = min(1, sampler.nfe(5) - 1)

    def hook(i: int) -> None:
        if i == at:
            nested.append(_run(sampler, den, z_b, grid, seed=22))
    state = ("keeps per-run state on `self` (one instance serves several runs at once: keep per-run values "
             "in local variables)")
    try:
        got_a = _run(sampler, _Recorder(den, hook), z_a, grid, seed=21)
    except Exception as exc:
        changed = sorted(k for k in snapshot(sampler).keys() | before.keys() if k not in before)
        raise raised("stateless", exc, f"a run nested inside another run's denoiser call (same instance) made the "
                                       f"outer run fail: the sampler {state}; attributes added during runs: "
                                       f"{changed}. The outer run") from exc
    if not nested:
        raise fail("stateless", "the nested run never started (the denoiser was not called)")
    if not (torch.equal(got_a.z, ref_a.z) and torch.equal(nested[0].z, ref_b.z)):
        raise fail("stateless", f"expected a run nested inside another run's denoiser call (same instance) to "
                                f"leave both results as separate runs give them, got the outer z "
                                f"{_max_diff(got_a.z, ref_a.z):.3g} and the inner z "
                                f"{_max_diff(nested[0].z, ref_b.z):.3g} away: the sampler {state}")
    check_unchanged("stateless", sampler, before)


def _check_shapes(sampler: Sampler) -> None:
    den = TOY.denoiser()
    for b, s in ((1, 7), (3, 5), (1, 1)):
        z0 = TOY.prior((b, s), _gen(b * 10 + s))
        out = _run(sampler, den, z0, torch.linspace(0, 1, 5))
        if out.z.shape != z0.shape or out.x_hat.shape != z0.shape:
            raise fail("shapes", f"input (B, S, D) = {tuple(z0.shape)}: expected z and x_hat of that shape, got "
                                 f"{tuple(out.z.shape)} and {tuple(out.x_hat.shape)}")
        if not torch.isfinite(out.z).all():
            raise fail("shapes", f"input shape {tuple(z0.shape)}: expected finite output, got NaN/inf")


def _check_dtype_device(sampler: Sampler, devices: Sequence[str | torch.device]) -> None:
    den = TOY.denoiser()
    for device in devices:
        for dtype in (torch.float32, torch.float64):
            z0 = TOY.prior((2, 3), _gen(3), dtype=dtype).to(device)
            grid = torch.linspace(0, 1, 5, dtype=torch.float32, device=device)
            out = _run(sampler, den, z0, grid)
            for name, value in (("z", out.z), ("x_hat", out.x_hat)):
                if value.dtype != dtype or value.device != z0.device:
                    raise fail("dtype-device", f"{dtype} input on {z0.device}: expected {name} in {dtype} on "
                                               f"{z0.device}, got {value.dtype} on {value.device} (a float32 grid "
                                               "must not change the dtype)")


def _check_transport(sampler: Sampler, steps: int, mean_tol: float, std_rtol: float) -> None:
    z0 = TOY.prior((2048, 2), _gen(5))
    out = _run(sampler, TOY.denoiser(), z0, torch.linspace(0, 1, steps + 1, dtype=torch.float64), seed=6)
    mean_err, std_err = TOY.moment_errors(out.z)
    if not torch.isfinite(out.z).all() or mean_err.max() > mean_tol or std_err.abs().max() > std_rtol:
        raise fail("transport", f"on the Gaussian toy with the exact x̂ ({steps} uniform steps): expected "
                                f"|mean − μ|/σ ≤ {mean_tol} and |std/σ − 1| ≤ {std_rtol}, got "
                                f"{[round(v, 3) for v in mean_err.tolist()]} and "
                                f"{[round(v, 3) for v in std_err.tolist()]}")


def convergence_errors(sampler: Sampler, steps: Sequence[int] = ORDER_STEPS, seed: int = 8) -> list[float]:
    """RMS error of the final z against the toy's exact flow map ``μ + (σ/s)·z₀``, one per grid size
    (uniform grids, float64). Also what ``benchmarks/sampler_toy_error.py`` prints."""
    z0 = TOY.prior((32, 2), _gen(seed))
    exact = TOY.exact_flow_end(z0)                                      # (B, S, D)
    errors = []
    for n in steps:
        out = _run(sampler, TOY.denoiser(), z0, torch.linspace(0, 1, n + 1, dtype=torch.float64), seed=seed + 1)
        errors.append((out.z - exact).pow(2).mean().sqrt().item())
    return errors


def measured_order(steps: Sequence[int], errors: Sequence[float]) -> float:
    """Least-squares slope of −log(error) against log(steps)."""
    xs, ys = [math.log(n) for n in steps], [-math.log(max(e, 1e-300)) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def _check_order(sampler: Sampler) -> None:
    order = getattr(sampler, "order", None)
    if order is None:
        return
    errors = convergence_errors(sampler)
    if max(errors) < 1e-10:
        return                                                            # exact on the toy
    slope = measured_order(ORDER_STEPS, errors)
    if not math.isfinite(slope) or slope < order - 0.5:
        shown = ", ".join(f"{e:.2e} at {n}" for n, e in zip(ORDER_STEPS, errors, strict=True))
        raise fail("order", f"the sampler declares order {order}: expected the error on the Gaussian toy to fall as "
                            f"N^−{order} (measured slope ≥ {order - 0.5}), got N^−{slope:.2f} (RMS error {shown} "
                            "uniform intervals). A wrong sign or weight in a higher-order term leaves a method "
                            "consistent but first order")


# ----------------------------------------------------------------------------------------
def check_sampler(sampler: Any, config: BaseModel | dict[str, Any] | None = None, *, transport: bool = True,
                  transport_steps: int = 256, mean_tol: float = 0.1, std_rtol: float = 0.06,
                  order: bool = True, devices: Sequence[str | torch.device] | None = None) -> list[str]:
    """Run the sampler conformance suite; raise :class:`ConformanceError` on the first failure.

    Args:
        sampler: a sampler class or factory (called with ``config``; without one, with the
            default of the config type its first parameter is annotated with), a registry
            name, or a built instance.
        config: the config model instance (or a dict of its fields) to build with.
        transport: run the Gaussian-toy transport check (``transport_steps`` uniform steps).
        order: measure the declared convergence order (about 2000 toy denoiser calls).
        devices: where to run the dtype/device check; default CPU plus CUDA if available.

    Returns:
        The names of the checks that passed (``order`` only when the sampler declares one).
    """
    build = builder(sampler, config, "sampler", lambda obj: hasattr(obj, "nfe") and hasattr(obj, "steps"))
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    checks: list[tuple[str, Callable[[Sampler], None]]] = [
        ("protocol", _check_protocol),
        ("calls", _check_calls),
        ("self-conditioning", _check_self_conditioning),
        ("x_hat", _check_x_hat),
        ("ends-at-x̂", _check_ends_at_x_hat),
        ("grids", _check_grids),
        ("determinism", _check_determinism),
        ("stateless", _check_stateless),
        ("shapes", _check_shapes),
        ("dtype-device", lambda s: _check_dtype_device(s, devices)),
    ]
    if transport:
        checks.append(("transport", lambda s: _check_transport(s, transport_steps, mean_tol, std_rtol)))
    if order:
        checks.append(("order", _check_order))
    passed = []
    for name, check in checks:
        instance = build()
        try:
            check(instance)
        except ConformanceError:
            raise
        except Exception as exc:
            raise raised(name, exc, "the sampler") from exc
        if name != "order" or getattr(instance, "order", None) is not None:
            passed.append(name)
    return passed
