"""The ELF backbone: a plain pre-norm transformer conditioned only through prefix tokens.

Token layout ``[time ×4 | guidance ×4 | mode ×4 | text ×S]`` (elf-official-code.md §3.2).
There is no adaLN and no attention mask; the prefix tokens take part in attention like
any other token but get no RoPE rotation. One network has two heads: the x head
(RMSNorm + zero-init Linear H→D) on every call, and a decoder head (GELU-tanh MLP H→512→V
on the *un-normalised* hidden state) that the caller applies in decode mode.

Capabilities are explicit config fields, never inferred from tensor shapes: the
reference switches self-conditioning on a 2·D input width; here ``self_cond`` is its own
argument and ``self_conditioning`` decides whether ``self_cond_proj`` exists.

Weight tying (:meth:`ELFBackbone.tie_unembedding`, used for a ``learned-table`` embedder) is
an elfkit extension, not part of ELF: the decoder's output layer becomes the embedder's
(V, D) table, held as the parameter ``unembed_table`` in place of ``unembed_kernel``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from elfkit.components.backbones.layers import (
    INIT_STD,
    Block,
    BottleneckProj,
    FinalLayer,
    RMSNorm,
    TimestepEmbedder,
    linear_fp32,
    rope_tables,
)
from elfkit.config import ComponentConfig
from elfkit.errors import ElfkitError, RecipeError
from elfkit.records import BackboneOutput, ModelCapabilities

PRESETS: dict[str, dict[str, int]] = {
    "ELF-B": {"depth": 12, "width": 768, "heads": 12},
    "ELF-M": {"depth": 24, "width": 1056, "heads": 16},    # head_dim 66
    "ELF-L": {"depth": 32, "width": 1280, "heads": 16},
}
"""Depth/width/heads of the paper's sizes; head_dim and the SwiGLU width follow from width."""


class BackboneInputError(ElfkitError, ValueError):
    """A backbone call with inputs the model cannot take (too long, wrong width, missing w)."""


@dataclass(frozen=True)
class ELFSizes:
    """Every size of a buildable ELF backbone, none left unset (:meth:`ELFBackboneConfig.sizes`).

    The config keeps its optional fields (presets, pipeline-filled dimensions); the backbone
    reads its sizes from here, so an unset one fails once, with a message, at build time.
    """

    depth: int
    width: int
    heads: int
    head_dim: int
    mlp_inner: int
    latent_dim: int
    vocab_size: int
    max_length: int


