"""``check_sampler``: the conformance suite every sampler (built-in or plugin) must pass.

One call in a test::

    from elfkit.testing import check_sampler

    def test_my_sampler():
        check_sampler(MySampler)                   # class, factory, registry name or instance
        check_sampler(MySampler, MyConfig(steps=8, churn=0.0))

Checks, each failing with a ``ConformanceError`` that names it:

- ``protocol``: ``steps`` (int > 0), ``nfe(steps) -> int ≥ 1``, ``__call__(denoiser, z, grid, *,
  noise_scale, generator)`` returning a :class:`SamplerOutput`;
- ``calls``: on grids of 1, 2, 3 and 7 intervals the denoiser is called exactly
  ``nfe(steps)`` times with (B,) times in [0, 1) of z's dtype, the first call has no
  self-conditioning and every later call gets the previous call's x̂; the output's x_hat is
  the last call's x̂ and its nfe the call count; inputs are not modified;
- ``ends-at-1``: the last call is in the final interval (t ≥ t_{K−1}) and, with a denoiser
  whose x̂ is a constant x*, the returned z is x* (the exact flow reaches x* only at t = 1);
- ``determinism``: the same seeded generator gives identical output whatever the global RNG;
- ``stateless``: no attribute changes, and a run nested inside another run's denoiser call
  (same instance) leaves both equal to separate runs;
- ``shapes``: batch size 1 and odd sequence lengths;
- ``dtype-device``: float32 and float64 latents (with a float32 grid, as time components
  produce) keep their dtype and device (CUDA too when available);
- ``transport``: on the :class:`GaussianToy` with the exact x̂, a fine uniform grid carries
  N(0, s²) to N(μ, σ²): per-dimension |mean error| ≤ ``mean_tol``·σ and |std/σ − 1| ≤
  ``std_rtol``. Deliberately biased samplers (ELF's churn at large γ contracts the variance,
  see ``elfkit.components.samplers.sde``) pass a config in which they are near-exact.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor

from elfkit.contracts import Denoiser, Sampler
from elfkit.core import flow
from elfkit.records import Prediction, SamplerOutput
from elfkit.testing._build import ConformanceError, builder, check_unchanged, fail, snapshot
from elfkit.testing.toy import GaussianToy

TOY = GaussianToy()


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


def _constant_x(x_star: Tensor, t_eps: float) -> Denoiser:
    """A model whose x̂ is always x*: the exact flow is z_t = x* + (1−t)/(1−t₀)·(z₀ − x*)."""
    def denoise(z: Tensor, t: Tensor, self_cond: Tensor | None = None) -> Prediction:
        x = x_star.to(z)
        return Prediction(x=x, eps=flow.x_to_eps(x, z, t, t_eps), v=flow.x_to_v(x, z, t, t_eps))
    return denoise


def _grid(steps: int, seed: int) -> Tensor:
    """A random increasing float32 grid 0 < … ≤ 0.9 < 1 with ``steps`` intervals."""
    g = torch.Generator().manual_seed(seed)
    inner = torch.sort(0.02 + 0.88 * torch.rand(steps - 1, generator=g)).values
    return torch.cat([torch.zeros(1), inner, torch.ones(1)])


def _gen(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _run(sampler: Sampler, denoiser: Denoiser, z: Tensor, grid: Tensor, seed: int | None = 0,
         noise_scale: float = TOY.noise_scale) -> SamplerOutput:
    gen = None if seed is None else _gen(seed, z.device)
    out = sampler(denoiser, z, grid, noise_scale=noise_scale, generator=gen)
    if not isinstance(out, SamplerOutput):
        raise fail("protocol", f"a sampler must return elfkit.contracts.SamplerOutput, got {type(out).__name__}")
    return out


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
    try:
        inspect.signature(sampler.__call__).bind(None, None, None, noise_scale=1.0, generator=None)
    except TypeError as exc:
        raise fail("protocol", "the call signature must accept (denoiser, z, grid, *, noise_scale, "
                               f"generator): {exc}") from None


def _check_calls_and_end(sampler: Sampler) -> None:
    for steps in (1, 2, 3, 7):
        grid = _grid(steps, seed=steps)
        g = _gen(100 + steps)
        x_star = torch.randn(2, 5, TOY.dim, generator=g, dtype=torch.float64)
        z0 = TOY.noise_scale * torch.randn(2, 5, TOY.dim, generator=g, dtype=torch.float64)
        z_in, grid_in = z0.clone(), grid.clone()
        rec = _Recorder(_constant_x(x_star, TOY.t_eps))
        out = _run(sampler, rec, z0, grid)
        n, expected = len(rec.calls), sampler.nfe(steps)
        where = f"on a {steps}-interval grid"
        if n != expected:
            raise fail("calls", f"{where}: nfe({steps}) = {expected} but the denoiser was called {n} times")
        if out.nfe != n:
            raise fail("calls", f"{where}: SamplerOutput.nfe = {out.nfe}, but {n} denoiser calls were made")
        if not torch.equal(z0, z_in) or not torch.equal(grid, grid_in):
            raise fail("calls", f"{where}: the sampler modified its input z or grid in place")
        for i, c in enumerate(rec.calls):
            if c.t.shape != (z0.shape[0],) or c.t.dtype != z0.dtype:
                raise fail("calls", f"{where}: call {i} got t of shape {tuple(c.t.shape)} and dtype {c.t.dtype}; "
                                    f"expected ({z0.shape[0]},) {z0.dtype} (see elfkit.components.samplers.base"
                                    ".batch_time)")
            if c.t.min() < 0 or c.t.max() >= 1:
                raise fail("calls", f"{where}: call {i} at t = {c.t.tolist()}; times must lie in [0, 1) "
                                    "(x-prediction is clamped at t → 1)")
            expected_sc = None if i == 0 else rec.calls[i - 1].pred.x
            if (expected_sc is None) != (c.self_cond is None) or (
                    expected_sc is not None and not torch.equal(expected_sc, c.self_cond)):
                what = "None" if i == 0 else "the previous call's x̂"
                raise fail("calls", f"{where}: call {i} must receive self_cond = {what} (self-conditioning)")
        if not torch.equal(out.x_hat, rec.calls[-1].pred.x):
            raise fail("calls", f"{where}: SamplerOutput.x_hat must be the last call's x̂")
        if rec.calls[-1].t.min() < grid[-2].item() - 1e-6:
            raise fail("ends-at-1", f"{where}: the last denoiser call is at t = {rec.calls[-1].t[0].item():.4f}, "
                                    f"before the final interval [{grid[-2].item():.4f}, 1]")
        err = (out.z - x_star).abs().max().item()
        if not err < 1e-5:
            raise fail("ends-at-1", f"{where}: with a constant x̂ = x* the flow reaches x* at t = 1, but the "
                                    f"returned z is {err:.3g} away: the sampler does not integrate to the grid end")


def _check_determinism(sampler: Sampler) -> None:
    grid = torch.linspace(0, 1, 9)
    z0 = TOY.prior((3, 4), _gen(7))
    den = TOY.denoiser()
    torch.manual_seed(1)
    a = _run(sampler, den, z0, grid, seed=11)
    torch.manual_seed(2)
    b = _run(sampler, den, z0, grid, seed=11)
    if not (torch.equal(a.z, b.z) and torch.equal(a.x_hat, b.x_hat)):
        raise fail("determinism", "two runs with identically seeded generators differ: draw randomness only "
                                  "from the `generator` argument (never the global RNG)")
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
    got_a = _run(sampler, _Recorder(den, hook), z_a, grid, seed=21)
    if not nested:
        raise fail("stateless", "the nested run never started (the denoiser was not called)")
    if not (torch.equal(got_a.z, ref_a.z) and torch.equal(nested[0].z, ref_b.z)):
        raise fail("stateless", "a run started inside another run's denoiser call (same sampler instance) "
                                "changed a result: the sampler keeps per-run state on `self`")
    check_unchanged("stateless", sampler, before)


def _check_shapes(sampler: Sampler) -> None:
    den = TOY.denoiser()
    for b, s in ((1, 7), (3, 5), (1, 1)):
        z0 = TOY.prior((b, s), _gen(b * 10 + s))
        out = _run(sampler, den, z0, torch.linspace(0, 1, 5))
        if out.z.shape != z0.shape or out.x_hat.shape != z0.shape:
            raise fail("shapes", f"input (B, S, D) = {tuple(z0.shape)} gave z {tuple(out.z.shape)} and x_hat "
                                 f"{tuple(out.x_hat.shape)}")
        if not torch.isfinite(out.z).all():
            raise fail("shapes", f"non-finite output for input shape {tuple(z0.shape)}")


def _check_dtype_device(sampler: Sampler, devices: Sequence[str | torch.device]) -> None:
    den = TOY.denoiser()
    for device in devices:
        for dtype in (torch.float32, torch.float64):
            z0 = TOY.prior((2, 3), _gen(3), dtype=dtype).to(device)
            grid = torch.linspace(0, 1, 5, dtype=torch.float32, device=device)
            out = _run(sampler, den, z0, grid)
            for name, value in (("z", out.z), ("x_hat", out.x_hat)):
                if value.dtype != dtype or value.device != z0.device:
                    raise fail("dtype-device", f"{dtype} input on {z0.device} gave {name} {value.dtype} on "
                                               f"{value.device} (a float32 grid must not change the dtype)")


def _check_transport(sampler: Sampler, steps: int, mean_tol: float, std_rtol: float) -> None:
    z0 = TOY.prior((2048, 2), _gen(5))
    out = _run(sampler, TOY.denoiser(), z0, torch.linspace(0, 1, steps + 1, dtype=torch.float64), seed=6)
    mean_err, std_err = TOY.moment_errors(out.z)
    if not torch.isfinite(out.z).all() or mean_err.max() > mean_tol or std_err.abs().max() > std_rtol:
        raise fail("transport", f"on the Gaussian toy with the exact x̂ ({steps} uniform steps) the samples have "
                                f"|mean − μ|/σ = {[round(v, 3) for v in mean_err.tolist()]} (tolerance {mean_tol}) "
                                f"and std/σ − 1 = {[round(v, 3) for v in std_err.tolist()]} (tolerance {std_rtol})")


# ----------------------------------------------------------------------------------------
def check_sampler(sampler: Any, config: BaseModel | dict[str, Any] | None = None, *, transport: bool = True,
                  transport_steps: int = 256, mean_tol: float = 0.1, std_rtol: float = 0.06,
                  devices: Sequence[str | torch.device] | None = None) -> list[str]:
    """Run the sampler conformance suite; raise :class:`ConformanceError` on the first failure.

    Args:
        sampler: a sampler class or factory (called with ``config``; without one, with the
            default of the config type its first parameter is annotated with), a registry
            name, or a built instance.
        config: the config model instance (or a dict of its fields) to build with.
        transport: run the Gaussian-toy transport check (``transport_steps`` uniform steps).
        devices: where to run the dtype/device check; default CPU plus CUDA if available.

    Returns:
        The names of the checks that passed.
    """
    build = builder(sampler, config, "sampler", lambda obj: hasattr(obj, "nfe") and hasattr(obj, "steps"))
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    checks: list[tuple[str, Callable[[Sampler], None]]] = [
        ("protocol", _check_protocol),
        ("calls, ends-at-1", _check_calls_and_end),
        ("determinism", _check_determinism),
        ("stateless", _check_stateless),
        ("shapes", _check_shapes),
        ("dtype-device", lambda s: _check_dtype_device(s, devices)),
    ]
    if transport:
        checks.append(("transport", lambda s: _check_transport(s, transport_steps, mean_tol, std_rtol)))
    passed = []
    for name, check in checks:
        try:
            check(build())
        except ConformanceError:
            raise
        except Exception as exc:
            raise fail(name, f"raised {type(exc).__name__}: {exc}") from exc
        passed.append(name)
    return passed
