"""Local data: text files, jsonl/json/parquet with a ``text`` or ``source``/``target`` fields, or
folders written by ``datasets.save_to_disk`` (raw or already tokenised).

Unconditional (``max_input_length`` unset): texts are tokenised and cut into full
``max_length`` chunks (cached). Conditional (``max_input_length`` set): each row is a
(source, target) pair, both ending with EOS. Rows that already hold ``input_ids`` (and
``condition_input_ids``) are used as they are. Without an eval copy, the last rows (at most
``eval_size``, at most a tenth of the data) are held out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from elfkit.components.datasets.base import DatasetConfig, TextDataset
from elfkit.components.datasets.hub import load_local
from elfkit.components.datasets.splits import DataSplits, EvalPair
from elfkit.components.datasets.text import chunk_ids, encode_many, leading_text, tokenize_and_chunk, tokenize_pairs
from elfkit.contracts import TextTokenizer
from elfkit.errors import DataError


class LocalConfig(DatasetConfig):
    data_files: list[str] | str | None = None
    """Files of one format: .txt, .jsonl/.json, .parquet, .arrow, .csv."""
    path: str | None = None
    """A folder written by datasets.save_to_disk."""
    eval_data_files: list[str] | str | None = None
    eval_path: str | None = None
    text_field: str = "text"
    """Unconditional: the text field (text files always use 'text')."""
    source_field: str = "source"
    """Conditional: the source (condition) text field."""
    target_field: str = "target"
    """Conditional: the target text field."""
    sample_by: Literal["paragraph", "line", "document"] = "paragraph"
    """Text files: one example per paragraph (blank-line separated), line, or file."""
    num_proc: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _source(self) -> LocalConfig:
        if self.data_files is None and self.path is None:
            raise ValueError("local data need `data_files:` or `path:`")
        return self


def _hold_out(ds: Any, eval_size: int) -> tuple[Any, Any]:
    k = min(eval_size, len(ds) // 10)
    n = len(ds)
    return ds.select(range(n - k)), ds.select(range(n - k, n))


class LocalDataset(TextDataset[LocalConfig]):
    """Your own files, unconditional or conditional."""

    @property
    def conditional(self) -> bool:  # type: ignore[override]
        return self.cfg.max_input_length is not None

    def load(self, tokenizer: TextTokenizer, cache_dir: str | Path | None = None) -> DataSplits:
        c = self.cfg
        root = self.cache_root(cache_dir)
        ds, fp = load_local(data_files=c.data_files, path=c.path, streaming=c.streaming,
                            cache_dir=root / "hf", sample_by=c.sample_by)
        if c.eval_data_files is not None or c.eval_path is not None:
            ev, _ = load_local(data_files=c.eval_data_files, path=c.eval_path, cache_dir=root / "hf",
                               sample_by=c.sample_by)
        elif c.streaming:
            ev, ds = ds.take(c.eval_size), ds.skip(c.eval_size)
        else:
            ds, ev = _hold_out(ds, c.eval_size)
        cols = set(ds.column_names or [])
        loader = self._conditional if self.conditional else self._unconditional
        return loader(ds, list(ev), cols, fp, tokenizer, root)

    def _unconditional(self, ds: Any, ev: list[dict], cols: set[str], fp: str, tokenizer: TextTokenizer,
                       root: Path) -> DataSplits:
        c = self.cfg
        if "input_ids" in cols:        # already tokenised: use the rows as they are
            train = ds.remove_columns([k for k in cols if k != "input_ids"]) if len(cols) > 1 else ds
            eval_rows = [{"input_ids": list(r["input_ids"])} for r in ev]
            texts = [tokenizer.decode(r["input_ids"][: c.max_length]) for r in eval_rows]
            fixed = False
        else:
            train = tokenize_and_chunk(ds, tokenizer, text_field=c.text_field, max_length=c.max_length,
                                       cache_dir=None if c.streaming else root, source_fingerprint=fp,
                                       num_proc=c.num_proc)
            raw = [r[c.text_field] for r in ev if r.get(c.text_field)]
            chunks = chunk_ids(encode_many(tokenizer, raw), tokenizer.eos_id, c.max_length)
            eval_rows = [{"input_ids": x} for x in chunks]
            texts, fixed = [leading_text(tokenizer, t, c.max_length) for t in raw], True
        return DataSplits(train=train, eval=eval_rows, collator=self.collator(tokenizer), conditional=False,
                          eval_texts=texts, fingerprint=self.fingerprint(tokenizer, fp),
                          cache_latents=self.cfg.cache_latents, fixed_chunks=fixed,
                          info={"source": c.path or c.data_files})

    def _conditional(self, ds: Any, ev: list[dict], cols: set[str], fp: str, tokenizer: TextTokenizer,
                     root: Path) -> DataSplits:
        c = self.cfg
        if {"condition_input_ids", "input_ids"} <= cols:
            train = ds
            pairs_src = [(r.get(c.source_field) or tokenizer.decode(r["condition_input_ids"]),
                          r.get(c.target_field) or tokenizer.decode(r["input_ids"]), list(r["condition_input_ids"]))
                         for r in ev]
            eval_rows = [{"condition_input_ids": list(r["condition_input_ids"]), "input_ids": list(r["input_ids"])}
                         for r in ev]
        else:
            for f in (c.source_field, c.target_field):
                if f not in cols:
                    raise DataError(f"{c.path or c.data_files}: no '{f}' field for conditional data "
                                    f"(fields: {', '.join(sorted(cols))}); set source_field/target_field")
            train = tokenize_pairs(ds, tokenizer, source_field=c.source_field, target_field=c.target_field,
                                   cache_dir=None if c.streaming else root, source_fingerprint=fp,
                                   num_proc=c.num_proc)
            srcs = encode_many(tokenizer, [r[c.source_field] or "" for r in ev])
            tgts = encode_many(tokenizer, [r[c.target_field] or "" for r in ev])
            eos = tokenizer.eos_id
            eval_rows = [{"condition_input_ids": [*s, eos], "input_ids": [*t, eos]}
                         for s, t in zip(srcs, tgts, strict=True)]
            pairs_src = [(r[c.source_field], r[c.target_field], e["condition_input_ids"])
                         for r, e in zip(ev, eval_rows, strict=True)]
        keep = ("condition_input_ids", "input_ids")
        if not c.streaming:
            train = train.remove_columns([k for k in train.column_names if k not in keep])
        pairs = [EvalPair(s, t, list(ids)[: c.max_input_length]) for s, t, ids in pairs_src]
        return DataSplits(train=train, eval=eval_rows, collator=self.collator(tokenizer), conditional=True,
                          eval_pairs=pairs, fingerprint=self.fingerprint(tokenizer, fp),
                          cache_latents=self.cfg.cache_latents, fixed_chunks=False,
                          info={"source": c.path or c.data_files})
