"""The T5 embedder with the pairwise mask, on a tiny randomly initialised T5 (no download).

The stock transformers forward (given a 4-D additive mask) is checked against an explicit
walk of the blocks, and both against the invariants the mask exists for: condition latents
depend on the condition only, target latents see the condition, padding never matters, and a
label-dropped target is encoded as if the condition were absent.
"""

from __future__ import annotations

import pytest
import torch

from elfkit.components.datasets.collate import Collator
from elfkit.components.embedders.base import additive_mask
from elfkit.components.embedders.t5 import T5Embedder, T5EmbedderConfig, stock_path_agrees, t5_encode_by_hand
from elfkit.components.embedders.tokenizers import train_bpe
from elfkit.errors import HubUnreachableError
from elfkit.pipeline.train.latents import embed_batch
from elfkit.testing import check_embedder
from tests.fixtures.optional import import_wheel

transformers = import_wheel("transformers")

CORPUS = ["hello world", "the cat sat on the mat.", "a b c", "condition and target text"] * 30


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(CORPUS, 300)


def tiny_t5(vocab: int):
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_heads=4,
                                relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                dropout_rate=0.0)
    return transformers.T5EncoderModel(cfg).eval()


@pytest.fixture(scope="module")
def embedder(tokenizer):
    return T5Embedder(T5EmbedderConfig(latent_std=0.2), tiny_t5(tokenizer.vocab_size), tokenizer)


def batch(collator, conds, targets, **kw):
    return collator([{"condition_input_ids": c, "input_ids": t} for c, t in zip(conds, targets, strict=True)], **kw)


@pytest.fixture
def collator(tokenizer):
    return Collator(max_length=12, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id, max_input_length=6, pad="eos")


def test_stock_4d_path_matches_the_hand_walk(embedder, collator):
    b = batch(collator, [[5, 6, 7, 1], [8, 9, 1]], [[10, 11, 12, 1], [13, 14, 15, 16, 17, 1]])
    mask = additive_mask(b.pairwise_mask)
    with torch.inference_mode():
        stock = embedder.encoder(input_ids=b.input_ids, attention_mask=mask).last_hidden_state
        manual = t5_encode_by_hand(embedder.encoder, b.input_ids, mask)
    assert torch.allclose(stock, manual, atol=1e-5)
    assert stock_path_agrees(embedder.encoder) and not embedder.use_manual


def test_target_sees_the_condition_and_the_condition_does_not_see_the_target(embedder, collator):
    base = batch(collator, [[5, 6, 7, 1]], [[10, 11, 12, 1]])
    new_cond = batch(collator, [[5, 60, 7, 1]], [[10, 11, 12, 1]])
    new_tgt = batch(collator, [[5, 6, 7, 1]], [[10, 110, 12, 1]])
    x, xc, xt = (embedder.embed(b.input_ids, b.pairwise_mask) for b in (base, new_cond, new_tgt))
    assert (x[0, 4:8] - xc[0, 4:8]).abs().max() > 1e-3        # target latents change with the condition
    assert torch.allclose(x[0, :4], xt[0, :4], atol=1e-6)      # condition latents ignore the target


def test_condition_latents_equal_the_condition_encoded_alone(embedder, collator):
    b = batch(collator, [[5, 6, 7, 1]], [[10, 11, 12, 1]])
    full = embedder.embed(b.input_ids, b.pairwise_mask)
    alone = embedder.embed(torch.tensor([[5, 6, 7, 1]]))
    assert torch.allclose(full[0, :4], alone[0], atol=1e-5)


def test_padding_ids_never_matter(embedder, collator):
    b = batch(collator, [[5, 6, 1]], [[10, 11, 1]])
    ids = b.input_ids.clone()
    ids[0, 6:] = 42                                            # rewrite the (EOS) padding tail
    a = embedder.embed(b.input_ids, b.pairwise_mask)
    c = embedder.embed(ids, b.pairwise_mask)
    assert torch.allclose(a[0, :6], c[0, :6], atol=1e-6)


def test_label_drop_encodes_the_target_unconditionally(embedder, collator):
    b = batch(collator, [[5, 6, 7, 1], [5, 6, 7, 1]], [[10, 11, 12, 1], [10, 11, 12, 1]])
    b.label_drop = torch.tensor([True, False])
    x0 = embed_batch(embedder, b)
    target_alone = embedder.embed(torch.tensor([[10, 11, 12, 1]]))
    assert torch.allclose(x0[0, 4:8], target_alone[0], atol=1e-5)   # relative positions: same as alone
    assert x0[0, :4].abs().max() == 0                                # condition zeroed for the dropped row
    assert (x0[1, 4:8] - target_alone[0]).abs().max() > 1e-3         # the kept row still sees its condition
    assert x0[1, :4].abs().max() > 0
    assert not x0.is_inference() and not x0.requires_grad


def test_manual_mask_path_gives_the_same_latents(tokenizer, collator):
    model = tiny_t5(tokenizer.vocab_size)
    stock = T5Embedder(T5EmbedderConfig(mask_path="stock"), model, tokenizer)
    manual = T5Embedder(T5EmbedderConfig(mask_path="manual"), model, tokenizer)
    b = batch(collator, [[5, 6, 1]], [[10, 11, 12, 13, 1]])
    assert torch.allclose(stock.embed(b.input_ids, b.pairwise_mask), manual.embed(b.input_ids, b.pairwise_mask),
                          atol=1e-5)


def test_normalisation_and_dim(embedder):
    ids = torch.tensor([[5, 6, 7]])
    raw = embedder.encoder(input_ids=ids).last_hidden_state
    assert embedder.dim == 32
    assert torch.allclose(embedder.embed(ids), raw / 0.2, atol=1e-5)


def test_bf16_precision_runs_on_cpu(tokenizer):
    e = T5Embedder(T5EmbedderConfig(precision="bf16"), tiny_t5(tokenizer.vocab_size), tokenizer)
    ref = T5Embedder(T5EmbedderConfig(precision="fp32"), tiny_t5(tokenizer.vocab_size), tokenizer)
    ids = torch.tensor([[5, 6, 7, 8]])
    out = e.embed(ids)
    assert out.dtype == torch.float32 and torch.allclose(out, ref.embed(ids), atol=0.15)


def test_conformance(embedder):
    assert check_embedder(embedder)[-1] == "gradients"


def test_frozen_and_stays_in_eval_mode(embedder):
    embedder.train()
    assert not embedder.training and not any(p.requires_grad for p in embedder.parameters())


def test_hub_model_offline_is_a_clear_error():
    with pytest.raises(HubUnreachableError, match="local directory"):
        T5Embedder.from_config(T5EmbedderConfig(model="t5-small"))
