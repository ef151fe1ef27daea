"""Go's string and path semantics where melange's behaviour depends on them.

melange tests paths with ``filepath.Base``/``Dir``/``Ext``, splits lines with
``strings.Fields`` and classifies runes with ``unicode.IsSpace``/``IsDigit``; Python's
near equivalents differ at the edges (``os.path.basename("a/")`` is ``""``, ``str.split``
also splits on ``\\x1c``-``\\x1f``, ``str.isdigit`` accepts superscripts).
"""

from __future__ import annotations

import posixpath
import unicodedata
from typing import Final

__all__ = ["GO_SPACES", "go_base", "go_clean", "go_dir", "go_ext", "go_fields", "go_is_digit"]

#: ``unicode.IsSpace``
GO_SPACES: Final = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def go_base(path: str) -> str:
    """``filepath.Base``: the last element; ``"."`` for ``""``, ``"/"`` for slashes only."""
    if not path:
        return "."
    stripped = path.rstrip("/")
    if not stripped:
        return "/"
    return stripped.rsplit("/", 1)[-1]


def go_clean(path: str) -> str:
    """``filepath.Clean`` for slash paths."""
    if not path:
        return "."
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):  # normpath keeps a leading "//"; Go does not
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def go_dir(path: str) -> str:
    """``filepath.Dir``: everything before the last element, cleaned; ``"."`` if none."""
    cut = path.rfind("/")
    if cut < 0:
        return "."
    head = path[:cut]
    if head and "//" not in head and "." not in head and not head.endswith("/"):
        return head  # already clean (the paths of a walk are)
    return go_clean(path[: cut + 1])


def go_ext(path: str) -> str:
    """``filepath.Ext``: from the last dot of the last element, or ``""``."""
    for i in range(len(path) - 1, -1, -1):
        if path[i] == "/":
            return ""
        if path[i] == ".":
            return path[i:]
    return ""


def go_fields(text: str) -> list[str]:
    """``strings.Fields``: the words between runs of ``unicode.IsSpace``."""
    out: list[str] = []
    start = -1
    for i, c in enumerate(text):
        if c in GO_SPACES:
            if start >= 0:
                out.append(text[start:i])
                start = -1
        elif start < 0:
            start = i
    if start >= 0:
        out.append(text[start:])
    return out


def go_is_digit(c: str) -> bool:
    """``unicode.IsDigit``: a decimal digit (category Nd)."""
    return unicodedata.category(c) == "Nd"
