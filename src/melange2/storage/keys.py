"""Storage keys: relative posix paths with a small, URL- and shell-safe alphabet.

A key is the same string on every backend: a file below the local root, an object name
below the bucket prefix. Refusing anything else up front keeps a key from escaping the
root (``..``, ``/abs``) or meaning different things on different backends (``a//b``,
``a\\b``, control characters).
"""

from __future__ import annotations

import re

__all__ = ["MAX_KEY_LENGTH", "validate_key"]

#: S3 and GCS both cap object names at 1024 bytes; the prefix counts too
MAX_KEY_LENGTH = 900

_SEGMENT = re.compile(r"[A-Za-z0-9._+@=,~:-]+")


def validate_key(key: str) -> str:
    """``key`` itself if it is a valid storage key, else ``ValueError`` naming it.

    Valid: ``/``-separated segments, each non-empty, not ``.`` or ``..``, made of
    ``A-Z a-z 0-9 . _ + @ = , ~ : -`` (the colon for melange's source cache names,
    ``sha256:<hex>``); no leading or trailing ``/``.
    """
    if not isinstance(key, str):
        raise ValueError(f"invalid storage key {key!r}: not a string")
    if not key:
        raise ValueError("invalid storage key '': empty")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"invalid storage key {key[:40]!r}...: longer than {MAX_KEY_LENGTH}")
    if key.startswith("/"):
        raise ValueError(f"invalid storage key {key!r}: absolute (leading '/')")
    if "\\" in key:
        raise ValueError(f"invalid storage key {key!r}: backslash")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise ValueError(f"invalid storage key {key!r}: control character")
    for segment in key.split("/"):
        if not segment:
            raise ValueError(f"invalid storage key {key!r}: empty segment")
        if segment in (".", ".."):
            raise ValueError(f"invalid storage key {key!r}: {segment!r} segment")
        if not _SEGMENT.fullmatch(segment):
            raise ValueError(
                f"invalid storage key {key!r}: {segment!r} has characters outside "
                "A-Z a-z 0-9 . _ + @ = , ~ : -"
            )
    return key
