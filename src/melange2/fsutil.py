"""Files written whole or not at all.

:func:`write_atomic` writes a temporary file beside the destination and renames it into
place, so a reader (or a crash) sees the old content or the new, never a part. The
temporary name (``.<name>#<random>.part``) is not a valid storage key, so listings
skip a write in progress.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(
    dest: Path,
    content: bytes | Callable[[BinaryIO], object],
    *,
    durable: bool = True,
    mode: int = 0o644,
) -> None:
    """Write ``content`` (bytes, or a function writing to the open file) to ``dest``.

    ``durable`` flushes the data to disk before the rename (what a crash must not lose);
    caches that can be made again skip it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name[:100]}#", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(content, bytes):
                out.write(content)
            else:
                content(out)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
