"""Raw text → fixed-length token chunks (through ``datasets.map``, cached) and conditional pairs.

Chunking: every document is encoded (no special tokens) and followed by EOS; the stream of a
map batch (``map_batch_size`` documents) is cut into ``max_length`` chunks and the remainder
of the batch is dropped, as HF's ``group_texts`` does. Every chunk is full, so unconditional
batches need no pairwise mask and the latent cache applies.

Caching: the map result is written to ``<cache_dir>/tokenized/<key>.arrow`` with ``key`` a
hash of the tokenizer name, ``max_length``, the text field and the source data's
fingerprint. The same inputs reload the file (a cache hit); a different tokenizer or length
writes a new one. The key is explicit because datasets cannot hash a closure over a
tokenizer object reliably.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from elfkit.contracts import TextTokenizer
from elfkit.errors import DataError

CHUNK_VERSION = "chunk-v1"


def tokenization_key(tokenizer: TextTokenizer, *parts: Any) -> str:
    raw = json.dumps([CHUNK_VERSION, tokenizer.name, *[str(p) for p in parts]])
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def encode_many(tokenizer: TextTokenizer, texts: Sequence[str]) -> list[list[int]]:
    batch = getattr(tokenizer, "encode_batch", None)
    return batch(list(texts)) if batch is not None else [tokenizer.encode(t) for t in texts]


def chunk_ids(docs: Sequence[Sequence[int]], eos_id: int, max_length: int) -> list[list[int]]:
    """Documents (each followed by EOS) as one stream, cut into full ``max_length`` chunks."""
    flat: list[int] = []
    for d in docs:
        flat.extend(d)
        flat.append(eos_id)
    n = len(flat) // max_length * max_length
    return [flat[i: i + max_length] for i in range(0, n, max_length)]


def tokenize_and_chunk(ds: Any, tokenizer: TextTokenizer, *, text_field: str, max_length: int,
                       cache_dir: str | Path | None, source_fingerprint: str, num_proc: int | None = None,
                       map_batch_size: int = 1000) -> Any:
    """A ``datasets.Dataset``/``IterableDataset`` of texts → one of ``{"input_ids": [max_length ids]}``."""
    cols = list(ds.column_names or [])
    if cols and text_field not in cols:
        raise DataError(f"the data have no '{text_field}' field (fields: {', '.join(cols)}); set `text_field:`")
    eos = tokenizer.eos_id

    def fn(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        texts = [t for t in batch[text_field] if t]
        return {"input_ids": chunk_ids(encode_many(tokenizer, texts), eos, max_length)}

    if not hasattr(ds, "cache_files"):           # IterableDataset: lazy, nothing to cache
        return ds.map(fn, batched=True, batch_size=map_batch_size, remove_columns=cols or None)
    key = tokenization_key(tokenizer, max_length, text_field, source_fingerprint)
    kwargs: dict[str, Any] = {}
    if cache_dir is not None:
        out = Path(cache_dir) / "tokenized"
        out.mkdir(parents=True, exist_ok=True)
        kwargs = {"cache_file_name": str(out / f"{key}.arrow"), "load_from_cache_file": True}
    chunks = ds.map(fn, batched=True, batch_size=map_batch_size, remove_columns=cols, num_proc=num_proc,
                    new_fingerprint=key, desc=f"tokenising ({tokenizer.name}, {max_length})", **kwargs)
    if len(chunks) == 0:
        raise DataError(f"no full {max_length}-token chunk could be made from the data (too little text?)")
    return chunks


def leading_text(tokenizer: TextTokenizer, text: str, max_tokens: int) -> str:
    """The raw prefix of ``text`` covering its first ``max_tokens`` tokens (decode as fallback)."""
    with_offsets = getattr(tokenizer, "encode_with_offsets", None)
    if with_offsets is None:
        return tokenizer.decode(tokenizer.encode(text)[:max_tokens])
    ids, offsets = with_offsets(text)
    if len(ids) <= max_tokens:
        return text.strip()
    return text[: offsets[max_tokens - 1][1]].strip()


def pair_example(tokenizer: TextTokenizer, source_ids: list[int], target_ids: list[int]) -> dict[str, list[int]]:
    """ELF's released conditional format: condition and target each end with EOS."""
    return {"condition_input_ids": [*source_ids, tokenizer.eos_id], "input_ids": [*target_ids, tokenizer.eos_id]}


def tokenize_pairs(ds: Any, tokenizer: TextTokenizer, *, source_field: str, target_field: str,
                   cache_dir: str | Path | None, source_fingerprint: str, num_proc: int | None = None) -> Any:
    """A dataset of (source, target) texts → ``{"condition_input_ids", "input_ids"}`` (EOS-terminated)."""
    cols = list(ds.column_names or [])
    for f in (source_field, target_field):
        if cols and f not in cols:
            raise DataError(f"the data have no '{f}' field (fields: {', '.join(cols)})")
    eos = tokenizer.eos_id

    def fn(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        src = encode_many(tokenizer, [s or "" for s in batch[source_field]])
        tgt = encode_many(tokenizer, [t or "" for t in batch[target_field]])
        return {"condition_input_ids": [[*s, eos] for s in src], "input_ids": [[*t, eos] for t in tgt]}

    if not hasattr(ds, "cache_files"):
        return ds.map(fn, batched=True)
    key = tokenization_key(tokenizer, "pairs", source_field, target_field, source_fingerprint)
    kwargs: dict[str, Any] = {}
    if cache_dir is not None:
        out = Path(cache_dir) / "tokenized"
        out.mkdir(parents=True, exist_ok=True)
        kwargs = {"cache_file_name": str(out / f"{key}.arrow"), "load_from_cache_file": True}
    return ds.map(fn, batched=True, num_proc=num_proc, new_fingerprint=key,
                  desc=f"tokenising pairs ({tokenizer.name})", **kwargs)
