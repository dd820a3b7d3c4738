"""Load (and save back) the ELF authors' PyTorch checkpoints (``embedded-language-flows/*-torch``).

The official port saves either a raw ``state_dict`` or a training checkpoint
``{params, ema_params1, opt_state, step, ...}`` (one file ``checkpoint_<step>``; the hub
repos mirror the output folder). :class:`~elfkit.components.backbones.elf.ELFBackbone`
uses the port's parameter names, so a state dict loads strictly with no renaming.

Sources: a state-dict mapping, a local file, a local folder (latest ``checkpoint_<step>``,
else its single weights file) or a hub id ``org/name[/subfolder]`` (downloaded with
``huggingface_hub``, imported only then).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from elfkit.components.backbones.elf import PRESETS, ELFBackboneConfig
from elfkit.errors import CheckpointError, ElfkitError, HubUnreachableError, MissingDependencyError

log = logging.getLogger(__name__)

OFFICIAL_ROOTS = frozenset({
    "self_cond_proj", "text_proj", "t_embedder", "t_emb_tokens", "self_cond_cfg_embedder",
    "self_cond_cfg_tokens", "mode_tokens", "blocks", "final_layer",
    "proj_kernel", "proj_bias", "unembed_kernel", "unembed_bias",
})
"""Top-level names of the official port's state dict (anything else is elfkit-only)."""

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_STEP = re.compile(r"^checkpoint_(\d+)$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w./-]+)?$")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / torch.compile


# ----------------------------------------------------------------------------------------
# Finding the file
# ----------------------------------------------------------------------------------------
def pick_checkpoint(names: Iterable[str]) -> str | None:
    """The file to load among ``names`` (relative paths): the highest ``checkpoint_<step>``,
    else the only weights file (``.safetensors/.pt/.pth/.bin/.ckpt``); None if there is none."""
    names = list(names)
    steps = [(int(m.group(1)), n) for n in names if (m := _STEP.match(n.rsplit("/", 1)[-1]))]
    if steps:
        return max(steps)[1]
    weights = [n for n in names if n.endswith(WEIGHT_SUFFIXES)]
    if len(weights) > 1:
        raise CheckpointError(f"several weight files found ({', '.join(sorted(weights))}); pass the one to load")
    return weights[0] if weights else None


def _in_dir(folder: Path) -> Path:
    names = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    chosen = pick_checkpoint(names)
    if chosen is None:
        raise CheckpointError(f"no checkpoint in {folder}: expected a `checkpoint_<step>` file or one "
                              f"{'/'.join(WEIGHT_SUFFIXES)} file")
    return folder / chosen


def is_hub_id(source: str) -> bool:
    """``org/name`` or ``org/name/subfolder`` that is not an existing local path."""
    return (not source.startswith(("/", ".", "~")) and "://" not in source
            and not Path(source).expanduser().exists() and bool(_HUB_ID.match(source)))


def _hub_file(source: str) -> Path:
    """Download the checkpoint file of hub repo ``org/name[/sub]`` (cache first)."""
    parts = source.split("/")
    repo_id, sub = "/".join(parts[:2]), "/".join(parts[2:])
    how = (f"download it on a connected machine (`hf download {repo_id}`) and pass the "
           "local file or folder instead of the hub id")
    try:
        import huggingface_hub as hub
    except ImportError as exc:
        raise MissingDependencyError(f"loading '{source}' from the hub needs huggingface_hub "
                                     f"(`pip install huggingface_hub`), or {how}") from exc
    try:  # an earlier download in the local cache wins: no network needed
        cached = Path(hub.snapshot_download(repo_id, local_files_only=True))
        return _in_dir(cached / sub if sub else cached)
    except Exception:
        pass
    try:
        names = hub.list_repo_files(repo_id)
        if sub:
            names = [n for n in names if n == sub or n.startswith(sub.rstrip("/") + "/")]
        chosen = pick_checkpoint(names)
        if chosen is None:
            raise CheckpointError(f"hub repo '{repo_id}' has no checkpoint file"
                                  + (f" under '{sub}'" if sub else ""))
        return Path(hub.hf_hub_download(repo_id, chosen))
    except ElfkitError:
        raise
    except Exception as exc:  # offline, wrong id, HTTP error: all one answer for the user
        raise HubUnreachableError(
            f"could not fetch '{repo_id}' from the Hugging Face hub ({type(exc).__name__}: {exc}); "
            f"the machine may be offline or the id wrong. To use it offline, {how}") from exc