class ELFBackboneConfig(ComponentConfig):
    """The ELF transformer. ``preset`` fills depth/width/heads; explicit fields override it."""

    preset: Literal["ELF-B", "ELF-M", "ELF-L"] | None = "ELF-B"
    """Paper size (B 105M, M 343M, L 652M with the T5 vocabulary). None: give depth/width/heads."""
    depth: int | None = Field(default=None, gt=0)
    """Number of transformer blocks (preset value if unset)."""
    width: int | None = Field(default=None, gt=0)
    """Hidden width H (preset value if unset)."""
    heads: int | None = Field(default=None, gt=0)
    """Attention heads (preset value if unset)."""
    head_dim: int | None = Field(default=None, gt=0)
    """Per-head width; None → width/heads (ELF-M: 66). Must be even (RoPE rotates pairs)."""
    mlp_inner: int | None = Field(default=None, gt=0)
    """SwiGLU inner width; None → int(int(4·width)·2/3) (B 2048, M 2816, L 3413)."""
    bottleneck_dim: int = Field(default=128, gt=0)
    """Rank of the linear input embedding D → r → H."""
    num_time_tokens: int = Field(default=4, gt=0)
    """Prefix tokens carrying t."""
    num_guidance_tokens: int = Field(default=4, gt=0)
    """Prefix tokens carrying the self-cond CFG scale w (only with ``guidance_tokens``)."""
    num_mode_tokens: int = Field(default=4, ge=0)
    """Decode-mode tokens (only with ``decoder_head``); zeroed but still present in denoise mode."""
    self_conditioning: bool = True
    """Fuse a self-conditioning estimate through Linear(2D → D) (``self_cond_proj``)."""
    guidance_tokens: bool = True
    """Condition on the trained-in self-cond CFG scale w via prefix tokens; every call then needs w."""
    decoder_head: bool = True
    """Decoder head (hidden → logits) and mode tokens, for one-network decoding."""
    decoder_hidden: int = Field(default=512, gt=0)
    """Inner width of the decoder head (ELF: 512, the T5 latent width)."""
    rope_theta: float = Field(default=10000.0, gt=0)
    """RoPE base."""
    proj_dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout after attention/MLP projections, only in blocks depth/4 ≤ i < 3·depth/4 (ELF: 0)."""
    latent_dim: int | None = Field(default=None, gt=0)
    """Latent width D; filled from the embedder by the pipeline."""
    vocab_size: int | None = Field(default=None, gt=0)
    """Decoder vocabulary V; filled from the embedder's tokenizer by the pipeline."""
    max_length: int | None = Field(default=None, gt=0)
    """Longest text sequence (RoPE table size); filled from the dataset by the pipeline."""

    @model_validator(mode="before")
    @classmethod
    def _fill_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "ELF-B")
        if preset in PRESETS:
            data = dict(data)
            for key, value in PRESETS[preset].items():
                if data.get(key) is None:
                    data[key] = value
        return data

    @model_validator(mode="after")
    def _check(self) -> ELFBackboneConfig:
        _, width, heads = self._architecture()
        if self.head_dim is None and width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}; "
                             "change one of them or set head_dim explicitly")
        if self.resolved_head_dim % 2:
            raise ValueError(f"head_dim {self.resolved_head_dim} must be even (RoPE rotates pairs of dims)")
        return self

    def _architecture(self) -> tuple[int, int, int]:
        """(depth, width, heads): the preset's or explicit values; the validator refuses a config without them."""
        depth, width, heads = self.depth, self.width, self.heads
        if depth is None or width is None or heads is None:
            missing = [k for k in ("depth", "width", "heads") if getattr(self, k) is None]
            raise ValueError(f"set a preset ({', '.join(PRESETS)}) or all of depth, width, heads "
                             f"(missing: {', '.join(missing)})")
        return depth, width, heads

    @property
    def resolved_head_dim(self) -> int:
        _, width, heads = self._architecture()
        return self.head_dim if self.head_dim is not None else width // heads

    @property
    def resolved_mlp_inner(self) -> int:
        _, width, _ = self._architecture()
        return self.mlp_inner if self.mlp_inner is not None else int(int(4 * width) * 2 / 3)

    def sizes(self) -> ELFSizes:
        """All sizes resolved; :class:`RecipeError` names the pipeline-filled ones still unset."""
        latent_dim, vocab_size, max_length = self.latent_dim, self.vocab_size, self.max_length
        if latent_dim is None or vocab_size is None or max_length is None:
            missing = [k for k in ("latent_dim", "vocab_size", "max_length") if getattr(self, k) is None]
            raise RecipeError(
                f"backbone 'elf' needs {', '.join(missing)}; the pipeline fills them from the embedder "
                "(latent_dim, vocab_size) and the dataset (max_length) — set them under `backbone:` "
                "when building the backbone by hand")
        depth, width, heads = self._architecture()
        return ELFSizes(depth=depth, width=width, heads=heads, head_dim=self.resolved_head_dim,
                        mlp_inner=self.resolved_mlp_inner, latent_dim=latent_dim, vocab_size=vocab_size,
                        max_length=max_length)

    @property
    def num_prefix(self) -> int:
        """Prefix tokens before the text: time + guidance (if any) + mode (if any)."""
        return (self.num_time_tokens + (self.num_guidance_tokens if self.guidance_tokens else 0)
                + (self.num_mode_tokens if self.decoder_head else 0))


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------
def _per_row(x: Tensor | float, batch: int, name: str, device: torch.device) -> Tensor:
    """A (B,) fp32 tensor from a (B,) / 0-d tensor or a Python number."""
    x = torch.as_tensor(x, dtype=torch.float32, device=device)
    if x.dim() == 0:
        return x.expand(batch)
    if x.shape != (batch,):
        raise BackboneInputError(f"{name} must have shape ({batch},) (one value per row), got {tuple(x.shape)}")
    return x


def _mode_gate(decode: Tensor | bool | None, batch: int, device: torch.device) -> Tensor | float:
    """The multiplier of the mode tokens: 0 (denoise), 1 (decode) or a (B, 1, 1) per-row gate."""
    if decode is None or isinstance(decode, bool):
        return float(bool(decode))
    if decode.dim() == 0:
        return decode.to(device=device, dtype=torch.float32)
    if decode.shape != (batch,):
        raise BackboneInputError(f"decode gate must be a bool or shape ({batch},), got {tuple(decode.shape)}")
    return decode.to(device=device, dtype=torch.float32).view(batch, 1, 1)


