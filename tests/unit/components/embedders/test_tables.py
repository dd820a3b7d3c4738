"""A ``learned-table`` tied to the ELF decoder's unembedding: one Parameter, trained once,
averaged, checkpointed, sampled and exported with the backbone (docs/data.md, "Tying")."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from elfkit.components.backbones import load_official, official_state_dict
from elfkit.components.embedders import LearnedTable
from elfkit.errors import RecipeError
from elfkit.pipeline.build import build_components, tie_unembedding
from elfkit.pipeline.checkpoint import Checkpoint
from elfkit.pipeline.rundir import RunDir
from elfkit.pipeline.train.distributed import DistInfo
from elfkit.pipeline.train.loop import fit
from elfkit.pipeline.train.muon import muon_scale
from elfkit.pipeline.train.optimizers import build_optimizer, partition_parameters
from elfkit.recipe.load import validate_recipe
from elfkit.recipe.schema import TrainSection
from elfkit.registry import build_registry
from tests.fixtures.train_fixtures import learned_table, make_components, tiny_elf

V, D = 16, 8


def table(tie: bool = True, seed: int = 0) -> LearnedTable:
    torch.manual_seed(seed)
    return learned_table(V, D, tie=tie)


def tied_pair(seed: int = 0, **backbone) -> tuple[LearnedTable, nn.Module]:
    emb = table(seed=seed)
    torch.manual_seed(seed + 1)
    net = tiny_elf(latent_dim=D, vocab_size=V, decoder_hidden=D, **backbone)
    assert tie_unembedding(emb, net, embedder_name="learned-table", backbone_name="elf")
    with torch.no_grad():   # a zero bias would hide a missing term
        net.unembed_bias.normal_(std=0.5)
    return emb, net


def head_by_hand(net: nn.Module, h: torch.Tensor, sd: dict | None = None) -> torch.Tensor:
    """GELU_tanh(h·P + p)·Wᵀ + u with the tensors read from ``sd`` (default: the module's)."""
    sd = sd if sd is not None else dict(net.named_parameters())
    g = F.gelu(h @ sd["proj_kernel"] + sd["proj_bias"], approximate="tanh")
    return g @ sd["unembed_table"].t() + sd["unembed_bias"]


# ----------------------------------------------------------------------------------------
# The tie itself
# ----------------------------------------------------------------------------------------
def test_backbone_holds_the_embedders_parameter_object():
    emb, net = tied_pair()
    assert net.tied and net.unembed_table is emb.weight
    names = dict(net.named_parameters())
    assert "unembed_kernel" not in names and names["unembed_table"] is emb.weight
    assert sum(p is emb.weight for p in net.parameters()) == 1
    sd = net.state_dict()
    assert "unembed_kernel" not in sd and tuple(sd["unembed_table"].shape) == (V, D) and "unembed_bias" in sd

    h = torch.randn(3, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.decode_logits(h), head_by_hand(net, h), rtol=0, atol=1e-5)
        before = net.decode_logits(h)
        emb.weight[4] += 1.0                                     # an edit of the embedder's table moves logit 4 only
        after = net.decode_logits(h)
    assert (after[..., 4] - before[..., 4]).abs().min() > 0
    torch.testing.assert_close(after[..., :4], before[..., :4], rtol=0, atol=0)
    with torch.no_grad():
        saved = emb.weight.clone()
        net.reset_parameters()                                   # the table is the embedder's: left alone
    assert torch.equal(emb.weight, saved) and net.unembed_table is emb.weight
    tie_unembedding(emb, net)                                    # tying again to the same table is a no-op
    with pytest.raises(RecipeError, match="already tied"):
        net.tie_unembedding(nn.Parameter(torch.zeros(V, D)))


def test_untied_table_leaves_the_backbone_alone():
    emb = table(tie=False)
    net = tiny_elf(latent_dim=D, vocab_size=V, decoder_hidden=D)
    assert emb.tied_unembedding is None and not tie_unembedding(emb, net)
    assert not net.tied and tuple(net.unembed_kernel.shape) == (D, V)
    assert all(p is not emb.weight for p in net.parameters())


def test_cross_entropy_gradient_reaches_the_table():
    emb, net = tied_pair()
    h = torch.randn(6, 32)
    ids = torch.randint(0, V, (6,))
    F.cross_entropy(net.decode_logits(h), ids, reduction="sum").backward()
    with torch.no_grad():
        g = F.gelu(h @ net.proj_kernel + net.proj_bias, approximate="tanh")                  # (6, D)
        p = torch.softmax(g @ emb.weight.t() + net.unembed_bias, dim=-1)
        want = (p - F.one_hot(ids, V).float()).t() @ g                                       # dL/dW, (V, D)
    assert emb.weight.grad is not None and emb.weight.grad.abs().sum() > 0
    torch.testing.assert_close(emb.weight.grad, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(net.unembed_bias.grad, (p - F.one_hot(ids, V).float()).sum(0), rtol=1e-4, atol=1e-5)

    emb.weight.grad = None                                        # the latents feed the same table
    emb.embed(torch.tensor([[3, 3, 5]])).sum().backward()
    assert float(emb.weight.grad[3].sum()) == pytest.approx(2 * D / emb.latent_std)
    assert float(emb.weight.grad[4].abs().sum()) == 0.0


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_optimizer_holds_the_tied_table_once_with_the_unembedding_layout(optimizer):
    emb, net = tied_pair()
    extra = list(emb.named_parameters(prefix="embedder"))
    opt = build_optimizer(net, TrainSection(optimizer=optimizer, lr=1e-3), extra=extra)
    params = [p for g in opt.param_groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(net.parameters()))
    assert sum(p is emb.weight for p in params) == 1
    if optimizer == "muon":
        (group,) = [g for g in opt.param_groups if any(p is emb.weight for p in g["params"])]
        assert group["algo"] == "muon" and group["in_out"] is False           # (V, D) = (out, in)
    part = partition_parameters(net, extra)
    assert "unembed_table" in [n for n, _ in part.muon] and "embedder.weight" not in [n for n, _ in part.muon]
    assert muon_scale(emb.weight.shape, in_out=False) == pytest.approx(math.sqrt(V / D))   # fan_out V, fan_in D


# ----------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------
def test_shapes_that_cannot_tie_are_recipe_errors_naming_the_keys():
    with pytest.raises(RecipeError, match=r"embedder.dim \(8\) must equal backbone.decoder_hidden \(24\).*"
                                          r"set backbone.decoder_hidden: 8 or embedder.tie_unembedding: false"):
        tie_unembedding(table(), tiny_elf(latent_dim=D, vocab_size=V, decoder_hidden=24))
    with pytest.raises(RecipeError, match=r"16 rows .* backbone.vocab_size is 30.*embedder.tie_unembedding: false"):
        tie_unembedding(table(), tiny_elf(latent_dim=D, vocab_size=30, decoder_hidden=D))
    with pytest.raises(RecipeError, match=r"backbone.decoder_head is false"):
        tie_unembedding(table(), tiny_elf(latent_dim=D, vocab_size=V, decoder_hidden=D, decoder_head=False))
    with pytest.raises(RecipeError, match=r"backbone 'mine' cannot tie its unembedding.*"
                                          r"embedder.tie_unembedding: false"):
        tie_unembedding(table(), nn.Linear(2, 2), embedder_name="learned-table", backbone_name="mine")


def test_validation_refuses_a_recipe_whose_widths_cannot_tie(tmp_path):
    """Caught when the recipe is validated (before data or models load), naming both keys."""
    with pytest.raises(RecipeError, match=r"backbone.decoder_hidden is 32, .*'learned-table'.* 16-d table"
                                          r".*embedder.tie_unembedding"):
        validate_recipe(_recipe(tmp_path, dim=16, decoder_hidden=32))
    recipe = validate_recipe(_recipe(tmp_path, dim=16, decoder_hidden=32, tie=False))
    c = build_components(recipe, build_registry(entry_points=False), with_dataset=False)
    assert not c.backbone.tied


def test_fsdp_is_refused_for_a_trainable_embedder(tmp_path):
    from elfkit.pipeline.train.loop import _Trainer

    comps, data = make_components(table="tied", steps=1, parallel="fsdp")
    info = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), created_group=False)
    with pytest.raises(RecipeError, match="train.parallel: fsdp does not support a trainable embedder"):
        _Trainer(comps, data, tmp_path, info, None)


