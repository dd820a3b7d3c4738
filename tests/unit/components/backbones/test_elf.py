"""The ELF backbone against the reference spec (elf-official-code.md §3).

Closed-form and behavioural checks on tiny models, exact parameter counts of the paper
sizes (built on the meta device), and an equivalence test against an independent
functional re-implementation of one forward pass written here from the spec.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from elfkit.components.backbones import (
    BackboneInputError,
    DecodeModule,
    DenoiseModule,
    EagerRunner,
    ELFBackbone,
    ELFBackboneConfig,
)
from elfkit.components.backbones.layers import apply_rope, rope_tables
from elfkit.errors import RecipeError
from elfkit.registry import build_registry

D, H, HEADS, V, L = 16, 32, 4, 23, 10


def tiny_cfg(**kw) -> ELFBackboneConfig:
    base = dict(preset=None, depth=2, width=H, heads=HEADS, bottleneck_dim=8, decoder_hidden=12,
                latent_dim=D, vocab_size=V, max_length=L)
    return ELFBackboneConfig(**{**base, **kw})


def tiny(**kw) -> ELFBackbone:
    """A tiny backbone with every parameter perturbed, so zero-init heads do not hide bugs."""
    m = ELFBackbone(tiny_cfg(**kw))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def inputs(B: int = 3, S: int = L):
    return torch.randn(B, S, D), torch.rand(B), torch.randn(B, S, D), 0.5 + 4.5 * torch.rand(B)


# ----------------------------------------------------------------------------------------
# Sizes and config
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset,expected", [("ELF-B", 104_579_940), ("ELF-M", 342_540_036),
                                             ("ELF-L", 652_103_332)])
def test_preset_parameter_counts(preset, expected):
    cfg = ELFBackboneConfig(preset=preset, latent_dim=512, vocab_size=32100, max_length=1024)
    with torch.device("meta"):
        m = ELFBackbone(cfg)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == expected


def test_preset_values_and_overrides():
    m = ELFBackboneConfig(preset="ELF-M")
    assert (m.depth, m.width, m.heads, m.resolved_head_dim, m.resolved_mlp_inner) == (24, 1056, 16, 66, 2816)
    lg = ELFBackboneConfig(preset="ELF-L")
    assert lg.resolved_mlp_inner == 3413 and lg.resolved_head_dim == 80
    over = ELFBackboneConfig(preset="ELF-B", depth=3)
    assert (over.depth, over.width, over.heads) == (3, 768, 12)
    assert ELFBackboneConfig(preset="ELF-B", mlp_inner=100).resolved_mlp_inner == 100
    assert ELFBackboneConfig(preset="ELF-B", head_dim=32).resolved_head_dim == 32


@pytest.mark.parametrize("kw,match", [
    (dict(preset=None, depth=2, width=32), "heads"),
    (dict(preset="ELF-B", width=100), "divisible"),
    (dict(preset="ELF-B", head_dim=33), "even"),
    (dict(preset="ELF-B", depth=0), "greater than 0"),
    (dict(preset="ELF-B", proj_dropout=1.0), "less than 1"),
    (dict(preset="ELF-X"), "ELF-B"),
    (dict(preset="ELF-B", unknown=1), "Extra inputs"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValidationError, match=match):
        ELFBackboneConfig(**kw)


def test_build_requires_pipeline_fields():
    with pytest.raises(RecipeError, match="vocab_size"):
        ELFBackbone(ELFBackboneConfig(preset="ELF-B", latent_dim=512, max_length=16))


def test_registered_in_registry():
    reg = build_registry(entry_points=False)
    m = reg.build("backbone", "elf", tiny_cfg())
    assert isinstance(m, ELFBackbone)
    assert reg.get("backbone", "elf").config is ELFBackboneConfig


def test_capability_flags_change_parameters():
    full = set(ELFBackbone(tiny_cfg()).state_dict())
    assert {"self_cond_proj.weight", "self_cond_cfg_tokens", "mode_tokens", "unembed_kernel"} <= full
    no_sc = set(ELFBackbone(tiny_cfg(self_conditioning=False)).state_dict())
    assert full - no_sc == {"self_cond_proj.weight", "self_cond_proj.bias"}
    no_g = set(ELFBackbone(tiny_cfg(guidance_tokens=False)).state_dict())
    assert full - no_g == {"self_cond_cfg_tokens", *(f"self_cond_cfg_embedder.mlp_{i}.{p}"
                                                     for i in (0, 2) for p in ("weight", "bias"))}
    no_dec = ELFBackbone(tiny_cfg(decoder_head=False))
    assert full - set(no_dec.state_dict()) == {"mode_tokens", "proj_kernel", "proj_bias", "unembed_kernel",
                                               "unembed_bias"}
    caps = no_dec.capabilities
    assert (caps.self_conditioning, caps.guidance_tokens, caps.decoder_head, caps.latent_dim, caps.vocab_size) \
        == (True, True, False, D, V)
    assert no_dec.rope_cos.shape[0] == 8 + L          # 4 time + 4 guidance, no mode tokens


# ----------------------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------------------
def test_init_x_head_zero_and_reference_init():
    torch.manual_seed(1)
    m = ELFBackbone(tiny_cfg(width=64, heads=4))
    z, t, sc, w = inputs()
    out = m(z, t, self_cond=sc, guidance=w)
    assert torch.equal(out.out, torch.zeros_like(out.out))                # x head zero at init
    assert torch.count_nonzero(out.hidden) > 0
    for name in ("t_embedder.mlp_2.weight", "self_cond_cfg_embedder.mlp_2.weight", "t_emb_tokens"):
        std = dict(m.named_parameters())[name].std().item()
        assert 0.015 < std < 0.025, (name, std)
    qkv = m.blocks[0].attn.qkv.weight                                      # Xavier-uniform bound
    assert qkv.abs().max() <= math.sqrt(6 / (qkv.shape[0] + qkv.shape[1])) + 1e-6
    assert qkv.std() > 0.5 * math.sqrt(2 / (qkv.shape[0] + qkv.shape[1]))
    uk = m.unembed_kernel
    assert uk.abs().max() <= math.sqrt(6 / (uk.shape[0] + uk.shape[1])) + 1e-6 and uk.std() > 0
    for name, p in m.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        if "norm" in name:
            assert torch.equal(p, torch.ones_like(p)), name


def test_meta_build_then_materialise():
    with torch.device("meta"):
        m = ELFBackbone(tiny_cfg())
    m.to_empty(device="cpu")
    m.reset_parameters()
    ref = ELFBackbone(tiny_cfg())
    assert torch.equal(m.rope_cos, ref.rope_cos) and torch.equal(m.rope_sin, ref.rope_sin)
    assert torch.equal(m.final_layer.linear.weight, torch.zeros_like(m.final_layer.linear.weight))


# ----------------------------------------------------------------------------------------
# RoPE
# ----------------------------------------------------------------------------------------
def _rope_complex(x: torch.Tensor, positions: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Independent RoPE: adjacent pairs as complex numbers times exp(i·pos·θ^(−2k/d))."""
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    rot = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64),
                      positions.double()[:, None] * freqs[None])
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(xc * rot).reshape(x.shape).float()


