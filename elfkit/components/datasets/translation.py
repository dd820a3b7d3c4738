"""Conditional text-to-text datasets of the ELF paper: WMT14 De→En and XSum.

Two sources:

* ``pretokenized`` (default): the official T5-tokenised splits
  (``embedded-language-flows/{wmt14_de-en,xsum}_{train,validation}_t5``) with fields
  ``condition_input_ids``, ``input_ids`` (both ending with EOS), ``input`` and ``target``
  (texts); needs the t5 embedder's tokenizer;
* ``raw``: the original hub datasets, tokenised here with the embedder's tokenizer in the
  same format (condition and target each followed by EOS).

Local copies: ``path`` (a ``save_to_disk`` folder, e.g. the official Arrow split) or
``data_files`` (parquet/jsonl); pre-tokenised columns are detected, otherwise the text
fields are tokenised. Without an eval copy the last ``eval_size`` training rows are held out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from elfkit.components.datasets.base import ConditionalConfig, TextDataset, require_t5_ids
from elfkit.components.datasets.hub import load_hub, load_local
from elfkit.components.datasets.splits import DataSplits, EvalPair
from elfkit.components.datasets.text import tokenize_pairs
from elfkit.contracts import TextTokenizer
from elfkit.errors import DataError


class PairDatasetConfig(ConditionalConfig):
    pad: Literal["pad", "eos"] = "eos"
    """ELF pads conditional tasks with EOS and trains the tail (that is how length is learned)."""
    label_drop_prob: float = Field(default=0.1, ge=0, le=1)
    """Condition dropout for CFG (ELF: 0.1)."""
    eval_size: int = Field(default=1000, ge=0)
    """Held-out pairs used for BLEU/ROUGE (the first rows of the validation split)."""
    source: Literal["pretokenized", "raw"] = "pretokenized"
    """'pretokenized': the official T5 splits; 'raw': the original dataset, tokenised here."""
    hub_id: str | None = None
    """Training split on the hub; None = the default for `source`."""
    eval_hub_id: str | None = None
    """Validation split on the hub; None = the default for `source`."""
    path: str | None = None
    """Local training copy: a save_to_disk folder (official Arrow or raw text pairs)."""
    data_files: list[str] | str | None = None
    """Local training copy: parquet/jsonl files."""
    eval_path: str | None = None
    eval_data_files: list[str] | str | None = None
    source_field: str | None = None
    """Raw data: the source-text field (None = the dataset's own)."""
    target_field: str | None = None
    """Raw data: the target-text field (None = the dataset's own)."""
    num_proc: int | None = Field(default=None, gt=0)


class WmtConfig(PairDatasetConfig):
    max_length: int = Field(default=128, gt=1)
    """ELF De-En: 128 = 64 condition + 64 generated."""
    max_input_length: int | None = Field(default=64, gt=0)


class XsumConfig(PairDatasetConfig):
    max_length: int = Field(default=1088, gt=1)
    """ELF XSum: 1088 = 1024 document + 64 generated."""
    max_input_length: int | None = Field(default=1024, gt=0)


class PairDataset(TextDataset[PairDatasetConfig]):
    """Shared loading logic; subclasses name their hub ids and raw fields."""

    conditional = True
    PRETOKENIZED: ClassVar[tuple[str, str]]              # (train id, validation id)
    RAW: ClassVar[tuple[str, str | None, str, str]]       # (hub id, config name, train split, eval split)
    RAW_FIELDS: ClassVar[tuple[str, str]]                 # (source, target)

    def _raw_flatten(self, ds: Any) -> Any:
        return ds

    def _fields(self, columns: set[str]) -> tuple[str, str]:
        """Configured fields, else the dataset's own, else the official text names input/target."""
        default = self.RAW_FIELDS if set(self.RAW_FIELDS) <= columns or not {"input", "target"} <= columns \
            else ("input", "target")
        return self.cfg.source_field or default[0], self.cfg.target_field or default[1]

    def _from_hub(self, which: str, root: Path) -> tuple[Any, str, bool]:
        c = self.cfg
        if c.source == "pretokenized":
            hub = (c.hub_id or self.PRETOKENIZED[0]) if which == "train" else (c.eval_hub_id or self.PRETOKENIZED[1])
            ds = load_hub(hub, split="train", streaming=c.streaming and which == "train", cache_dir=root / "hf")
            return ds, hub, True
        hub_id, name, train_split, eval_split = self.RAW
        hub = (c.hub_id or hub_id) if which == "train" else (c.eval_hub_id or hub_id)
        split = train_split if which == "train" else eval_split
        ds = load_hub(hub, name=name, split=split, streaming=c.streaming and which == "train", cache_dir=root / "hf")
        return self._raw_flatten(ds), f"{hub}:{name}:{split}", False

    def _tokenized(self, ds: Any, fp: str, pretokenized: bool, tokenizer: TextTokenizer, root: Path) -> Any:
        cols = set(ds.column_names or [])
        if pretokenized or {"condition_input_ids", "input_ids"} <= cols:
            require_t5_ids(tokenizer, fp)
            return ds
        src, tgt = self._fields(cols)
        out = tokenize_pairs(ds, tokenizer, source_field=src, target_field=tgt, cache_dir=root,
                             source_fingerprint=fp, num_proc=self.cfg.num_proc)
        if (src, tgt) != ("input", "target"):       # keep the texts under the official names
            out = out.rename_columns({src: "input", tgt: "target"})
        return out

    def load(self, tokenizer: TextTokenizer, cache_dir: str | Path | None = None) -> DataSplits:
        c = self.cfg
        root = self.cache_root(cache_dir)
        local = c.path is not None or c.data_files is not None
        if local:
            train_raw, fp = load_local(data_files=c.data_files, path=c.path, streaming=c.streaming,
                                       cache_dir=root / "hf")
            train_raw, pretok = self._raw_flatten(train_raw), False
        else:
            train_raw, fp, pretok = self._from_hub("train", root)
        train = self._tokenized(train_raw, fp, pretok, tokenizer, root)
        if c.eval_path is not None or c.eval_data_files is not None:
            ev_raw, efp = load_local(data_files=c.eval_data_files, path=c.eval_path, cache_dir=root / "hf")
            ev = self._tokenized(self._raw_flatten(ev_raw), efp, False, tokenizer, root)
        elif local:
            if c.streaming or len(train) <= c.eval_size:
                raise DataError("a local training copy without eval_path/eval_data_files needs more than "
                                f"eval_size={c.eval_size} rows (and no streaming) to hold some out")
            n = len(train)
            train, ev = train.select(range(n - c.eval_size)), train.select(range(n - c.eval_size, n))
        else:
            ev_raw, efp, epretok = self._from_hub("eval", root)
            ev = self._tokenized(ev_raw, efp, epretok, tokenizer, root)
        ev = ev.select(range(min(c.eval_size, len(ev))))
        if not c.streaming:
            train = _keep(train, ("condition_input_ids", "input_ids"))
        pairs = [EvalPair(source=r.get("input", ""), reference=r.get("target", ""),
                          condition_ids=list(r["condition_input_ids"])[: c.max_input_length]) for r in ev]
        return DataSplits(train=train, eval=_keep(ev, ("condition_input_ids", "input_ids")),
                          collator=self.collator(tokenizer), conditional=True, eval_pairs=pairs,
                          fingerprint=self.fingerprint(tokenizer, fp),
                          cache_latents=self.cfg.cache_latents, fixed_chunks=False,
                          info={"source": c.path or c.data_files or c.hub_id or c.source})


def _keep(ds: Any, columns: tuple[str, ...]) -> Any:
    drop = [k for k in ds.column_names if k not in columns]
    return ds.remove_columns(drop) if drop else ds


class Wmt14DeEn(PairDataset):
    """WMT14 German→English (ELF: 4.5M pairs; BLEU on the validation split)."""

    PRETOKENIZED = ("embedded-language-flows/wmt14_de-en_train_t5", "embedded-language-flows/wmt14_de-en_validation_t5")
    RAW = ("wmt/wmt14", "de-en", "train", "validation")
    RAW_FIELDS = ("de", "en")

    def _raw_flatten(self, ds: Any) -> Any:
        if "translation" not in (ds.column_names or []):
            return ds
        return ds.map(lambda r: {"de": r["translation"]["de"], "en": r["translation"]["en"]},
                      remove_columns=["translation"])


class Xsum(PairDataset):
    """XSum document → one-sentence summary (ELF: ROUGE on the validation split)."""

    PRETOKENIZED = ("embedded-language-flows/xsum_train_t5", "embedded-language-flows/xsum_validation_t5")
    RAW = ("EdinburghNLP/xsum", None, "train", "validation")
    RAW_FIELDS = ("document", "summary")