# ----------------------------------------------------------------------------------------
# Checkpoints and official names
# ----------------------------------------------------------------------------------------
def test_state_dict_round_trip_sets_the_embedders_table():
    emb, net = tied_pair(seed=0)
    emb2, net2 = tied_pair(seed=5)
    assert not torch.equal(emb.weight, emb2.weight)
    net2.load_state_dict(net.state_dict(), strict=True)
    assert net2.unembed_table is emb2.weight and torch.equal(emb2.weight, emb.weight)
    h, ids = torch.randn(2, 4, 32), torch.tensor([[2, 7, 9]])
    with torch.no_grad():
        assert torch.equal(net2.decode_logits(h), net.decode_logits(h))
        assert torch.equal(emb2.embed(ids), emb.embed(ids))


def test_official_names_write_the_table_as_an_unembedding_kernel():
    emb, net = tied_pair()
    sd = official_state_dict(net)
    assert "unembed_table" not in sd and torch.equal(sd["unembed_kernel"], emb.weight.detach().t())
    untied = tiny_elf(latent_dim=D, vocab_size=V, decoder_hidden=D)
    assert set(sd) == set(official_state_dict(untied))
    load_official(untied, sd)
    h = torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(untied.decode_logits(h), net.decode_logits(h), rtol=0, atol=1e-6)
    emb2, net2 = tied_pair(seed=3)
    load_official(net2, sd)                                       # back into a tied backbone: sets the table
    assert net2.unembed_table is emb2.weight and torch.equal(emb2.weight, emb.weight)


