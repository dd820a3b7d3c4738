"""``check_embedder``: the conformance suite for embedders (only the :class:`Embedder` protocol is used).

Checks, each failing with a ``ConformanceError`` that names it:

- ``protocol``: ``dim`` > 0; a tokenizer with ``name``, ``vocab_size`` and ``eos_id``/``pad_id``
  inside the vocabulary; ``trainable`` a bool;
- ``tokenizer``: ids are ints in the vocabulary and ``decode(encode(text))`` gives the text back
  (after dropping EOS/pad ids; compared case- and whitespace-insensitively);
- ``shapes``: (B, S) ids → (B, S, dim) finite floats, for batch size 1 and odd lengths;
- ``determinism``: two calls agree; a row embedded alone equals the same row in a batch;
- ``mask``: an all-True pairwise mask gives the same latents as no mask;
- ``gradients``: a frozen (``trainable=False``) embedder returns latents without gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from elfkit.contracts import Embedder, TextTokenizer
from elfkit.testing._build import ConformanceError, fail

TEXTS = ("hello world", "the cat sat on the mat.", "a b c")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _ids(embedder: Embedder, batch: int, length: int, seed: int) -> Tensor:
    """Ids from the kit's texts, tiled to (batch, length) (real tokens, not specials)."""
    tok = embedder.tokenizer
    pool = [i for text in TEXTS for i in tok.encode(text) if i not in (tok.eos_id, tok.pad_id)] or [0]
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(pool), (batch, length), generator=g)
    return torch.tensor(pool)[picks]


def _check_protocol(embedder: Embedder) -> None:
    if not isinstance(embedder, Embedder):
        raise fail("protocol", f"{type(embedder).__name__} lacks `dim`, `tokenizer`, `trainable` or `embed`")
    if not isinstance(embedder.dim, int) or embedder.dim < 1:
        raise fail("protocol", f"`dim` must be a positive int, got {embedder.dim!r}")
    if not isinstance(embedder.trainable, bool):
        raise fail("protocol", f"`trainable` must be a bool, got {embedder.trainable!r}")
    tok = embedder.tokenizer
    if not isinstance(tok, TextTokenizer):
        raise fail("protocol", "`tokenizer` lacks name, vocab_size, eos_id, pad_id, encode or decode")
    for name in ("eos_id", "pad_id"):
        value = getattr(tok, name)
        if not isinstance(value, int) or not 0 <= value < tok.vocab_size:
            raise fail("protocol", f"tokenizer.{name} = {value!r} is not an id in [0, {tok.vocab_size})")


def _check_tokenizer(embedder: Embedder, texts: Sequence[str], roundtrip: bool) -> None:
    tok = embedder.tokenizer
    for text in texts:
        ids = tok.encode(text)
        if not ids or not all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids):
            raise fail("tokenizer", f"encode({text!r}) = {ids!r}: expected a non-empty list of ids in "
                                    f"[0, {tok.vocab_size})")
        if roundtrip:
            back = tok.decode([i for i in ids if i not in (tok.eos_id, tok.pad_id)])
            if _norm(back) != _norm(text):
                raise fail("tokenizer", f"decode(encode({text!r})) = {back!r}")


def _embed(embedder: Embedder, ids: Tensor, mask: Tensor | None = None) -> Tensor:
    with torch.no_grad():
        return embedder.embed(ids, mask)


def _check_shapes(embedder: Embedder) -> None:
    for b, s in ((1, 5), (2, 7), (3, 1)):
        x = _embed(embedder, _ids(embedder, b, s, seed=b + s))
        if x.shape != (b, s, embedder.dim) or not x.is_floating_point() or not torch.isfinite(x).all():
            raise fail("shapes", f"ids ({b}, {s}) gave latents {tuple(x.shape)} {x.dtype}; expected finite "
                                 f"({b}, {s}, {embedder.dim}) floats")


def _check_determinism(embedder: Embedder, atol: float) -> None:
    ids = _ids(embedder, 3, 7, seed=1)
    a, b = _embed(embedder, ids), _embed(embedder, ids)
    if not torch.allclose(a, b, atol=atol):
        raise fail("determinism", "two calls on the same ids differ (dropout left on? put frozen encoders in eval)")
    alone = _embed(embedder, ids[1:2])
    if not torch.allclose(alone, a[1:2], atol=atol):
        raise fail("determinism", f"a row embedded alone differs from the same row in a batch by "
                                  f"{(alone - a[1:2]).abs().max().item():.3g}")


def _check_mask(embedder: Embedder, atol: float) -> None:
    ids = _ids(embedder, 2, 6, seed=2)
    full = torch.ones(2, 6, 6, dtype=torch.bool)
    if not torch.allclose(_embed(embedder, ids, full), _embed(embedder, ids), atol=atol):
        raise fail("mask", "an all-True pairwise mask must give the same latents as pairwise_mask=None")


def _check_gradients(embedder: Embedder) -> None:
    if embedder.trainable:
        return
    with torch.enable_grad():
        x = embedder.embed(_ids(embedder, 1, 3, seed=3), None)
    if x.requires_grad:
        raise fail("gradients", "a frozen embedder (trainable=False) returned latents that require grad; "
                                "wrap the encoder in torch.no_grad()")


def check_embedder(embedder: Embedder, *, texts: Sequence[str] = TEXTS, roundtrip: bool = True,
                   atol: float = 1e-5) -> list[str]:
    """Run the embedder conformance suite on a built embedder; raise ``ConformanceError`` on failure.

    Args:
        texts: texts for the tokenizer round trip (plain lower-case ASCII by default).
        roundtrip: check ``decode(encode(text)) == text`` (normalised).
        atol: tolerance for the determinism and mask comparisons.

    Returns:
        The names of the checks that passed.
    """
    checks = [
        ("protocol", lambda: _check_protocol(embedder)),
        ("tokenizer", lambda: _check_tokenizer(embedder, texts, roundtrip)),
        ("shapes", lambda: _check_shapes(embedder)),
        ("determinism", lambda: _check_determinism(embedder, atol)),
        ("mask", lambda: _check_mask(embedder, atol)),
        ("gradients", lambda: _check_gradients(embedder)),
    ]
    passed = []
    for name, check in checks:
        try:
            check()
        except ConformanceError:
            raise
        except Exception as exc:
            raise fail(name, f"raised {type(exc).__name__}: {exc}") from exc
        passed.append(name)
    return passed
