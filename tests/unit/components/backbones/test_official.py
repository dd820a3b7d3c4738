"""Loading the authors' PyTorch checkpoints: names, strictness, file layouts, offline hub."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from elfkit.components.backbones import (
    ELFBackbone,
    ELFBackboneConfig,
    config_from_state_dict,
    load_official,
    official_state_dict,
    read_official_state_dict,
)
from elfkit.components.backbones.official import pick_checkpoint, resolve_official_source
from elfkit.errors import CheckpointError, HubUnreachableError
from tests.fixtures.optional import requires_wheel

D, H, V, L, DEPTH = 16, 32, 23, 10, 2


def tiny_cfg(**kw) -> ELFBackboneConfig:
    base = dict(preset=None, depth=DEPTH, width=H, heads=4, bottleneck_dim=8, latent_dim=D, vocab_size=V,
                max_length=L)
    return ELFBackboneConfig(**{**base, **kw})


def perturbed(seed: int, **kw) -> ELFBackbone:
    torch.manual_seed(seed)
    m = ELFBackbone(tiny_cfg(**kw))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def official_names(depth: int) -> set[str]:
    """The port's state-dict names, written out from the reference (§3), not from elfkit."""
    names = {"self_cond_proj.weight", "self_cond_proj.bias", "text_proj.proj1.weight", "text_proj.proj2.weight",
             "text_proj.proj2.bias", "t_emb_tokens", "self_cond_cfg_tokens", "mode_tokens",
             "final_layer.norm_final.weight", "final_layer.linear.weight", "final_layer.linear.bias",
             "proj_kernel", "proj_bias", "unembed_kernel", "unembed_bias"}
    for emb in ("t_embedder", "self_cond_cfg_embedder"):
        names |= {f"{emb}.mlp_{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    for i in range(depth):
        names |= {f"blocks.{i}.norm1.weight", f"blocks.{i}.norm2.weight", f"blocks.{i}.attn.q_norm.weight",
                  f"blocks.{i}.attn.k_norm.weight"}
        names |= {f"blocks.{i}.{m}.{p}" for m in ("attn.qkv", "attn.proj", "mlp.w12", "mlp.w3")
                  for p in ("weight", "bias")}
    return names


def outputs(m: ELFBackbone):
    torch.manual_seed(123)
    z, t, w = torch.randn(2, L, D), torch.rand(2), torch.rand(2) + 0.5
    with torch.no_grad():
        o = m(z, t, self_cond=torch.randn(2, L, D), guidance=w, decode=True)
        return o.out, m.decode_logits(o.hidden)


def test_state_dict_names_are_the_official_ones():
    m = ELFBackbone(tiny_cfg())
    assert set(m.state_dict()) == official_names(DEPTH)
    assert m.proj_kernel.shape == (H, 512) and m.unembed_kernel.shape == (512, V)     # (in, out) layout


def test_official_named_state_dict_loads_strictly():
    src = perturbed(0)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    assert set(sd) == official_names(DEPTH)
    dst = ELFBackbone(tiny_cfg())
    dst.load_state_dict(sd, strict=True)
    load_official(dst, sd)
    for a, b in zip(outputs(src), outputs(dst), strict=True):
        assert torch.equal(a, b)


def test_save_load_round_trip_is_lossless(tmp_path):
    src = perturbed(1)
    path = tmp_path / "elf.pt"
    torch.save(official_state_dict(src), path)
    dst = load_official(perturbed(2), path)
    for a, b in zip(outputs(src), outputs(dst), strict=True):
        assert torch.equal(a, b)


def test_training_checkpoint_ema_choice_and_folder(tmp_path):
    raw, ema = perturbed(3), perturbed(4)
    ckpt = {"params": raw.state_dict(), "ema_params1": dict(ema.named_parameters()), "opt_state": {},
            "step": 7, "epoch": 0}
    (tmp_path / "run").mkdir()
    torch.save(ckpt, tmp_path / "run" / "checkpoint_100")
    torch.save({"params": {}}, tmp_path / "run" / "checkpoint_20")        # older, must not be picked
    assert resolve_official_source(tmp_path / "run").name == "checkpoint_100"
    got_ema = load_official(ELFBackbone(tiny_cfg()), tmp_path / "run")
    got_raw = load_official(ELFBackbone(tiny_cfg()), str(tmp_path / "run"), use_ema=False)
    assert torch.equal(outputs(got_ema)[0], outputs(ema)[0])
    assert torch.equal(outputs(got_raw)[0], outputs(raw)[0])


def test_wrapper_prefixes_stripped_and_no_ema_falls_back():
    m = perturbed(5)
    sd = read_official_state_dict({"params": {f"module.{k}": v for k, v in m.state_dict().items()}})
    assert set(sd) == set(m.state_dict())


def test_mismatch_lists_keys_and_hints_flags():
    sd = perturbed(6).state_dict()
    with pytest.raises(CheckpointError) as err:
        load_official(ELFBackbone(tiny_cfg(self_conditioning=False)), sd)
    msg = str(err.value)
    assert "unexpected in the checkpoint (2): self_cond_proj.bias, self_cond_proj.weight" in msg
    assert "self_conditioning" in msg
    del sd["blocks.1.mlp.w3.bias"]
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint \(1\): blocks.1.mlp.w3.bias"):
        load_official(ELFBackbone(tiny_cfg()), sd)


def test_shape_mismatch_is_a_checkpoint_error():
    sd = perturbed(7).state_dict()
    with pytest.raises(CheckpointError, match=r"unembed_bias \(23,\) vs \(30,\)"):
        load_official(ELFBackbone(tiny_cfg(vocab_size=30)), sd)


def test_attached_modules_are_not_official():
    m = perturbed(8)
    m.add_module("input_embedder", nn.Embedding(5, D))                    # what the pipeline does for tied tables
    assert set(official_state_dict(m)) == official_names(DEPTH)
    load_official(m, official_state_dict(perturbed(9)))


def test_config_from_state_dict():
    cfg = tiny_cfg(decoder_hidden=12, mlp_inner=40)
    inferred = config_from_state_dict(ELFBackbone(cfg).state_dict(), max_length=L)
    assert inferred == cfg
    with torch.device("meta"):
        big = ELFBackbone(ELFBackboneConfig(preset="ELF-M", latent_dim=512, vocab_size=32100, max_length=1024))
    m_cfg = config_from_state_dict(big.state_dict(), max_length=1024)
    assert (m_cfg.preset, m_cfg.head_dim, m_cfg.mlp_inner, m_cfg.vocab_size) == ("ELF-M", None, None, 32100)
    with pytest.raises(CheckpointError, match="not an ELF state dict"):
        config_from_state_dict({"foo": torch.zeros(1)}, max_length=8)


def test_pick_checkpoint():
    assert pick_checkpoint(["config.yml", "checkpoint_9", "checkpoint_10", "samples.jsonl"]) == "checkpoint_10"
    assert pick_checkpoint(["README.md", "model.safetensors"]) == "model.safetensors"
    assert pick_checkpoint(["README.md"]) is None
    with pytest.raises(CheckpointError, match="several weight files"):
        pick_checkpoint(["a.pt", "b.pt"])


@requires_wheel("safetensors")
def test_safetensors_file(tmp_path):
    from safetensors.torch import save_file
    m = perturbed(10)
    save_file({k: v.contiguous() for k, v in official_state_dict(m).items()}, str(tmp_path / "model.safetensors"))
    assert torch.equal(outputs(load_official(ELFBackbone(tiny_cfg()), tmp_path))[1], outputs(m)[1])


def test_missing_local_path_is_clear(tmp_path):
    with pytest.raises(CheckpointError, match="neither a local file/folder nor a hub id"):
        load_official(ELFBackbone(tiny_cfg()), str(tmp_path / "nope.pt"))
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_official(ELFBackbone(tiny_cfg()), tmp_path)


def test_not_a_state_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_official(ELFBackbone(tiny_cfg()), tmp_path / "x.pt")


def test_offline_hub_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(HubUnreachableError) as err:
        load_official(ELFBackbone(tiny_cfg()), "embedded-language-flows/ELF-B-owt-torch")
    msg = str(err.value)
    assert "embedded-language-flows/ELF-B-owt-torch" in msg and "local file or folder" in msg


def pd_student_checkpoint(student: ELFBackbone, ema: ELFBackbone) -> dict:
    """A training checkpoint as the distillation branch writes it (torch.save of one dict; the
    compiled student's raw params carry torch.compile's prefix)."""
    return {"params": {f"_orig_mod.{k}": v for k, v in student.state_dict().items()},
            "ema_params1": dict(ema.named_parameters()), "opt_state": {"state": {}, "param_groups": []},
            "lr_scheduler": {"last_epoch": 19017}, "step": 19017, "epoch": 1,
            "dropout_rng": torch.Generator().get_state(), "grad_accum_buffers": None}


def test_released_pd_student_loads_like_the_teacher(tmp_path, monkeypatch):
    """ELF-B-PD-owt-torch's training-checkpoint layout loads through load_official (EMA weights by
    default), the path the distillation teacher takes."""
    raw, ema = perturbed(11), perturbed(12)
    ckpt = pd_student_checkpoint(raw, ema)
    torch.save(ckpt, tmp_path / "checkpoint_19017")
    got = load_official(ELFBackbone(tiny_cfg()), tmp_path / "checkpoint_19017")
    assert torch.equal(outputs(got)[0], outputs(ema)[0])
    got_raw = load_official(ELFBackbone(tiny_cfg()), tmp_path / "checkpoint_19017", use_ema=False)
    assert torch.equal(outputs(got_raw)[0], outputs(raw)[0])


@requires_wheel("transformers")   # huggingface_hub comes with it
def test_released_pd_student_loads_from_the_hub_cache(tmp_path, monkeypatch):
    """The hub id ELF-B-PD-owt-torch, served from the local Hugging Face cache (no network)."""
    ema = perturbed(12)
    ckpt = pd_student_checkpoint(perturbed(11), ema)
    cache = tmp_path / "hub-cache"
    repo = cache / "models--embedded-language-flows--ELF-B-PD-owt-torch"
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snap.name)
    torch.save(ckpt, snap / "checkpoint_19017")
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))    # read at call time, not import
    got_hub = load_official(ELFBackbone(tiny_cfg()), "embedded-language-flows/ELF-B-PD-owt-torch")
    assert torch.equal(outputs(got_hub)[0], outputs(ema)[0])