# ----------------------------------------------------------------------------------------
# Training: the trainer with toy data, then the real pipeline end to end
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("tie", [True, False])
def test_training_steps_the_table_and_resumes_exactly(tmp_path, tie):
    kw = dict(table="tied" if tie else "untied", checkpoint_every=100, lr=1e-2, ema_decay=0.5)
    comps, data = make_components(steps=4, **kw)
    init = comps.embedder.weight.detach().clone()
    full = fit(comps, data, RunDir(tmp_path / "full"))
    assert full.stopped == "completed" and math.isfinite(full.final_loss)
    ck = Checkpoint.load(full.checkpoint)
    live = comps.embedder.weight.detach()
    assert not torch.allclose(live, init)                          # it trained
    n_unique = len({id(p) for p in [*comps.backbone.parameters(), *comps.embedder.parameters()]})
    assert len(ck.optimizer["state"]) == n_unique
    if tie:
        assert comps.backbone.unembed_table is comps.embedder.weight
        assert ck.embedder is None and ck.embedder_ema is None   # the table lives in model/ema
        assert torch.equal(ck.model["unembed_table"], live)
        ema_table = ck.ema["unembed_table"]
        assert not any(k.startswith("embedder") for k in ck.optimizer["state"])
    else:
        assert "unembed_table" not in ck.model and torch.equal(ck.embedder["weight"], live)
        ema_table = ck.embedder_ema["weight"]
        assert "embedder.weight" in ck.optimizer["state"]
    assert not torch.allclose(ema_table, live) and not torch.allclose(ema_table, init)   # an average of both

    comps, data = make_components(steps=2, **kw)
    fit(comps, data, RunDir(tmp_path / "split"))
    comps, data = make_components(steps=4, **kw)
    second = fit(comps, data, RunDir(tmp_path / "split"))
    assert second.stopped == "completed" and second.steps == 4
    b = Checkpoint.load(second.checkpoint)
    for key in ("model", "ema", "embedder", "embedder_ema"):
        assert (getattr(b, key) is None) == (getattr(ck, key) is None)
        for name, t in (getattr(ck, key) or {}).items():
            torch.testing.assert_close(getattr(b, key)[name], t, rtol=0, atol=1e-6, msg=f"{key}.{name}")


def _recipe(tmp_path: Path, *, dim: int = 16, decoder_hidden: int = 16, tie: bool = True, steps: int = 3) -> dict:
    data = tmp_path / "data.txt"
    if not data.exists():
        data.write_text("\n\n".join(f"Verse {i}: the light came after {i + 1} days and {i + 2} nights."
                                    for i in range(120)))
    return {
        "name": "learned-table", "seed": 0,
        "data": {"name": "local", "data_files": str(data), "max_length": 16, "eval_size": 8,
                 "cache_dir": str(tmp_path / "cache")},
        "embedder": {"name": "learned-table", "dim": dim, "tie_unembedding": tie},
        "backbone": {"name": "elf", "preset": None, "depth": 1, "width": 32, "heads": 2, "bottleneck_dim": 8,
                     "decoder_hidden": decoder_hidden},
        "target": {"name": "x", "loss_space": "v"}, "time": {"name": "logit-normal", "mean": -1.5, "std": 0.8},
        "objective": {"name": "elf"}, "path": {"noise_scale": 2.0},
        "train": {"steps": steps, "batch_size": 8, "checkpoint_every": steps, "log_every": 1, "ema_decay": 0.5,
                  "lr": 1e-2},
        "sample": {"sampler": {"name": "euler", "steps": 2}, "num_samples": 2, "batch_size": 2, "seeds": [0]},
    }


@pytest.mark.slow
@pytest.mark.parametrize("tie", [True, False])
def test_pipeline_checkpoint_samples_with_the_ema_table(tmp_path, tie):
    from elfkit.pipeline.sample import generate_records
    from elfkit.pipeline.train.stage import train_stage
    from elfkit.pipeline.trained import load_trained

    ckpt = train_stage(validate_recipe(_recipe(tmp_path, tie=tie)), tmp_path / "run")
    payload = Checkpoint.load(ckpt)
    if tie:
        assert payload.embedder is None
        tables = {True: payload.ema["unembed_table"], False: payload.model["unembed_table"]}
    else:
        assert "unembed_table" not in payload.ema
        tables = {True: payload.embedder_ema["weight"], False: payload.embedder["weight"]}
    assert not torch.equal(tables[True], tables[False])

    for use_ema in (True, False):
        sd = payload.ema if use_ema else payload.model
        trained = load_trained(ckpt, use_ema=use_ema)
        emb, net = trained.components.embedder, trained.components.backbone
        assert torch.equal(emb.weight, tables[use_ema]) and net.tied == tie
        assert not tie or net.unembed_table is emb.weight
        ids = torch.tensor([[464, 1657, 1625, 706]])
        with torch.no_grad():
            want = (tables[use_ema][ids] - emb.latent_mean) / emb.latent_std
            assert torch.equal(emb.embed(ids), want)                 # condition latents: the same (EMA) table
            if tie:                                                  # and the logits use it too
                h = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
                torch.testing.assert_close(net.decode_logits(h), head_by_hand(net, h, sd), rtol=0, atol=1e-5)
    records = generate_records(load_trained(ckpt))
    assert len(records) == 2 and all(r.token_ids is not None for r in records)
