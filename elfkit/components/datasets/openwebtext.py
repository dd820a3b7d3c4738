"""OpenWebText: raw text tokenised here (``openwebtext``) or the official T5 chunks (``openwebtext-t5``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from elfkit.components.datasets.base import TextDataset, UnconditionalConfig, require_t5_ids
from elfkit.components.datasets.hub import load_hub, load_local
from elfkit.components.datasets.splits import DataSplits
from elfkit.components.datasets.text import chunk_ids, encode_many, leading_text, tokenize_and_chunk
from elfkit.contracts import TextTokenizer
from elfkit.errors import DataError


class OpenWebTextConfig(UnconditionalConfig):
    max_length: int = Field(default=1024, gt=1)
    """Chunk length (ELF OWT: 1024 T5 tokens)."""
    hub_id: str = "Skylion007/openwebtext"
    """Hub dataset (parquet) used when neither data_files nor path is set."""
    data_files: list[str] | str | None = None
    """Local copy: parquet/jsonl/txt files with a text field."""
    path: str | None = None
    """Local copy: a folder written by datasets.save_to_disk."""
    text_field: str = "text"
    num_proc: int | None = Field(default=None, gt=0)
    """Processes for tokenisation (datasets.map)."""
    eval_size: int = Field(default=256, ge=0)
    """The last eval_size documents are held out (their leading max_length tokens are the reference texts)."""


class OpenWebText(TextDataset[OpenWebTextConfig]):
    """Unconditional web text, documents joined with EOS and cut into full ``max_length`` chunks."""

    def load(self, tokenizer: TextTokenizer, cache_dir: str | Path | None = None) -> DataSplits:
        c = self.cfg
        root = self.cache_root(cache_dir)
        if c.data_files is not None or c.path is not None:
            ds, source_fp = load_local(data_files=c.data_files, path=c.path, streaming=c.streaming,
                                       cache_dir=root / "hf", sample_by="document")
        else:
            ds, source_fp = load_hub(c.hub_id, streaming=c.streaming, cache_dir=root / "hf"), c.hub_id
        if c.streaming:
            eval_docs = list(ds.take(c.eval_size)) if c.eval_size else []
            train_docs = ds.skip(c.eval_size)
        else:
            n = len(ds)
            if n <= c.eval_size:
                raise DataError(f"only {n} documents: fewer than eval_size={c.eval_size} + 1")
            train_docs = ds.select(range(n - c.eval_size))
            eval_docs = ds.select(range(n - c.eval_size, n))
        train = tokenize_and_chunk(train_docs, tokenizer, text_field=c.text_field, max_length=c.max_length,
                                   cache_dir=None if c.streaming else root, source_fingerprint=f"{source_fp}:train",
                                   num_proc=c.num_proc)
        texts = [row[c.text_field] for row in eval_docs if row[c.text_field]]
        eval_chunks = [{"input_ids": ids} for ids in chunk_ids(encode_many(tokenizer, texts), tokenizer.eos_id,
                                                                c.max_length)]
        return DataSplits(train=train, eval=eval_chunks, collator=self.collator(tokenizer), conditional=False,
                          eval_texts=[leading_text(tokenizer, t, c.max_length) for t in texts],
                          fingerprint=self.fingerprint(tokenizer, source_fp),
                          cache_latents=self.cfg.cache_latents, fixed_chunks=True,
                          info={"source": c.path or c.data_files or c.hub_id})


class OpenWebTextT5Config(UnconditionalConfig):
    max_length: int = Field(default=1024, gt=1)
    hub_id: str = "embedded-language-flows/openwebtext-t5"
    """The official pre-chunked T5 split (1024-token chunks, ~9.7M rows)."""
    data_files: list[str] | str | None = None
    """Local copy: parquet/arrow files with input_ids."""
    path: str | None = None
    """Local copy: a save_to_disk folder."""
    eval_size: int = Field(default=256, ge=0)
    """The last eval_size chunks are held out (decoded as reference texts)."""


class OpenWebTextT5(TextDataset[OpenWebTextT5Config]):
    """ELF's own OWT data, already T5-tokenised and chunked (needs the t5 embedder)."""

    def load(self, tokenizer: TextTokenizer, cache_dir: str | Path | None = None) -> DataSplits:
        c = self.cfg
        require_t5_ids(tokenizer, c.hub_id)
        root = self.cache_root(cache_dir)
        if c.data_files is not None or c.path is not None:
            ds, source_fp = load_local(data_files=c.data_files, path=c.path, streaming=c.streaming,
                                       cache_dir=root / "hf")
        else:
            ds, source_fp = load_hub(c.hub_id, streaming=c.streaming, cache_dir=root / "hf"), c.hub_id
        if "input_ids" not in (ds.column_names or ["input_ids"]):
            raise DataError(f"{c.path or c.data_files or c.hub_id}: no input_ids column (fields: {ds.column_names})")
        extra = [k for k in (ds.column_names or []) if k != "input_ids"]
        if extra:
            ds = ds.remove_columns(extra)
        if c.streaming:
            eval_rows, train = list(ds.take(c.eval_size)), ds.skip(c.eval_size)
        else:
            n = len(ds)
            if n <= c.eval_size:
                raise DataError(f"only {n} chunks: fewer than eval_size={c.eval_size} + 1")
            train, eval_rows = ds.select(range(n - c.eval_size)), list(ds.select(range(n - c.eval_size, n)))
        eval_chunks = [{"input_ids": list(r["input_ids"])[: c.max_length]} for r in eval_rows]
        # full chunks (no padding) only if the stored chunks are at least max_length long
        full = all(len(r["input_ids"]) == c.max_length for r in eval_chunks)
        return DataSplits(train=train, eval=eval_chunks, collator=self.collator(tokenizer), conditional=False,
                          eval_texts=[tokenizer.decode(r["input_ids"]) for r in eval_chunks],
                          fingerprint=self.fingerprint(tokenizer, source_fp),
                          cache_latents=self.cfg.cache_latents, fixed_chunks=full and bool(eval_chunks),
                          info={"source": c.path or c.data_files or c.hub_id})
