"""Text normalisation shared by exact-duplicate fingerprints and MinHash shingling: NFKC,
case folding, everything but letters, marks and numbers to spaces, whitespace collapsed."""

from __future__ import annotations

import unicodedata

SPACE = 0x20


class _FoldMap(dict[int, int]):
    """``str.translate`` table filled lazily: one Unicode lookup per distinct code point."""

    def __missing__(self, code: int) -> int:
        value = code if unicodedata.category(chr(code))[0] in "LMN" else SPACE
        self[code] = value
        return value


FOLD_MAP = _FoldMap()


def normalise(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(folded.translate(FOLD_MAP).split())


def content_form(text: str) -> str:
    """What identifies a text's content for exact copies and routing: ``normalise(text)``,
    or, for a text with no letter or number (an emoticon, a kaomoji, a row of symbols),
    its NFKC, case-folded form with whitespace collapsed, so that distinct symbol strings
    are not all taken for copies of the empty text."""
    return normalise(text) or " ".join(unicodedata.normalize("NFKC", text).casefold().split())