def resolve_official_source(source: str | Path) -> Path:
    """A local checkpoint file for ``source`` (file, folder or hub id)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        return _in_dir(path)
    if isinstance(source, str) and is_hub_id(source):
        return _hub_file(source)
    raise CheckpointError(f"checkpoint not found: '{source}' is neither a local file/folder nor a hub id "
                          "like 'embedded-language-flows/ELF-B-owt-torch'")


# ----------------------------------------------------------------------------------------
# Reading the state dict
# ----------------------------------------------------------------------------------------
def _load_file(path: Path, trust_pickle: bool) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:
        hint = "" if trust_pickle else " (if you trust the file and it holds Python objects, pass trust_pickle=True)"
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}{hint}") from exc


def extract_state_dict(obj: Any, *, use_ema: bool = True, origin: str = "checkpoint") -> dict[str, Tensor]:
    """The backbone weights inside a loaded object: a raw state dict, or a training
    checkpoint's ``ema_params1`` (``use_ema``) / ``params``; wrapper prefixes stripped."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{origin} holds a {type(obj).__name__}, not a state dict")
    if "params" in obj or "ema_params1" in obj:
        key = "ema_params1" if use_ema and obj.get("ema_params1") is not None else "params"
        if use_ema and key == "params":
            log.warning("%s has no EMA weights (ema_params1); using the raw params", origin)
        if key not in obj:
            raise CheckpointError(f"{origin} has ema_params1 but no params; load it with use_ema=True")
        obj = obj[key]
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{origin} is not a state dict (expected {{name: tensor}}, or a training "
                              "checkpoint with 'params'/'ema_params1')")
    out = {}
    for k, v in obj.items():
        for prefix in _WRAPPER_PREFIXES:
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def read_official_state_dict(source: str | Path | Mapping[str, Any], *, use_ema: bool = True,
                             trust_pickle: bool = False) -> dict[str, Tensor]:
    """Official weights from a mapping, a file, a folder or a hub id, as ``{name: tensor}``."""
    if isinstance(source, Mapping):
        return extract_state_dict(source, use_ema=use_ema, origin="the given mapping")
    path = resolve_official_source(source)
    return extract_state_dict(_load_file(path, trust_pickle), use_ema=use_ema, origin=str(path))


# ----------------------------------------------------------------------------------------
# Backbone ⇄ official state dict
# ----------------------------------------------------------------------------------------
def _own_official(backbone: nn.Module) -> dict[str, Tensor]:
    """The backbone's official-name tensors. The official format has no tie: a tied backbone's
    (V, D) ``unembed_table`` stands for ``unembed_kernel`` = its transpose, (D, V) stored (in, out)."""
    own = {k: v for k, v in backbone.state_dict().items() if k.split(".", 1)[0] in OFFICIAL_ROOTS}
    if getattr(backbone, "tied", False):
        own["unembed_kernel"] = backbone.get_parameter("unembed_table").detach().t()
    return own


