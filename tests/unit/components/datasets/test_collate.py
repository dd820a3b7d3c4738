"""Collation against hand-built cases (ELF collate_fn semantics, reference §1.2–1.3)."""

from __future__ import annotations

import pytest
import torch

from elfkit.components.datasets.collate import Collator, pairwise_mask, sequence_masks
from elfkit.errors import DataError

PAD, EOS = 0, 1


def col(**kw) -> Collator:
    base = {"max_length": 8, "pad_id": PAD, "eos_id": EOS, "max_input_length": 2}
    return Collator(**{**base, **kw})


def test_condition_cut_concat_and_pad_mode_pad():
    b = col(pad="pad")([{"condition_input_ids": [5, 6, 7], "input_ids": [8, 9]}])
    assert b.input_ids.tolist() == [[5, 6, 8, 9, 0, 0, 0, 0]]          # condition cut to 2
    assert b.cond_mask.tolist() == [[True, True] + [False] * 6]
    assert b.valid_mask.tolist() == [[True] * 4 + [False] * 4]
    assert b.loss_mask.tolist() == [[0, 0, 1, 1, 0, 0, 0, 0]]           # pads excluded
    assert b.loss_mask.dtype == torch.float32


def test_eos_padding_is_trained():
    b = col(pad="eos")([{"condition_input_ids": [5, 6], "input_ids": [8, 9]}])
    assert b.input_ids.tolist() == [[5, 6, 8, 9, 1, 1, 1, 1]]
    assert b.valid_mask.tolist() == [[True] * 4 + [False] * 4]          # EOS tail is still "invalid" ...
    assert b.loss_mask.tolist() == [[0, 0, 1, 1, 1, 1, 1, 1]]           # ... but trained


def test_pairwise_mask_by_hand():
    # cond_len 2, total 4, S 5: rows 0-1 see cols 0-1; rows 2-4 (target and pad) see cols 0-3
    b = Collator(max_length=5, pad_id=PAD, eos_id=EOS, max_input_length=3)(
        [{"condition_input_ids": [5, 6], "input_ids": [8, 9]}])
    expected = torch.tensor([
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
    ], dtype=torch.bool)
    assert b.pairwise_mask.shape == (1, 5, 5)
    assert torch.equal(b.pairwise_mask[0], expected)


def test_truncation_cuts_the_target():
    b = Collator(max_length=6, pad_id=PAD, eos_id=EOS, max_input_length=3, pad="eos")(
        [{"condition_input_ids": [5, 6], "input_ids": list(range(10, 21))}])
    assert b.input_ids.tolist() == [[5, 6, 10, 11, 12, 13]]
    assert b.valid_mask.all()
    assert b.loss_mask.tolist() == [[0, 0, 1, 1, 1, 1]]


def test_condition_longer_than_max_length_without_cut():
    b = Collator(max_length=4, pad_id=PAD, eos_id=EOS, pad="eos")(
        [{"condition_input_ids": [5, 6, 7, 8, 9], "input_ids": [3]}])
    assert b.input_ids.tolist() == [[5, 6, 7, 8]]
    assert b.cond_mask.all() and b.loss_mask.sum() == 0


def test_unconditional_full_chunks_skip_the_pairwise_mask():
    b = col(max_input_length=None)([{"input_ids": list(range(2, 10))}, {"input_ids": list(range(3, 11))}])
    assert b.pairwise_mask is None
    assert not b.cond_mask.any() and b.loss_mask.all() and not b.conditional


def test_unconditional_with_padding_masks_pad_columns():
    b = col(max_input_length=None)([{"input_ids": [4, 5, 6]}])
    pm = b.pairwise_mask[0]
    assert pm[:, :3].all() and not pm[:, 3:].any()                      # every row sees valid columns only
    assert b.loss_mask.tolist() == [[1, 1, 1, 0, 0, 0, 0, 0]]


def test_mixed_batch_rows_are_independent():
    b = col(pad="eos")([{"condition_input_ids": [5], "input_ids": [8, 9, 10]},
                        {"condition_input_ids": [5, 6], "input_ids": [8]}])
    cond, valid = sequence_masks(torch.tensor([1, 2]), torch.tensor([4, 3]), 8)
    assert torch.equal(b.cond_mask, cond) and torch.equal(b.valid_mask, valid)
    assert torch.equal(b.pairwise_mask, pairwise_mask(cond, valid))


def test_label_drop_follows_the_generator():
    ex = [{"condition_input_ids": [5, 6], "input_ids": [8]}] * 64
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    b = col(label_drop_prob=0.3)(ex, generator=g1)
    expected = torch.rand(64, generator=g2) < 0.3
    assert torch.equal(b.label_drop, expected)
    assert 5 < int(b.label_drop.sum()) < 40


def test_label_drop_zero_draws_nothing_and_one_drops_all():
    ex = [{"condition_input_ids": [5], "input_ids": [8]}] * 4
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    b = col(label_drop_prob=0.0)(ex, generator=g)
    assert not b.label_drop.any() and torch.equal(g.get_state(), state)
    assert col(label_drop_prob=1.0)(ex).label_drop.all()


def test_label_drop_never_applies_to_unconditional_batches():
    b = col(max_input_length=None, label_drop_prob=1.0)([{"input_ids": [4, 5]}])
    assert not b.label_drop.any()


def test_indices_and_device_move():
    b = col()([{"input_ids": [4]}, {"input_ids": [5]}], indices=[7, 3]).to("cpu")
    assert b.example_index.tolist() == [7, 3]


@pytest.mark.parametrize("kw", [{"max_input_length": 8}, {"pad": "left"}, {"label_drop_prob": 1.5},
                                {"max_length": 0}])
def test_bad_settings_are_data_errors(kw):
    with pytest.raises(DataError):
        col(**kw)


def test_empty_batch_is_an_error():
    with pytest.raises(DataError, match="empty"):
        col()([])
