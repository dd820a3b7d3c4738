"""Offline Bible corpora: ``bible`` (unconditional running text) and ``bible-pairs`` (verse pairs).

``bible``: the World English Bible (default) from the pythonbible wheels. Each chapter's
verses are joined into running text ending with EOS; the chapters of a split form one
stream cut into full ``max_length`` chunks. The held-out split is made of whole chapters,
picked in a fixed hash order until they hold ``eval_size`` chunks, so no held-out verse
leaks into training; the raw text of each held-out chunk is kept for reference rows.

``bible-pairs``: verse-aligned conditional pairs, condition and target each ending with EOS.
``kjv-rv1909`` (default) translates the KJV into Spanish (Reina-Valera 1909, Debian
``sword-text-sparv``, fetched with apt-get download and cached) and ``rv1909-kjv`` the other
way; ``kjv-web`` rewrites KJV English into modern English (pythonbible wheels only). Copying
the source through unchanged scores sacreBLEU (lowercased) 0.2 on kjv-rv1909 and 54 on
kjv-web (2000 random verses), so only the EN↔ES pairs leave room for a small CPU model to beat
the copy baseline. With ``references: tokenizer`` the references are round-tripped through the
embedder's tokenizer (MiniLM lower-cases and strips accents, so raw references would penalise
every output for the tokenizer, not the model).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import Field

from elfkit.components.datasets.base import ConditionalConfig, TextDataset, UnconditionalConfig
from elfkit.components.datasets.sources import bible as pb_source
from elfkit.components.datasets.sources import sword
from elfkit.components.datasets.splits import DataSplits, EvalPair
from elfkit.components.datasets.text import chunk_ids, encode_many, pair_example
from elfkit.contracts import SupportsOffsets, TextTokenizer
from elfkit.errors import DataError

SPLIT_VERSION = "bible-split-v1"


def chapter_order(keys: list[str], seed: int) -> list[str]:
    """A fixed pseudo-random order of chapter keys (sha256 of seed + key)."""
    return sorted(keys, key=lambda k: hashlib.sha256(f"{SPLIT_VERSION}:{seed}:{k}".encode()).hexdigest())


# ----------------------------------------------------------------------------------------
# bible (unconditional)
# ----------------------------------------------------------------------------------------
class BibleConfig(UnconditionalConfig):
    version: Literal["web", "kjv", "asv"] = "web"
    """World English Bible (modern English, default), King James, or American Standard."""
    eval_size: int = Field(default=64, ge=0)
    """Held-out chunks (whole chapters are held out until they give this many)."""
    split_seed: int = 0
    """Seed of the chapter order that picks the held-out chapters."""


def _raw_windows(tokenizer: TextTokenizer, text: str, max_length: int) -> list[str]:
    """Raw text of each full ``max_length``-token window of ``text`` (EOS excluded)."""
    if not isinstance(tokenizer, SupportsOffsets):
        toks = tokenizer.encode(text)
        return [tokenizer.decode(toks[i: i + max_length]) for i in range(0, len(toks) - max_length + 1, max_length)]
    ids, offsets = tokenizer.encode_with_offsets(text)
    out, start = [], 0
    for i in range(0, len(ids) - max_length + 1, max_length):
        end = offsets[i + max_length - 1][1]
        out.append(text[start:end].strip())
        start = end
    return out


class Bible(TextDataset[BibleConfig]):
    """Unconditional Bible text (offline)."""

    def load(self, tokenizer: TextTokenizer, cache_dir: str | Path | None = None) -> DataSplits:
        c = self.cfg
        chapters = pb_source.chapters(c.version)
        texts = {ch.key: ch.text for ch in chapters}
        ids = dict(zip(texts, encode_many(tokenizer, list(texts.values())), strict=True))
        eval_keys: set[str] = set()
        tokens = 0
        for key in chapter_order(list(texts), c.split_seed):
            if tokens >= c.eval_size * c.max_length:
                break
            eval_keys.add(key)
            tokens += len(ids[key]) + 1
        train_keys = [k for k in texts if k not in eval_keys]
        ordered_eval = [k for k in texts if k in eval_keys]
        train = [{"input_ids": x} for x in chunk_ids([ids[k] for k in train_keys], tokenizer.eos_id, c.max_length)]
        ev = [{"input_ids": x} for x in chunk_ids([ids[k] for k in ordered_eval], tokenizer.eos_id, c.max_length)]
        if not train:
            raise DataError(f"bible ({c.version}): no training chunk of {c.max_length} tokens")
        windows = [w for k in ordered_eval for w in _raw_windows(tokenizer, texts[k], c.max_length)]
        return DataSplits(train=train, eval=ev[: c.eval_size], collator=self.collator(tokenizer), conditional=False,
                          eval_texts=windows[: c.eval_size],
                          fingerprint=self.fingerprint(tokenizer, SPLIT_VERSION),
                          cache_latents=self.cfg.cache_latents, fixed_chunks=True,
                          info={"source": f"pythonbible:{c.version}", "eval_chapters": sorted(eval_keys)})


# ----------------------------------------------------------------------------------------
# bible-pairs (conditional)
# ----------------------------------------------------------------------------------------
class BiblePairsConfig(ConditionalConfig):
    pair: Literal["kjv-rv1909", "rv1909-kjv", "kjv-web"] = "kjv-rv1909"
    """'kjv-rv1909': English → Spanish, 'rv1909-kjv': Spanish → English (both need apt-get download
    once); 'kjv-web': archaic → modern English."""
    max_length: int = Field(default=96, gt=1)
    max_input_length: int | None = Field(default=40, gt=0)
    pad: Literal["pad", "eos"] = "eos"
    label_drop_prob: float = Field(default=0.1, ge=0, le=1)
    eval_size: int = Field(default=256, ge=0)
    """Held-out pairs (from whole held-out chapters)."""
    drop_overlong: bool = True
    """Skip pairs whose source (+EOS) exceeds max_input_length or target (+EOS) the remaining room."""
    references: Literal["raw", "tokenizer"] = "tokenizer"
    """'tokenizer': references round-tripped through the tokenizer (what a perfect model could emit)."""
    split_seed: int = 0


def verse_pairs(pair: str, cache_root: Path) -> list[tuple[int, str, str]]:
    """(verse id, source, target) for every verse present in both versions."""
    if pair == "rv1909-kjv":
        return [(v, t, s) for v, s, t in verse_pairs("kjv-rv1909", cache_root)]
    kjv = pb_source.verses("kjv")
    if pair == "kjv-web":
        tgt = pb_source.verses("web")
    else:
        entries = sword.read_module(sword.fetch_module("spaRV1909eb", cache_root))
        vids = list(pb_source.kjv_verse_ids())
        if len(vids) != len(entries):
            raise DataError(f"Reina-Valera module has {len(entries)} entries, KJV versification expects {len(vids)}")
        tgt = {v: e for v, e in zip(vids, entries, strict=True) if v is not None and e}
    return [(v, kjv[v], tgt[v]) for v in sorted(kjv) if v in tgt]


class BiblePairs(TextDataset[BiblePairsConfig]):
    """Offline conditional pairs for translation-style runs."""

    conditional = True

    def load(self, tokenizer: TextTokenizer, cache_dir: str | Path | None = None) -> DataSplits:
        c = self.cfg
        max_input_length = c.max_input_length
        assert max_input_length is not None   # a ConditionalConfig always has one (validated)
        pairs = verse_pairs(c.pair, self.cache_root(cache_dir))
        src_ids = encode_many(tokenizer, [s for _, s, _ in pairs])
        tgt_ids = encode_many(tokenizer, [t for _, _, t in pairs])
        room = c.max_length - max_input_length
        rows = []
        for (vid, s, t), si, ti in zip(pairs, src_ids, tgt_ids, strict=True):
            if c.drop_overlong and (len(si) + 1 > max_input_length or len(ti) + 1 > room):
                continue
            rows.append((f"{vid // 1_000_000:02d}:{vid // 1000 % 1000:03d}", s, t, pair_example(tokenizer, si, ti)))
        if not rows:
            raise DataError("bible-pairs: no pair fits max_input_length/max_length; raise them or drop_overlong: false")
        chapters = list(dict.fromkeys(r[0] for r in rows))
        eval_keys: set[str] = set()
        count = 0
        per_chapter: dict[str, int] = {}
        for r in rows:
            per_chapter[r[0]] = per_chapter.get(r[0], 0) + 1
        for key in chapter_order(chapters, c.split_seed):
            if count >= c.eval_size:
                break
            eval_keys.add(key)
            count += per_chapter[key]
        train = [r[3] for r in rows if r[0] not in eval_keys]
        held = [r for r in rows if r[0] in eval_keys][: c.eval_size]

        def reference(text: str) -> str:
            return tokenizer.decode(tokenizer.encode(text)) if c.references == "tokenizer" else text

        eval_pairs = [EvalPair(s, reference(t), r["condition_input_ids"][: c.max_input_length]) for _, s, t, r in held]
        return DataSplits(train=train, eval=[r[3] for r in held], collator=self.collator(tokenizer), conditional=True,
                          eval_pairs=eval_pairs, fingerprint=self.fingerprint(tokenizer, SPLIT_VERSION),
                          cache_latents=self.cfg.cache_latents,
                          fixed_chunks=False,
                          info={"source": c.pair, "pairs": len(rows), "dropped_overlong": len(pairs) - len(rows)})
