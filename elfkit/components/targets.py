"""Prediction targets: what the network outputs (x, ε or v) and the space the loss is taken in.

The two are independent settings (JiT/ELF: output x, loss on v), so an ablation of the
parameterisation does not silently change the loss weighting. Every conversion goes
through :mod:`elfkit.core.flow`; the loss applies *the same* conversion to the truth as to
the prediction, so clamps reweight rather than bias.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, TypeVar

from torch import Tensor

from elfkit.config import ComponentConfig
from elfkit.core import flow
from elfkit.core.flow import FlowPath
from elfkit.errors import ElfkitError
from elfkit.hookspecs import hookimpl
from elfkit.records import Prediction, PredictionSpace

if TYPE_CHECKING:
    from elfkit.registry import ComponentRegistrar

Space = PredictionSpace   # "x", "eps" or "v": a field of Prediction
_T = TypeVar("_T", bound="Target")


class TargetConfig(ComponentConfig):
    loss_space: Space = "v"
    """Space of the MSE: 'v' (ELF), 'x' or 'eps'. Independent of what the network outputs."""


class Target:
    """Converts a network output to a :class:`Prediction` and computes the per-token loss.

    A target is *bound* to the :class:`FlowPath` its conversions use, so training,
    generation and export take this one object rather than a (target, path) pair. The
    registry builds targets from their config alone (unbound); :meth:`bind` attaches the
    path (``build_components`` binds the recipe's). An explicit ``path`` argument to
    :meth:`predict` or :meth:`truth` overrides the bound one.

    Subclasses implement :meth:`convert`, which always receives the path explicitly.
    """

    output: Space
    """What the network outputs; each subclass sets it once, as a class attribute. Annotated as a
    plain (read-only) member rather than ``ClassVar``, so targets match the ``output`` property of
    :class:`elfkit.contracts.Target` (type checkers do not let a ClassVar stand in for a property)."""

    def __init__(self, cfg: TargetConfig, path: FlowPath | None = None, *, name: str | None = None) -> None:
        self.cfg = cfg
        self._path = path
        self.name = name   # the registry name, when known: export manifests record it

    def bind(self: _T, path: FlowPath, *, name: str | None = None) -> _T:
        """A copy of this target bound to ``path`` (and, if given, its registry ``name``)."""
        bound = copy.copy(self)
        bound._path = path
        if name is not None:
            bound.name = name
        return bound

    @property
    def is_bound(self) -> bool:
        return self._path is not None

    @property
    def path(self) -> FlowPath:
        """The bound flow path; an unbound target is a programming error worth a clear message."""
        if self._path is None:
            raise ElfkitError(f"{type(self).__name__} is not bound to a flow path: use target.bind(FlowPath(...)) "
                              "(build_components binds the recipe's path section)")
        return self._path

    @property
    def loss_space(self) -> Space:
        return self.cfg.loss_space

    def convert(self, out: Tensor, z: Tensor, t: Tensor, path: FlowPath) -> Prediction:
        """Network output (B,S,D) at (z, t) on ``path`` → x̂, ε̂ (scaled noise), v̂."""
        raise NotImplementedError

    def predict(self, out: Tensor, z: Tensor, t: Tensor, path: FlowPath | None = None) -> Prediction:
        """Network output (B,S,D) at (z, t) → x̂, ε̂ (scaled noise), v̂, on ``path`` or the bound path."""
        return self.convert(out, z, t, self.path if path is None else path)

    def truth(self, x0: Tensor, noise: Tensor, z: Tensor, t: Tensor, path: FlowPath | None = None) -> Prediction:
        """The exact values, passed through this target's own conversions (same clamps)."""
        path = self.path if path is None else path
        true_out = {"x": x0, "eps": noise, "v": x0 - path.noise_scale * noise}
        return self.convert(self.encode_output(true_out), z, t, path)

    def encode_output(self, values: dict[str, Tensor]) -> Tensor:
        """Pick the network-output representation of the true values (ε as unit noise)."""
        return values[self.output]

    def in_loss_space(self, pred: Prediction) -> Tensor:
        return getattr(pred, self.loss_space)

    def loss(self, pred: Prediction, target: Tensor) -> Tensor:
        """Squared error in the loss space, averaged over D: (B, S)."""
        return (self.in_loss_space(pred) - target).pow(2).mean(-1)

    def describe(self) -> dict[str, Any]:
        """What an export manifest records: the resolved target (name, class, config) and its path."""
        path = self.path
        return {
            "target": {"name": self.name, "class": f"{type(self).__module__}.{type(self).__qualname__}",
                       "output": self.output, "config": self.cfg.model_dump(mode="json")},
            "path": {"noise_scale": path.noise_scale, "t_eps": path.t_eps, "t_min": path.t_min},
        }


class XTarget(Target):
    """Network predicts the clean latent x̂ (ELF default; stable in high dimension)."""

    output: Space = "x"

    def convert(self, out: Tensor, z: Tensor, t: Tensor, path: FlowPath) -> Prediction:
        return Prediction(x=out, eps=flow.x_to_eps(out, z, t, path.t_eps), v=flow.x_to_v(out, z, t, path.t_eps))


class EpsTarget(Target):
    """Network predicts unit-variance noise ε̂₀; ε̂ = s·ε̂₀ (classic diffusion)."""

    output: Space = "eps"

    def convert(self, out: Tensor, z: Tensor, t: Tensor, path: FlowPath) -> Prediction:
        eps = out * path.noise_scale
        return Prediction(x=flow.eps_to_x(eps, z, t, path.t_min), eps=eps, v=flow.eps_to_v(eps, z, t, path.t_min))


class VTarget(Target):
    """Network predicts the velocity v̂ = x − ε (rectified-flow style)."""

    output: Space = "v"

    def convert(self, out: Tensor, z: Tensor, t: Tensor, path: FlowPath) -> Prediction:
        return Prediction(x=flow.v_to_x(out, z, t), eps=flow.v_to_eps(out, z, t), v=out)


@hookimpl
def elfkit_register_components(registry: ComponentRegistrar) -> None:
    registry.add("target", "x", XTarget, TargetConfig)
    registry.add("target", "eps", EpsTarget, TargetConfig)
    registry.add("target", "v", VTarget, TargetConfig)
