"""Building blocks of the ELF transformer (reference: elf-official-code.md §3).

Attribute names match the authors' PyTorch port so that its state dicts load without
renaming (``norm1``, ``attn.qkv``, ``mlp.w12``, ``final_layer.norm_final``...).
Shapes: B batch, N tokens (prefix + text), H width, nh heads, hd head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INIT_STD = 0.02
"""Std of the normal init of the timestep MLPs and of every learned prefix token."""


# ----------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------
def sinusoid(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """DiT-style ``[cos, sin]`` features of raw scalars: (B,) → (B, dim), fp32.

    ELF feeds t ∈ [0, 1] and the guidance scale w directly, **not** ×1000 as DiT does.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]                                   # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def linear_fp32(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` computed in fp32 whatever the parameter dtype (the model's fp32 islands)."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


def rope_tables(head_dim: int, num_prefix: int, max_length: int, theta: float = 10000.0,
                device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """cos/sin tables (num_prefix + max_length, head_dim) for interleaved (GPT-J) RoPE.

    Frequency i (i < hd/2) is ``theta^(-2i/hd)``, repeated for the adjacent pair (2i, 2i+1).
    The prefix rows are the identity (cos 1, sin 0): conditioning tokens carry no position.
    Text positions are 0 … max_length−1.
    """
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.arange(max_length, dtype=torch.float32, device=device)[:, None] * freqs[None]
    angles = angles.repeat_interleave(2, dim=-1)                              # (L, hd)
    cos = torch.cat([torch.ones(num_prefix, head_dim, device=device), torch.cos(angles)])
    sin = torch.cat([torch.zeros(num_prefix, head_dim, device=device), torch.sin(angles)])
    return cos, sin


def rotate_pairs(x: Tensor) -> Tensor:
    """(…, hd) → (…, hd) with each adjacent pair (a, b) mapped to (−b, a)."""
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-b, a), dim=-1).flatten(-2)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, nh, N, hd) by tables (N, hd), in ``x``'s dtype (as the reference does)."""
    return x * cos.to(x.dtype) + rotate_pairs(x) * sin.to(x.dtype)


# ----------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """RMS norm with a learnable scale, computed in fp32 whatever the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class BottleneckProj(nn.Module):
    """Rank-``bottleneck`` input embedding D → r → H (no nonlinearity, no first bias), in fp32."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int) -> None:
        super().__init__()
        self.proj1 = nn.Linear(in_dim, bottleneck, bias=False)
        self.proj2 = nn.Linear(bottleneck, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return linear_fp32(self.proj2, linear_fp32(self.proj1, x))


class TimestepEmbedder(nn.Module):
    """Scalar (B,) → (B, H): sinusoid(256) → Linear → SiLU → Linear (``mlp_0``/``mlp_2``), in fp32."""

    def __init__(self, hidden: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp_0 = nn.Linear(freq_dim, hidden)
        self.mlp_2 = nn.Linear(hidden, hidden)

    def forward(self, s: Tensor) -> Tensor:
        return linear_fp32(self.mlp_2, F.silu(linear_fp32(self.mlp_0, sinusoid(s, self.freq_dim))))


class Attention(nn.Module):
    """Bidirectional MHA: fused qkv (bias), per-head q/k RMSNorm, RoPE, SDPA, no mask."""

    def __init__(self, width: int, heads: int, head_dim: int, proj_dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.head_dim, self.proj_dropout = heads, head_dim, proj_dropout
        inner = heads * head_dim
        self.qkv = nn.Linear(width, 3 * inner)
        self.q_norm = RMSNorm(head_dim)
        self.k_norm = RMSNorm(head_dim)
        self.proj = nn.Linear(inner, width)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                               # (B, nh, N, hd)
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        out = F.scaled_dot_product_attention(q, k, v)                         # no mask, by design
        out = self.proj(out.transpose(1, 2).reshape(B, N, self.heads * self.head_dim))
        return F.dropout(out, self.proj_dropout, self.training) if self.proj_dropout > 0 else out


class SwiGLU(nn.Module):
    """``w3(SiLU(a) · b)`` with ``[a, b] = w12(x)`` (gate first), both with bias."""

    def __init__(self, width: int, inner: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout
        self.w12 = nn.Linear(width, 2 * inner)
        self.w3 = nn.Linear(inner, width)

    def forward(self, x: Tensor) -> Tensor:
        gate, lin = self.w12(x).chunk(2, dim=-1)
        h = F.silu(gate) * lin
        if self.dropout > 0:
            h = F.dropout(h, self.dropout, self.training)
        return self.w3(h)


class Block(nn.Module):
    """Pre-norm transformer block: ``x += attn(norm1(x)); x += mlp(norm2(x))``."""

    def __init__(self, width: int, heads: int, head_dim: int, mlp_inner: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = RMSNorm(width)
        self.attn = Attention(width, heads, head_dim, dropout)
        self.norm2 = RMSNorm(width)
        self.mlp = SwiGLU(width, mlp_inner, dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class FinalLayer(nn.Module):
    """The x head: RMSNorm then a zero-initialised Linear(H → D), in fp32."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm_final = RMSNorm(width)
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return linear_fp32(self.linear, self.norm_final(x.float()))
