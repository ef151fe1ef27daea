"""Real ELF files for the SCA tests: the host's (x86_64 Debian) zlib and dpkg-deb, and a
committed aarch64 library (see data/README.md)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
AARCH64_LIB = DATA / "aarch64" / "libattr.so.1.1.2501"


def _host_libz() -> Path:
    found = sorted(
        p
        for p in Path("/usr/lib/x86_64-linux-gnu").glob("libz.so.1.*")
        if p.is_file() and not p.is_symlink()
    )
    assert found, "zlib1g's libz.so.1.* is missing from /usr/lib/x86_64-linux-gnu"
    return found[-1]


@pytest.fixture(scope="session")
def libz() -> Path:
    """The host's real libz (SONAME libz.so.1, needs libc.so.6)."""
    return _host_libz()


@pytest.fixture(scope="session")
def dpkg_deb() -> Path:
    """A real executable that needs libz.so.1 and libc.so.6 (dpkg is essential)."""
    path = Path("/usr/bin/dpkg-deb")
    assert path.is_file(), "/usr/bin/dpkg-deb is missing"
    return path


Spec = str | bytes | Path | tuple[str, str | bytes | Path]


def make_tree(root: Path, spec: Mapping[str, Spec]) -> Path:
    """Build a package tree under ``root`` from ``{relative path: what}``.

    What: text, bytes or a :class:`Path` to copy (a 0644 file); ``("exec", content)``
    (the same, 0755); ``("mode", "4755", content)``-style ``("0600", content)`` (any
    octal mode); ``("link", target)`` (a symbolic link); ``("dir", "")``.
    """
    root.mkdir(parents=True, exist_ok=True)
    for rel, value in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = 0o644
        if isinstance(value, tuple):
            kind, value = value
            if kind == "link":
                os.symlink(str(value), path)
                continue
            if kind == "dir":
                path.mkdir(parents=True, exist_ok=True)
                continue
            mode = 0o755 if kind == "exec" else int(kind, 8)
        if isinstance(value, Path):
            shutil.copyfile(value, path)
        elif isinstance(value, bytes):
            path.write_bytes(value)
        else:
            path.write_text(value)
        os.chmod(path, mode)
    return root
