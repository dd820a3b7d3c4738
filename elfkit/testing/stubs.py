"""A tiny deterministic :class:`~elfkit.contracts.ModelRunner` for tests that need no real backbone.

``StubRunner`` is a fixed random map ``tanh(z·A + slot·C + t·b + w·e)`` (denoise) and
``z·Eᵀ + w·f`` (decode). It enforces the runner contract — a self-cond slot only if the
model has one, a w token exactly when it has guidance tokens — and records every call, so
tests can count forwards and inspect what the network was given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from elfkit.records import ModelCapabilities


@dataclass
class RunnerCall:
    """One recorded forward (inputs cloned)."""

    mode: str                 # "denoise" or "decode"
    z: Tensor                 # (B, S, D)
    t: Tensor | None          # (B,)
    self_cond: Tensor | None  # (B, S, D)
    guidance: Tensor | None   # (B,)


@dataclass
class StubRunner:
    """A deterministic stand-in for the backbone (weights drawn from ``seed``)."""

    latent_dim: int = 4
    vocab_size: int = 11
    self_conditioning: bool = True
    guidance_tokens: bool = True
    seed: int = 0
    calls: list[RunnerCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(self.seed)
        d, v = self.latent_dim, self.vocab_size

        def rand(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=g, dtype=torch.float64)
        self._A, self._C = rand(d, d) / d ** 0.5, rand(d, d) / d ** 0.5
        self._b, self._e = rand(d), rand(d)
        self._E, self._f = rand(v, d), rand(v)
        self.capabilities = ModelCapabilities(
            self_conditioning=self.self_conditioning, guidance_tokens=self.guidance_tokens,
            decoder_head=True, latent_dim=d, vocab_size=v)

    @property
    def denoise_calls(self) -> int:
        return sum(c.mode == "denoise" for c in self.calls)

    def _check_guidance(self, guidance: Tensor | None, z: Tensor) -> None:
        if self.guidance_tokens and (guidance is None or guidance.shape != (z.shape[0],)):
            raise AssertionError(f"model has guidance tokens: expected a (B,) w tensor, got {guidance!r}")
        if not self.guidance_tokens and guidance is not None:
            raise AssertionError("model has no guidance tokens but received a w tensor")

    def denoise(self, z: Tensor, t: Tensor, self_cond: Tensor | None, guidance: Tensor | None) -> Tensor:
        if self.self_conditioning and (self_cond is None or self_cond.shape != z.shape):
            raise AssertionError("model has a self-conditioning slot: expected a (B, S, D) tensor")
        if not self.self_conditioning and self_cond is not None:
            raise AssertionError("model has no self-conditioning slot but received one")
        self._check_guidance(guidance, z)
        if t.shape != (z.shape[0],):
            raise AssertionError(f"t must be (B,) = ({z.shape[0]},), got {tuple(t.shape)}")
        self.calls.append(RunnerCall("denoise", z.clone(), t.clone(),
                                     None if self_cond is None else self_cond.clone(),
                                     None if guidance is None else guidance.clone()))
        w = lambda x: x.to(dtype=z.dtype, device=z.device)  # noqa: E731
        h = z @ w(self._A) + t.view(-1, 1, 1) * w(self._b)
        if self_cond is not None:
            h = h + self_cond @ w(self._C)
        if guidance is not None:
            h = h + 0.1 * guidance.view(-1, 1, 1) * w(self._e)
        return torch.tanh(h)                                          # (B, S, D)

    def decode(self, z: Tensor, guidance: Tensor | None) -> Tensor:
        self._check_guidance(guidance, z)
        self.calls.append(RunnerCall("decode", z.clone(), None, None,
                                     None if guidance is None else guidance.clone()))
        logits = z @ self._E.to(z).T + self._f.to(z)                 # (B, S, V)
        if guidance is not None:
            logits = logits + 0.01 * guidance.view(-1, 1, 1)
        return logits
