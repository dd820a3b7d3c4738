"""Reference rows: held-out real text and a token-shuffled copy of it.

Scoring real text with the same evaluators says where a model's samples stand (real text is
the target entropy, and roughly the PPL floor for the judge); the shuffled copy keeps each
text's unigram histogram (so about the same entropy) but destroys word order, so its Gen. PPL
shows what "fluent-looking bag of tokens" scores. Text ``i`` is shuffled with
``random.Random(seed + i)``, at the level of the given tokenizer's tokens, and decoded back.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from elfkit.types import TextTokenizer


def shuffle_tokens(texts: Sequence[str], tokenizer: TextTokenizer, seed: int = 0) -> list[str]:
    """Each text with its own tokens in a random order (deterministic in ``seed`` and position)."""
    out = []
    for i, text in enumerate(texts):
        ids = list(tokenizer.encode(text))
        random.Random(seed + i).shuffle(ids)
        out.append(tokenizer.decode(ids))
    return out