# ----------------------------------------------------------------------------------------
# The backbone
# ----------------------------------------------------------------------------------------
class ELFBackbone(nn.Module):
    """``forward(z, t, *, self_cond, guidance, decode) -> BackboneOutput(out, hidden)``.

    Parameters live in fp32. Under a bf16 autocast (the trainer's choice) only the blocks
    run in bf16: input projections, time/guidance embedders and both heads are computed
    in fp32 with autocast switched off, as the reference does. A copy cast to fp16/bf16
    (as exporters do) keeps those fp32 islands and runs the blocks in the cast dtype.
    """

    in_out_parameters: ClassVar[tuple[str, ...]] = ("proj_kernel", "unembed_kernel")
    """Bare 2-D tensors stored (in, out): the optimiser's Muon must read their fan the other way."""

    # Registered conditionally (buffers, the tied table): declared so the type checker knows them.
    rope_cos: Tensor
    rope_sin: Tensor
    unembed_table: nn.Parameter

    def __init__(self, cfg: ELFBackboneConfig) -> None:
        super().__init__()
        sizes = cfg.sizes()
        self.cfg = cfg
        self.sizes = sizes
        D, H, V = sizes.latent_dim, sizes.width, sizes.vocab_size
        self.use_checkpointing = False

        if cfg.self_conditioning:
            self.self_cond_proj = nn.Linear(2 * D, D)
        self.text_proj = BottleneckProj(D, H, cfg.bottleneck_dim)
        self.t_embedder = TimestepEmbedder(H)
        self.t_emb_tokens = nn.Parameter(torch.empty(1, cfg.num_time_tokens, H))
        if cfg.guidance_tokens:
            self.self_cond_cfg_embedder = TimestepEmbedder(H)
            self.self_cond_cfg_tokens = nn.Parameter(torch.empty(1, cfg.num_guidance_tokens, H))
        self.num_mode = cfg.num_mode_tokens if cfg.decoder_head else 0
        if self.num_mode:
            self.mode_tokens = nn.Parameter(torch.empty(1, self.num_mode, H))

        q1, q3 = sizes.depth // 4, sizes.depth // 4 * 3
        self.blocks = nn.ModuleList(
            Block(H, sizes.heads, sizes.head_dim, sizes.mlp_inner,
                  cfg.proj_dropout if q1 <= i < q3 else 0.0)
            for i in range(sizes.depth))
        self.final_layer = FinalLayer(H, D)
        if cfg.decoder_head:
            self.proj_kernel = nn.Parameter(torch.empty(H, cfg.decoder_hidden))       # (in, out)
            self.proj_bias = nn.Parameter(torch.empty(cfg.decoder_hidden))
            self.unembed_kernel = nn.Parameter(torch.empty(cfg.decoder_hidden, V))    # (in, out)
            self.unembed_bias = nn.Parameter(torch.empty(V))
        cos, sin = rope_tables(sizes.head_dim, cfg.num_prefix, sizes.max_length, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    # -- init ------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Reference init: Xavier-uniform linears with zero bias; timestep MLPs and learned
        tokens N(0, 0.02); norm scales 1; x head all zeros; decoder tensors Xavier-uniform.
        Also rebuilds the RoPE tables (so ``to_empty`` after a meta-device build works)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, RMSNorm):
                m.reset_parameters()
        for emb in (self.t_embedder, getattr(self, "self_cond_cfg_embedder", None)):
            if emb is not None:
                for lin in (emb.mlp_0, emb.mlp_2):
                    nn.init.normal_(lin.weight, std=INIT_STD)
        for name in ("t_emb_tokens", "self_cond_cfg_tokens", "mode_tokens"):
            if hasattr(self, name):
                nn.init.normal_(getattr(self, name), std=INIT_STD)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        if self.cfg.decoder_head:
            nn.init.xavier_uniform_(self.proj_kernel)
            nn.init.zeros_(self.proj_bias)
            if not self.tied:   # a tied table belongs to the embedder, which initialises it
                nn.init.xavier_uniform_(self.unembed_kernel)
            nn.init.zeros_(self.unembed_bias)
        cfg = self.cfg
        cos, sin = rope_tables(self.sizes.head_dim, cfg.num_prefix, self.sizes.max_length, cfg.rope_theta,
                               device=self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    # -- weight tying ----------------------------------------------------------------------
    @property
    def tied(self) -> bool:
        """Whether the unembedding is a tied (V, D) table (``unembed_table``) instead of ``unembed_kernel``."""
        return "unembed_table" in self._parameters

    def tie_unembedding(self, weight: nn.Parameter) -> None:
        """Make ``weight`` (V, D), the embedder's table, the decoder's output layer: logits = h·Wᵀ + u.

        The backbone registers *that* Parameter object as ``unembed_table`` and drops
        ``unembed_kernel``, so ``parameters()``/``state_dict()`` hold the table once, under
        this name: the optimiser, EMA, DDP and checkpoints (``model``/``ema``) cover it with
        the backbone, and loading a state dict into the backbone also sets the embedder's
        table. ``unembed_bias`` stays. Stored (V, D) = (out, in) like a Linear weight, so Muon
        reads fan_out = V, fan_in = D. Raises :class:`RecipeError` when the shapes cannot tie.
        """
        cfg = self.cfg
        if not isinstance(weight, nn.Parameter):
            raise TypeError(f"tie_unembedding needs the embedder's nn.Parameter, got {type(weight).__name__}")
        if self.tied:
            if self.unembed_table is weight:
                return
            raise RecipeError("the backbone's unembedding is already tied to another table")
        if not cfg.decoder_head:
            raise RecipeError("embedder.tie_unembedding: true needs the backbone's decoder head, but "
                              "backbone.decoder_head is false; set backbone.decoder_head: true or "
                              "embedder.tie_unembedding: false")
        if weight.dim() != 2:
            raise RecipeError(f"a tied unembedding table must be 2-D (V, D), got shape {tuple(weight.shape)}")
        rows, dim = weight.shape
        if dim != cfg.decoder_hidden:
            raise RecipeError(
                f"embedder.dim ({dim}) must equal backbone.decoder_hidden ({cfg.decoder_hidden}) to tie the "
                f"learned table to the unembedding; set backbone.decoder_hidden: {dim} or "
                "embedder.tie_unembedding: false")
        if rows != cfg.vocab_size:
            raise RecipeError(
                f"the learned table has {rows} rows (the embedder's tokenizer vocabulary) but "
                f"backbone.vocab_size is {cfg.vocab_size}; leave backbone.vocab_size unset (the pipeline fills it "
                "from the embedder) or set embedder.tie_unembedding: false")
        del self.unembed_kernel
        self.register_parameter("unembed_table", weight)

    # -- properties ------------------------------------------------------------------------
    @property
    def capabilities(self) -> ModelCapabilities:
        c = self.cfg
        return ModelCapabilities(self_conditioning=c.self_conditioning, guidance_tokens=c.guidance_tokens,
                                 decoder_head=c.decoder_head, latent_dim=self.sizes.latent_dim,
                                 vocab_size=self.sizes.vocab_size)

    def enable_activation_checkpointing(self, flag: bool = True) -> None:
        """Recompute each block in backward (torch.utils.checkpoint) to save activation memory."""
        self.use_checkpointing = flag

    # -- forward ---------------------------------------------------------------------------
    def _check_inputs(self, z: Tensor, self_cond: Tensor | None, guidance: Tensor | float | None,
                      decode: Tensor | bool | None) -> None:
        cfg, sizes = self.cfg, self.sizes
        if z.dim() != 3 or z.shape[-1] != sizes.latent_dim:
            raise BackboneInputError(f"z must be (B, S, {sizes.latent_dim}), got {tuple(z.shape)}")
        if z.shape[1] > sizes.max_length:
            raise BackboneInputError(
                f"sequence length {z.shape[1]} exceeds the backbone's max_length {sizes.max_length} "
                "(the RoPE table size); build the backbone with a larger max_length or shorten the input")
        if self_cond is not None:
            if not cfg.self_conditioning:
                raise BackboneInputError("this backbone was built with self_conditioning=false; pass self_cond=None")
            if self_cond.shape != z.shape:
                raise BackboneInputError(f"self_cond must match z {tuple(z.shape)}, got {tuple(self_cond.shape)}")
        if cfg.guidance_tokens and guidance is None:
            raise BackboneInputError("this backbone has guidance tokens (guidance_tokens=true): pass the "
                                     "self-cond CFG scale w as guidance=(B,) on every call (w=1: no guidance)")
        if not cfg.guidance_tokens and guidance is not None:
            raise BackboneInputError("this backbone has no guidance tokens (guidance_tokens=false); pass guidance=None")
        if not cfg.decoder_head and decode is not None and decode is not False:
            raise BackboneInputError("this backbone has no decoder head (decoder_head=false); pass decode=None")

    def forward(self, z: Tensor, t: Tensor, *, self_cond: Tensor | None = None, guidance: Tensor | None = None,
                decode: Tensor | bool | None = None) -> BackboneOutput:
        """Args:
            z: (B, S, D) noisy latent, S ≤ max_length.
            t: (B,) times in [0, 1] (1 = data).
            self_cond: (B, S, D) previous x̂ (None → zeros) when ``self_conditioning``.
            guidance: (B,) self-cond CFG scale w when ``guidance_tokens`` (required then).
            decode: mode-token gate: None/False (denoise), True (decode) or (B,) per row.
        Returns ``out`` (B, S, D) fp32 and ``hidden`` (B, S, H), the un-normalised last
        hidden state of the text positions (input of :meth:`decode_logits`).
        """
        self._check_inputs(z, self_cond, guidance, decode)
        cfg = self.cfg
        B, S, _ = z.shape
        with torch.autocast(z.device.type, enabled=False):
            x = z.float()
            if cfg.self_conditioning:
                sc = torch.zeros_like(x) if self_cond is None else self_cond.float()
                x = linear_fp32(self.self_cond_proj, torch.cat([x, sc], dim=-1))         # (B, S, D)
            x = self.text_proj(x)                                                         # (B, S, H)
            t_emb = self.t_embedder(_per_row(t, B, "t", z.device))                        # (B, H)
            prefix = [self.t_emb_tokens.float() + t_emb[:, None]]                         # (B, 4, H)
            if cfg.guidance_tokens:
                assert guidance is not None  # _check_inputs requires w with guidance tokens
                w_emb = self.self_cond_cfg_embedder(_per_row(guidance, B, "guidance", z.device))
                prefix.append(self.self_cond_cfg_tokens.float() + w_emb[:, None])
            if self.num_mode:
                gate = _mode_gate(decode, B, z.device)
                prefix.append(self.mode_tokens.float().expand(B, -1, -1) * gate)         # zero but present when off
            x = torch.cat([*prefix, x], dim=1)                                            # (B, P+S, H) fp32
        # The residual stream stays fp32 under autocast; a model cast to fp16/bf16 (export) runs it in that dtype.
        x = x.to(self.final_layer.norm_final.weight.dtype)

        n = cfg.num_prefix + S
        cos, sin = self.rope_cos[:n], self.rope_sin[:n]
        ckpt = self.use_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, cos, sin, use_reentrant=False) if ckpt else block(x, cos, sin)

        hidden = x[:, cfg.num_prefix:]                                                    # (B, S, H)
        with torch.autocast(z.device.type, enabled=False):
            out = self.final_layer(hidden)                                                # (B, S, D) fp32
        return BackboneOutput(out=out, hidden=hidden)

    def decode_logits(self, hidden: Tensor) -> Tensor:
        """(…, H) un-normalised hidden → (…, V) fp32 logits: GELU_tanh(h·P + p)·U + u.

        No norm before it (reference §3.2.7). U is ``unembed_kernel`` (in, out), or ``Wᵀ`` of the
        tied (V, D) table after :meth:`tie_unembedding` (ELF itself does not tie)."""
        if not self.cfg.decoder_head:
            raise BackboneInputError("this backbone was built with decoder_head=false; it cannot produce logits")
        unembed = self.unembed_table.t() if self.tied else self.unembed_kernel
        with torch.autocast(hidden.device.type, enabled=False):   # F.linear: one fused matmul + bias (addmm)
            h = F.gelu(F.linear(hidden.float(), self.proj_kernel.float().T, self.proj_bias.float()), approximate="tanh")
            return F.linear(h, unembed.float().T, self.unembed_bias.float())


def build_elf_backbone(cfg: ELFBackboneConfig) -> ELFBackbone:
    """ELF transformer: bottleneck input, 4+4+4 prefix tokens, RoPE skipping the prefix, two heads."""
    return ELFBackbone(cfg)