def test_rope_interleaved_and_identity_on_prefix():
    hd, P, S = 8, 5, 7
    cos, sin = rope_tables(hd, P, S)
    x = torch.randn(2, 3, P + S, hd)
    y = apply_rope(x, cos, sin)
    assert torch.equal(y[:, :, :P], x[:, :, :P])                          # prefix unrotated
    torch.testing.assert_close(y[:, :, P:], _rope_complex(x[:, :, P:], torch.arange(S)), atol=1e-5, rtol=1e-5)
    # pairs (0,1) rotate together: position 1 rotates (1, 0) in dims 0,1 by angle 1 rad (freq 1)
    e = torch.zeros(1, 1, P + S, hd)
    e[..., 0] = 1.0
    r = apply_rope(e, cos, sin)[0, 0, P + 1]
    torch.testing.assert_close(r[:2], torch.tensor([math.cos(1.0), math.sin(1.0)]))
    assert torch.count_nonzero(r[2:]) == 0


def test_model_rope_table_has_prefix_rows():
    m = ELFBackbone(tiny_cfg())
    assert m.rope_cos.shape == (12 + L, H // HEADS)
    assert torch.equal(m.rope_cos[:12], torch.ones(12, H // HEADS))
    assert torch.equal(m.rope_sin[:12], torch.zeros(12, H // HEADS))
    assert "rope_cos" not in m.state_dict()                               # non-persistent


# ----------------------------------------------------------------------------------------
# Independent functional forward (from the spec, not from elfkit's layers)
# ----------------------------------------------------------------------------------------
def _rms(x, w, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _temb(sd, prefix, s):
    half = 128
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / half)
    feats = torch.cat([torch.cos(s[:, None] * freqs), torch.sin(s[:, None] * freqs)], -1)
    h = F.silu(feats @ sd[f"{prefix}.mlp_0.weight"].T + sd[f"{prefix}.mlp_0.bias"])
    return h @ sd[f"{prefix}.mlp_2.weight"].T + sd[f"{prefix}.mlp_2.bias"]


def reference_forward(sd, z, t, sc, w, gate, heads):
    """One ELF forward from §3.2, with plain tensor ops: returns (x̂, logits)."""
    B, S, _ = z.shape
    x = torch.cat([z, sc], -1) @ sd["self_cond_proj.weight"].T + sd["self_cond_proj.bias"]
    x = x @ sd["text_proj.proj1.weight"].T @ sd["text_proj.proj2.weight"].T + sd["text_proj.proj2.bias"]
    time_tok = sd["t_emb_tokens"] + _temb(sd, "t_embedder", t)[:, None]
    w_tok = sd["self_cond_cfg_tokens"] + _temb(sd, "self_cond_cfg_embedder", w)[:, None]
    mode_tok = sd["mode_tokens"].expand(B, -1, -1) * gate.view(B, 1, 1)
    x = torch.cat([time_tok, w_tok, mode_tok, x], 1)
    P = 12
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        blk = {k.removeprefix(f"blocks.{i}."): v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        p = blk.__getitem__
        h = _rms(x, p("norm1.weight"))
        qkv = (h @ p("attn.qkv.weight").T + p("attn.qkv.bias")).view(B, P + S, 3, heads, -1)
        q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))        # (B, nh, N, hd)
        q, k = _rms(q, p("attn.q_norm.weight")), _rms(k, p("attn.k_norm.weight"))
        q = torch.cat([q[:, :, :P], _rope_complex(q[:, :, P:], torch.arange(S))], 2)
        k = torch.cat([k[:, :, :P], _rope_complex(k[:, :, P:], torch.arange(S))], 2)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
        o = (att @ v).transpose(1, 2).reshape(B, P + S, -1)
        x = x + o @ p("attn.proj.weight").T + p("attn.proj.bias")
        h = _rms(x, p("norm2.weight"))
        a, b = (h @ p("mlp.w12.weight").T + p("mlp.w12.bias")).chunk(2, -1)
        x = x + (F.silu(a) * b) @ p("mlp.w3.weight").T + p("mlp.w3.bias")
    x = x[:, P:]
    out = _rms(x, sd["final_layer.norm_final.weight"]) @ sd["final_layer.linear.weight"].T \
        + sd["final_layer.linear.bias"]
    logits = F.gelu(x @ sd["proj_kernel"] + sd["proj_bias"], approximate="tanh") @ sd["unembed_kernel"] \
        + sd["unembed_bias"]
    return out, logits


@pytest.mark.parametrize("S", [L, 6])
def test_matches_functional_reference(S):
    m = tiny()
    sd = {k: v.detach() for k, v in m.state_dict().items()}
    z, t, sc, w = inputs(S=S)
    gate = torch.tensor([1.0, 0.0, 1.0])
    with torch.no_grad():
        got = m(z, t, self_cond=sc, guidance=w, decode=gate)
        logits = m.decode_logits(got.hidden)
        want_out, want_logits = reference_forward(sd, z, t, sc, w, gate, HEADS)
    torch.testing.assert_close(got.out, want_out, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(logits, want_logits, atol=2e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------
# Behaviour
# ----------------------------------------------------------------------------------------
def test_no_attention_mask_padding_changes_other_positions():
    m = tiny()
    z, t, sc, w = inputs()
    z2 = z.clone()
    z2[:, -3:] = torch.randn(3, 3, D)                                     # "padding" positions
    with torch.no_grad():
        a = m(z, t, self_cond=sc, guidance=w).out
        b = m(z2, t, self_cond=sc, guidance=w).out
    assert (a[:, :-3] - b[:, :-3]).abs().max() > 1e-4


def test_decoder_head_uses_unnormalised_hidden():
    m = tiny()
    z, t, sc, w = inputs()
    captured = {}
    m.blocks[-1].register_forward_hook(lambda mod, args, out: captured.setdefault("x", out))
    with torch.no_grad():
        o = m(z, t, guidance=w, decode=True)
        torch.testing.assert_close(o.hidden, captured["x"][:, 12:])       # last block's raw output
        h = o.hidden
        logits = m.decode_logits(h)
        want = F.gelu(h @ m.proj_kernel + m.proj_bias, approximate="tanh") @ m.unembed_kernel + m.unembed_bias
        torch.testing.assert_close(logits, want)
        assert (m.decode_logits(2 * h) - logits).abs().max() > 1e-3       # a norm would be scale-invariant


def test_mode_gate_per_row():
    m = tiny()
    z, t, sc, w = inputs()
    with torch.no_grad():
        off = m(z, t, self_cond=sc, guidance=w).out
        off_false = m(z, t, self_cond=sc, guidance=w, decode=False).out
        on = m(z, t, self_cond=sc, guidance=w, decode=True).out
        mixed = m(z, t, self_cond=sc, guidance=w, decode=torch.tensor([True, False, True])).out
    torch.testing.assert_close(off, off_false, rtol=0, atol=0)
    assert (on - off).abs().max() > 1e-4
    torch.testing.assert_close(mixed[1], off[1])
    torch.testing.assert_close(mixed[[0, 2]], on[[0, 2]])


def test_self_cond_none_is_zero_slot():
    m = tiny()
    z, t, sc, w = inputs()
    with torch.no_grad():
        torch.testing.assert_close(m(z, t, guidance=w).out, m(z, t, self_cond=torch.zeros_like(z), guidance=w).out)
        assert (m(z, t, self_cond=sc, guidance=w).out - m(z, t, guidance=w).out).abs().max() > 1e-4


def test_without_optional_capabilities():
    m = tiny(self_conditioning=False, guidance_tokens=False, decoder_head=False)
    z, t, _, _ = inputs()
    assert m(z, t).out.shape == z.shape
    with pytest.raises(BackboneInputError, match="decoder_head"):
        m.decode_logits(torch.zeros(1, H))


@pytest.mark.parametrize("call,match", [
    (lambda m, z, t, sc, w: m(torch.randn(2, L + 1, D), t[:2], guidance=w[:2]), "exceeds the backbone's max_length"),
    (lambda m, z, t, sc, w: m(z, t), "guidance"),
    (lambda m, z, t, sc, w: m(torch.randn(3, L, D + 1), t, guidance=w), r"\(B, S, 16\)"),
    (lambda m, z, t, sc, w: m(z, t, self_cond=sc[:, :4], guidance=w), "self_cond must match"),
    (lambda m, z, t, sc, w: m(z, t[:2], guidance=w), "t must have shape"),
    (lambda m, z, t, sc, w: m(z, t, guidance=w, decode=torch.ones(2)), "decode gate"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    m = tiny()
    with pytest.raises(BackboneInputError, match=match):
        call(m, *inputs())


def test_capability_mismatch_errors():
    z, t, sc, w = inputs()
    with pytest.raises(BackboneInputError, match="self_conditioning=false"):
        tiny(self_conditioning=False)(z, t, self_cond=sc, guidance=w)
    with pytest.raises(BackboneInputError, match="guidance_tokens=false"):
        tiny(guidance_tokens=False)(z, t, guidance=w)
    with pytest.raises(BackboneInputError, match="decoder_head=false"):
        tiny(decoder_head=False)(z, t, guidance=w, decode=True)


def test_bf16_autocast_runs_and_heads_are_fp32():
    m = tiny()
    z, t, sc, w = inputs()
    with torch.no_grad():
        ref = m(z, t, self_cond=sc, guidance=w, decode=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            o = m(z, t, self_cond=sc, guidance=w, decode=True)
            logits = m.decode_logits(o.hidden)
    assert o.out.dtype == torch.float32 and logits.dtype == torch.float32
    err = (o.out - ref.out).abs().max() / ref.out.abs().max()
    assert 0 < err < 0.05                                                 # blocks really ran in bf16


def test_activation_checkpointing_same_values_and_grads():
    m = tiny().train()
    z, t, sc, w = inputs()
    loss = m(z, t, self_cond=sc, guidance=w).out.square().mean()
    g_ref = torch.autograd.grad(loss, list(m.parameters()), allow_unused=True)
    m.enable_activation_checkpointing()
    loss2 = m(z, t, self_cond=sc, guidance=w).out.square().mean()
    g = torch.autograd.grad(loss2, list(m.parameters()), allow_unused=True)
    torch.testing.assert_close(loss2, loss)
    for a, b in zip(g, g_ref, strict=True):
        if a is not None:
            torch.testing.assert_close(a, b)


def test_mode_tokens_in_graph_when_off():
    """Mode tokens are multiplied by 0, not dropped: DDP sees every parameter used."""
    m = tiny().train()
    z, t, sc, w = inputs()
    m(z, t, self_cond=sc, guidance=w).out.sum().backward()
    assert m.mode_tokens.grad is not None and torch.count_nonzero(m.mode_tokens.grad) == 0


# ----------------------------------------------------------------------------------------
# Runner and export wrappers
# ----------------------------------------------------------------------------------------
def test_eager_runner_and_modules():
    m = tiny()
    runner = EagerRunner(m)
    assert runner.capabilities == m.capabilities
    z, t, sc, w = inputs()
    with torch.no_grad():
        torch.testing.assert_close(runner.denoise(z, t, sc, w), m(z, t, self_cond=sc, guidance=w).out)
        want = m.decode_logits(m(z, torch.ones(3), self_cond=torch.zeros_like(z), guidance=w, decode=True).hidden)
        got = runner.decode(z, w)
        assert got.shape == (3, L, V)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(DenoiseModule(m)(z, t, sc, w), runner.denoise(z, t, sc, w))
        torch.testing.assert_close(DecodeModule(m)(z, w), got)
        assert EagerRunner(m, autocast_dtype=torch.bfloat16).decode(z, w).dtype == torch.float32


def test_modules_ignore_inputs_without_capability():
    m = tiny(self_conditioning=False, guidance_tokens=False)
    z, t, sc, w = inputs()
    with torch.no_grad():
        torch.testing.assert_close(DenoiseModule(m)(z, t, sc, w), m(z, t).out)
        torch.testing.assert_close(DecodeModule(m)(z, w), EagerRunner(m).decode(z, None))


@pytest.mark.slow
def test_modules_torch_export_dynamic_batch_and_seq():
    from torch.export import Dim
    m = ELFBackbone(tiny_cfg(depth=1)).eval()
    b, s = Dim("batch", min=1, max=8), Dim("seq", min=2, max=L)
    z, t, sc, w = inputs(B=2, S=L - 2)
    ep = torch.export.export(DenoiseModule(m), (z, t, sc, w),
                             dynamic_shapes=({0: b, 1: s}, {0: b}, {0: b, 1: s}, {0: b}))
    z3, t3, sc3, w3 = inputs(B=3, S=L)
    torch.testing.assert_close(ep.module()(z3, t3, sc3, w3), DenoiseModule(m)(z3, t3, sc3, w3))
    ep = torch.export.export(DecodeModule(m), (z, w), dynamic_shapes=({0: b, 1: s}, {0: b}))
    torch.testing.assert_close(ep.module()(z3, w3), DecodeModule(m)(z3, w3))


def test_half_cast_copy_keeps_fp32_islands():
    """Exporters cast a copy to fp16/bf16: the blocks run in that dtype, projections and heads in fp32."""
    m = tiny()
    z, t, sc, w = inputs()
    with torch.no_grad():
        ref = m(z, t, self_cond=sc, guidance=w, decode=True)
        half = copy.deepcopy(m).to(torch.bfloat16)
        o = half(z.bfloat16(), t.bfloat16(), self_cond=sc.bfloat16(), guidance=w.bfloat16(), decode=True)
        logits = half.decode_logits(o.hidden)
    assert o.out.dtype == torch.float32 and logits.dtype == torch.float32 and o.hidden.dtype == torch.bfloat16
    assert (o.out - ref.out).abs().max() / ref.out.abs().max() < 0.1