def official_state_dict(backbone: nn.Module) -> dict[str, Tensor]:
    """The backbone's weights under the official names (detached CPU copies), ready for
    ``torch.save``; elfkit-only submodules (e.g. an attached trainable embedder) are left out.
    A tied unembedding table is written as an ordinary ``unembed_kernel`` (its transpose)."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in _own_official(backbone).items()}


_FLAG_HINTS = {"self_cond_proj": "self_conditioning", "self_cond_cfg": "guidance_tokens",
               "mode_tokens": "decoder_head", "proj_kernel": "decoder_head", "unembed": "decoder_head"}


def _mismatch_message(origin: str, missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    def show(keys: list[str]) -> str:
        return ", ".join(keys[:12]) + (f" … (+{len(keys) - 12})" if len(keys) > 12 else "")
    lines = [f"{origin} does not match the backbone:"]
    if missing:
        lines.append(f"  missing from the checkpoint ({len(missing)}): {show(missing)}")
    if unexpected:
        lines.append(f"  unexpected in the checkpoint ({len(unexpected)}): {show(unexpected)}")
    if shapes:
        lines.append(f"  shape mismatches ({len(shapes)}): {show(shapes)}")
    flags = sorted({flag for k in missing + unexpected for frag, flag in _FLAG_HINTS.items() if k.startswith(frag)})
    if flags:
        lines.append(f"  check the backbone's capability flags: {', '.join(flags)}")
    if shapes:
        lines.append("  check preset/depth/width/heads, latent_dim and vocab_size (config_from_state_dict "
                     "infers them from the checkpoint)")
    return "\n".join(lines)


def load_official(backbone: nn.Module, source: str | Path | Mapping[str, Any], *, use_ema: bool = True,
                  trust_pickle: bool = False) -> nn.Module:
    """Load official weights into ``backbone`` strictly (every official-name tensor must match
    in name and shape); returns the backbone. Mismatches raise :class:`CheckpointError` listing
    the missing/unexpected keys. A tied backbone takes ``unembed_kernel``ᵀ into its tied table
    (so it also becomes the embedder's input table)."""
    sd = read_official_state_dict(source, use_ema=use_ema, trust_pickle=trust_pickle)
    origin = "the given state dict" if isinstance(source, Mapping) else f"checkpoint '{source}'"
    own = _own_official(backbone)
    missing = sorted(own.keys() - sd.keys())
    unexpected = sorted(sd.keys() - own.keys())
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
              for k in sorted(own.keys() & sd.keys()) if sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(_mismatch_message(origin, missing, unexpected, shapes))
    if getattr(backbone, "tied", False):
        sd = dict(sd)
        with torch.no_grad():
            backbone.get_parameter("unembed_table").copy_(sd.pop("unembed_kernel").t())
    result = backbone.load_state_dict(sd, strict=False)
    extra = [k for k in result.missing_keys if k.split(".", 1)[0] in OFFICIAL_ROOTS]
    if extra or result.unexpected_keys:  # cannot happen after the check above; never load silently partial
        raise CheckpointError(_mismatch_message(origin, extra, list(result.unexpected_keys), []))
    return backbone


def config_from_state_dict(sd: Mapping[str, Tensor], *, max_length: int, **overrides: Any) -> ELFBackboneConfig:
    """The :class:`ELFBackboneConfig` whose module shapes match official weights ``sd``.

    ``max_length`` cannot be read from weights (the RoPE table is not saved): OWT 1024,
    WMT14 De-En 128, XSum 1088. ``overrides`` replace any inferred field.
    """
    try:
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks.") and k.endswith(".norm1.weight"))
        width = sd["text_proj.proj2.weight"].shape[0]
        head_dim = sd["blocks.0.attn.q_norm.weight"].shape[0]
        heads = sd["blocks.0.attn.qkv.weight"].shape[0] // (3 * head_dim)
        inferred: dict[str, Any] = {
            "depth": depth, "width": width, "heads": heads,
            "head_dim": None if head_dim * heads == width else head_dim,
            "mlp_inner": sd["blocks.0.mlp.w3.weight"].shape[1],
            "bottleneck_dim": sd["text_proj.proj1.weight"].shape[0],
            "num_time_tokens": sd["t_emb_tokens"].shape[1],
            "latent_dim": sd["final_layer.linear.weight"].shape[0],
            "self_conditioning": "self_cond_proj.weight" in sd,
            "guidance_tokens": "self_cond_cfg_tokens" in sd,
            "decoder_head": "proj_kernel" in sd,
            "max_length": max_length,
        }
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"not an ELF state dict (cannot infer the architecture: {exc})") from exc
    if inferred["guidance_tokens"]:
        inferred["num_guidance_tokens"] = sd["self_cond_cfg_tokens"].shape[1]
    if inferred["decoder_head"]:
        inferred["decoder_hidden"] = sd["proj_kernel"].shape[1]
        inferred["vocab_size"] = sd["unembed_bias"].shape[0]
        inferred["num_mode_tokens"] = sd["mode_tokens"].shape[1] if "mode_tokens" in sd else 0
    if inferred["mlp_inner"] == int(int(4 * width) * 2 / 3):
        inferred["mlp_inner"] = None
    inferred["preset"] = next((name for name, p in PRESETS.items()
                               if all(inferred[k] == v for k, v in p.items())), None)
    return ELFBackboneConfig(**{**inferred, **overrides})
