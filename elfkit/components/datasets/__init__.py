"""Built-in datasets. Each builds from its config; ``load(tokenizer, cache_dir=None)`` returns
:class:`elfkit.components.datasets.splits.DataSplits` (the tokenizer is the embedder's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from elfkit.components.datasets.base import DatasetConfig, TextDataset, default_cache_dir
from elfkit.components.datasets.bible import Bible, BibleConfig, BiblePairs, BiblePairsConfig
from elfkit.components.datasets.local import LocalConfig, LocalDataset
from elfkit.components.datasets.openwebtext import (
    OpenWebText,
    OpenWebTextConfig,
    OpenWebTextT5,
    OpenWebTextT5Config,
)
from elfkit.components.datasets.translation import Wmt14DeEn, WmtConfig, Xsum, XsumConfig
from elfkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from elfkit.registry import ComponentRegistrar

__all__ = [
    "Bible", "BibleConfig", "BiblePairs", "BiblePairsConfig", "DatasetConfig", "LocalConfig", "LocalDataset",
    "OpenWebText", "OpenWebTextConfig", "OpenWebTextT5", "OpenWebTextT5Config", "TextDataset", "Wmt14DeEn",
    "WmtConfig", "Xsum", "XsumConfig", "default_cache_dir",
]


@hookimpl
def elfkit_register_components(registry: ComponentRegistrar) -> None:
    registry.add("dataset", "openwebtext", OpenWebText, OpenWebTextConfig,
                 "OpenWebText raw text, tokenised and chunked here (hub or local copy).")
    registry.add("dataset", "openwebtext-t5", OpenWebTextT5, OpenWebTextT5Config,
                 "ELF's pre-chunked T5 OpenWebText (embedded-language-flows/openwebtext-t5).")
    registry.add("dataset", "wmt14-de-en", Wmt14DeEn, WmtConfig, "WMT14 German→English (official T5 split or raw).")
    registry.add("dataset", "xsum", Xsum, XsumConfig, "XSum document→summary (official T5 split or raw).")
    registry.add("dataset", "local", LocalDataset, LocalConfig,
                 "Local txt/jsonl/parquet/Arrow data, unconditional or source/target pairs.")
    registry.add("dataset", "bible", Bible, BibleConfig, "World English Bible running text (offline).")
    registry.add("dataset", "bible-pairs", BiblePairs, BiblePairsConfig,
                 "Verse pairs KJV→Reina-Valera 1909 (EN→ES) or KJV→WEB (offline).")
