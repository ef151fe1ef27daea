"""Files written whole or not at all.

:func:`write_atomic` writes a temporary file beside the destination and renames it into
place, so a reader (or a crash) sees the old content or the new, never a part. The
temporary name (``.<name>#<random>.part``) is not a valid storage key, so listings
skip a write in progress.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
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
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=_temp_prefix(dest), suffix=".part")
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


def link_atomic(src: Path, dest: Path) -> None:
    """``dest`` becomes another name of ``src`` (a copy where links are refused), put in
    place by a rename like :func:`write_atomic`. Only for files never changed in place
    (replaced whole), as everything :func:`write_atomic` writes."""
    if not src.is_file():
        raise FileNotFoundError(src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f"{_temp_prefix(dest)}{secrets.token_hex(8)}.part"
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _temp_prefix(dest: Path) -> str:
    return f".{dest.name[:100]}#"
