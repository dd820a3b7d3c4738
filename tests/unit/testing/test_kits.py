"""The conformance kits catch what they claim to catch, and accept every way of naming a component."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from elfkit.components.guidance import CfgConfig, CfgGuidance, SelfCondConfig, SelfCondGuidance
from elfkit.components.samplers import EulerConfig, EulerSampler, SdeConfig, SdeSampler
from elfkit.components.samplers.base import batch_time, euler_step
from elfkit.records import SamplerOutput
from elfkit.registry import default_registry
from elfkit.testing import ConformanceError, check_embedder, check_guidance, check_sampler


# ----------------------------------------------------------------------------------------
# Broken samplers, one defect each
# ----------------------------------------------------------------------------------------
class Stateful(EulerSampler):
    def __call__(self, denoiser, z, grid, *, noise_scale, generator=None):
        self.last = z          # per-run state on self
        return super().__call__(denoiser, z, grid, noise_scale=noise_scale, generator=generator)


class GlobalRng(EulerSampler):
    def __call__(self, denoiser, z, grid, *, noise_scale, generator=None):
        out = super().__call__(denoiser, z, grid, noise_scale=noise_scale, generator=generator)
        return SamplerOutput(out.z + 1e-9 * torch.randn_like(out.z), out.x_hat, out.nfe)


class StopsEarly(EulerSampler):
    def __call__(self, denoiser, z, grid, *, noise_scale, generator=None):
        return super().__call__(denoiser, z, grid[:-1] if grid.numel() > 2 else grid,
                                noise_scale=noise_scale, generator=generator)


class WrongNfe(EulerSampler):
    def nfe(self, steps):
        return steps + 1


class NoSelfCond(EulerSampler):
    def __call__(self, denoiser, z, grid, *, noise_scale, generator=None):
        return super().__call__(lambda z, t, sc=None: denoiser(z, t, None), z, grid, noise_scale=noise_scale)


class Float32Only(EulerSampler):
    def __call__(self, denoiser, z, grid, *, noise_scale, generator=None):
        out = super().__call__(denoiser, z, grid, noise_scale=noise_scale, generator=generator)
        return SamplerOutput(out.z.float(), out.x_hat, out.nfe)


class HalfStep(EulerSampler):
    """Ends at t = 1 but integrates the wrong ODE (half the velocity until the last step)."""

    def __call__(self, denoiser, z, grid, *, noise_scale, generator=None):
        grid = grid.to(z)
        x_hat = None
        for i in range(grid.numel() - 1):
            t, t_next = grid[i], grid[i + 1]
            pred = denoiser(z, batch_time(t, z), x_hat)
            last = i == grid.numel() - 2
            z, x_hat = euler_step(z, pred, t, t_next) if last else z + 0.5 * (t_next - t) * pred.v, pred.x
        return SamplerOutput(z, x_hat, grid.numel() - 1)


@pytest.mark.parametrize("broken, check", [
    (Stateful, "stateless"), (GlobalRng, "determinism"), (StopsEarly, "calls"), (WrongNfe, "calls"),
    (NoSelfCond, "self-conditioning"), (Float32Only, "dtype-device"), (HalfStep, "transport"),
])
def test_sampler_kit_catches(broken, check):
    with pytest.raises(ConformanceError, match=rf"\[{check}\]"):
        check_sampler(broken)


def test_sampler_kit_accepts_class_factory_instance_name_and_dict():
    check_sampler(EulerSampler, {"steps": 4}, transport=False, order=False)
    check_sampler(lambda cfg=EulerConfig(steps=3): EulerSampler(cfg), transport=False, order=False)
    check_sampler(EulerSampler(EulerConfig(steps=2)), transport=False, order=False)
    check_sampler("euler", {"steps": 5}, transport=False, order=False)


def test_every_registered_sampler_and_guidance_conforms():
    reg = default_registry()
    for name in reg.names("sampler"):
        check_sampler(name, transport=False)
    for name in reg.names("guidance"):
        check_guidance(name)


def test_sde_churn_at_elf_gamma_fails_transport_on_purpose():
    # documents the reference's variance contraction (see elfkit.components.samplers.sde)
    with pytest.raises(ConformanceError, match="transport"):
        check_sampler(SdeSampler, SdeConfig(gamma=1.5))


# ----------------------------------------------------------------------------------------
# Broken guidance
# ----------------------------------------------------------------------------------------
class UnpinnedCfg(CfgGuidance):
    """Combines without restoring the condition positions."""

    def denoiser(self, evaluate):
        def denoise(z, t, self_cond=None):
            w = 1.0 if evaluate.capabilities.guidance_tokens else None
            c = evaluate(z, t, self_cond, guidance_scale=w)
            u = evaluate(z, t, self_cond, guidance_scale=w, drop_condition=True)
            return u.lerp(c, self.cfg.scale)
        return denoise


class UnderCounted(SelfCondGuidance):
    def passes(self, capabilities):
        return 1


class Counting(SelfCondGuidance):
    def denoiser(self, evaluate):
        inner = super().denoiser(evaluate)

        def denoise(z, t, self_cond=None):
            self.calls = getattr(self, "calls", 0) + 1
            return inner(z, t, self_cond)
        return denoise


class NoToken(SelfCondGuidance):
    def denoiser(self, evaluate):
        return lambda z, t, self_cond=None: evaluate(z, t, self_cond, guidance_scale=None)


@pytest.mark.parametrize("broken, config, check", [
    (UnpinnedCfg, CfgConfig(scale=2.0), "prediction"),
    (UnderCounted, SelfCondConfig(scale=3.0), "passes"),
    (Counting, SelfCondConfig(), "stateless"),
    (NoToken, SelfCondConfig(), "ELF"),
])
def test_guidance_kit_catches(broken, config, check):
    with pytest.raises(ConformanceError, match=check):
        check_guidance(broken, config)


# ----------------------------------------------------------------------------------------
# The embedder kit, on a tiny character-level embedder
# ----------------------------------------------------------------------------------------
class CharTokenizer:
    name = "chars"
    pad_id, eos_id = 0, 1
    alphabet = " abcdefghijklmnopqrstuvwxyz."
    vocab_size = len(alphabet) + 2

    def encode(self, text):
        return [self.alphabet.index(c) + 2 for c in text.lower() if c in self.alphabet] + [self.eos_id]

    def decode(self, ids):
        return "".join(self.alphabet[i - 2] for i in ids if i >= 2)


class TableEmbedder(nn.Module):
    trainable = False

    def __init__(self, dim=6, noisy=False):
        super().__init__()
        self.dim, self.tokenizer, self.noisy = dim, CharTokenizer(), noisy
        self.table = nn.Embedding(CharTokenizer.vocab_size, dim)
        self.table.weight.requires_grad_(False)

    def embed(self, input_ids, pairwise_mask=None):
        x = self.table(input_ids) / 0.2
        return x + torch.randn_like(x) if self.noisy else x


class Contextual(TableEmbedder):
    """Mixes the batch (a bug): rows are not independent."""

    def embed(self, input_ids, pairwise_mask=None):
        x = super().embed(input_ids)
        return x + x.mean(0, keepdim=True)


def test_embedder_kit_passes_a_token_table_and_catches_defects():
    assert check_embedder(TableEmbedder()) == ["protocol", "tokenizer", "shapes", "determinism", "mask", "gradients"]
    with pytest.raises(ConformanceError, match=r"\[determinism\]"):
        check_embedder(TableEmbedder(noisy=True))
    with pytest.raises(ConformanceError, match=r"\[determinism\]"):
        check_embedder(Contextual())
    trainable_but_says_frozen = TableEmbedder()
    trainable_but_says_frozen.table.weight.requires_grad_(True)
    with pytest.raises(ConformanceError, match=r"\[gradients\]"):
        check_embedder(trainable_but_says_frozen)


def test_embedder_kit_on_the_registered_gaussian_table():
    reg = default_registry()
    if "gaussian-table" not in reg.names("embedder"):
        pytest.skip("the gaussian-table embedder is not registered in this checkout")
    assert len(check_embedder(reg.build("embedder", "gaussian-table"))) == 6
