"""Prediction targets: what the network outputs (x, ε or v) and the space the loss is taken in.

The two are independent settings (JiT/ELF: output x, loss on v), so an ablation of the
parameterisation does not silently change the loss weighting. Every conversion goes
through :mod:`elfkit.core.flow`; the loss applies *the same* conversion to the truth as to
the prediction, so clamps reweight rather than bias.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from torch import Tensor

from elfkit.config import ComponentConfig
from elfkit.core import flow
from elfkit.core.flow import FlowPath
from elfkit.hookspecs import hookimpl
from elfkit.records import Prediction

Space = Literal["x", "eps", "v"]


class TargetConfig(ComponentConfig):
    loss_space: Space = "v"
    """Space of the MSE: 'v' (ELF), 'x' or 'eps'. Independent of what the network outputs."""


class Target:
    """Converts a network output to a :class:`Prediction` and computes the per-token loss."""

    output: ClassVar[Space]

    def __init__(self, cfg: TargetConfig) -> None:
        self.cfg = cfg

    @property
    def loss_space(self) -> Space:
        return self.cfg.loss_space

    def predict(self, out: Tensor, z: Tensor, t: Tensor, path: FlowPath) -> Prediction:
        """Network output (B,S,D) at (z, t) → x̂, ε̂ (scaled noise), v̂."""
        raise NotImplementedError

    def truth(self, x0: Tensor, noise: Tensor, z: Tensor, t: Tensor, path: FlowPath) -> Prediction:
        """The exact values, passed through this target's own conversions (same clamps)."""
        true_out = {"x": x0, "eps": noise, "v": x0 - path.noise_scale * noise}
        return self.predict(self.encode_output(true_out), z, t, path)

    def encode_output(self, values: dict[str, Tensor]) -> Tensor:
        """Pick the network-output representation of the true values (ε as unit noise)."""
        return values[self.output]

    def in_loss_space(self, pred: Prediction) -> Tensor:
        return getattr(pred, self.loss_space)

    def loss(self, pred: Prediction, target: Tensor) -> Tensor:
        """Squared error in the loss space, averaged over D: (B, S)."""
        return (self.in_loss_space(pred) - target).pow(2).mean(-1)


class XTarget(Target):
    """Network predicts the clean latent x̂ (ELF default; stable in high dimension)."""

    output = "x"

    def predict(self, out: Tensor, z: Tensor, t: Tensor, path: FlowPath) -> Prediction:
        return Prediction(x=out, eps=flow.x_to_eps(out, z, t, path.t_eps), v=flow.x_to_v(out, z, t, path.t_eps))


class EpsTarget(Target):
    """Network predicts unit-variance noise ε̂₀; ε̂ = s·ε̂₀ (classic diffusion)."""

    output = "eps"

    def predict(self, out: Tensor, z: Tensor, t: Tensor, path: FlowPath) -> Prediction:
        eps = out * path.noise_scale
        return Prediction(x=flow.eps_to_x(eps, z, t, path.t_min), eps=eps, v=flow.eps_to_v(eps, z, t, path.t_min))


class VTarget(Target):
    """Network predicts the velocity v̂ = x − ε (rectified-flow style)."""

    output = "v"

    def predict(self, out: Tensor, z: Tensor, t: Tensor, path: FlowPath) -> Prediction:
        return Prediction(x=flow.v_to_x(out, z, t), eps=flow.v_to_eps(out, z, t), v=out)


@hookimpl
def elfkit_register_components(registry) -> None:
    registry.add("target", "x", XTarget, TargetConfig)
    registry.add("target", "eps", EpsTarget, TargetConfig)
    registry.add("target", "v", VTarget, TargetConfig)
