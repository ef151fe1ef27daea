"""A package tree as melange's analyzers see it: every entry in Go's ``fs.WalkDir`` order,
with ``lstat`` modes, and files opened the way melange opens them.

melange walks ``melange-out/<package>`` through apko's ``DirFS``: entries come sorted by
name within each directory (byte order), depth first, the root first as ``"."``;
symbolic links are reported as links (never descended into), and opening a path follows
links. melange's ``os.Open`` follows an absolute link on the *build host*; here links are
followed inside the package tree (as if it were ``/``), which is what the link means once
the package is installed.

:func:`is_in_dir` is melange's ``isInDir``, the test of "a file in one of these
directories" every analyzer uses.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from melange2.sca._go import go_base, go_dir
from melange2.sca.elf import ElfInfo, ElfUnreadable, read_elf

__all__ = ["Entry", "PackageTree", "is_in_dir"]

#: links followed before giving up (Linux's MAXSYMLINKS)
_MAX_LINKS = 40


def is_in_dir(path: str, dirs: tuple[str, ...] | list[str]) -> bool:
    """melange's ``isInDir``: whether ``path``'s directory is one of ``dirs``.

    An entry matches its directory exactly (with or without a trailing ``/``); an entry
    ending in ``/...`` matches that directory and everything below it.
    """
    mydir = go_dir(path)
    for d in dirs:
        if d.endswith("/..."):
            prefix = d[: -len("/...")]
            if mydir == prefix or mydir.startswith(prefix + "/"):
                return True
        elif mydir == d or mydir + "/" == d:
            return True
    return False


@dataclass(frozen=True, slots=True)
class Entry:
    """One walked path: relative, slash-separated, ``"."`` for the root."""

    path: str
    #: ``st_mode`` from ``lstat`` (a link is a link)
    mode: int
    size: int
    is_dir: bool
    is_regular: bool
    is_symlink: bool

    @classmethod
    def of(cls, path: str, st: os.stat_result) -> Entry:
        mode = st.st_mode
        return cls(
            path, mode, st.st_size, stat.S_ISDIR(mode), stat.S_ISREG(mode), stat.S_ISLNK(mode)
        )

    @property
    def perm(self) -> int:
        return self.mode & 0o777

    @property
    def name(self) -> str:
        return go_base(self.path)


def _sort_key(entry: os.DirEntry[str]) -> bytes:
    return os.fsencode(entry.name)


def _walk_dir(real: str, rel: str) -> Iterator[Entry]:
    """The entries below ``real``, sorted by name, each directory's before its next sibling."""
    try:
        with os.scandir(real) as it:
            children = sorted(it, key=_sort_key)
    except OSError:
        return
    for child in children:
        path = f"{rel}{child.name}"
        try:
            st = child.stat(follow_symlinks=False)
        except OSError:
            continue
        yield Entry.of(path, st)
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_dir(child.path, f"{path}/")


@dataclass(frozen=True)
class PackageTree:
    """The files of one package, rooted at ``root`` (a ``melange-out/<name>`` directory)."""

    root: Path
    _entries: list[Entry] = field(default_factory=list, init=False, compare=False, repr=False)
    _elves: dict[Path, ElfInfo | ElfUnreadable | None] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )
    _by_path: dict[str, Entry] = field(default_factory=dict, init=False, compare=False, repr=False)

    def entries(self) -> list[Entry]:
        """Every entry in ``fs.WalkDir`` order (walked once, then kept)."""
        if not self._entries and self.root.is_dir():
            self._entries.extend(self._walk())
        return self._entries

    def _walk(self) -> Iterator[Entry]:
        top = os.lstat(self.root)
        yield Entry.of(".", top)
        yield from _walk_dir(os.fspath(self.root), "")

    def host_path(self, rel: str) -> Path:
        """The path of ``rel`` on this machine, links not followed."""
        return self.root / rel if rel != "." else self.root

    def readlink(self, rel: str) -> str | None:
        try:
            return os.readlink(self.host_path(rel))
        except OSError:
            return None

    def resolve(self, rel: str) -> Path | None:
        """Follow links in ``rel`` inside the tree (``/`` is the tree's root); ``None`` if
        a link dangles, loops, or the path does not exist."""
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        done: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = self.root.joinpath(*done, part)
            try:
                st = os.lstat(candidate)
            except OSError:
                return None
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > _MAX_LINKS:
                    return None
                target = os.readlink(candidate)
                if target.startswith("/"):
                    done = []
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                continue
            done.append(part)
        return self.root.joinpath(*done)

    def real_path(self, rel: str) -> Path | None:
        """:meth:`resolve`, quick for a walked entry that is not a link (the walk never
        goes through a link, so its path has none)."""
        entry = self._index().get(rel)
        if entry is not None and not entry.is_symlink:
            return self.host_path(rel)
        return self.resolve(rel)

    def _index(self) -> dict[str, Entry]:
        if not self._by_path:
            self._by_path.update((e.path, e) for e in self.entries())
        return self._by_path

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` exists with links followed (Go's ``Stat`` succeeding)."""
        return self.resolve(rel) is not None

    def elf(self, real: Path) -> ElfInfo | ElfUnreadable | None:
        """:func:`~melange2.sca.elf.read_elf` of a file of this tree (a path from
        :meth:`resolve`), read once: the analyzers and the linters share it."""
        if real not in self._elves:
            self._elves[real] = read_elf(real) if real.is_file() else None
        return self._elves[real]

    def read_head(self, rel: str, size: int) -> bytes | None:
        """The first ``size`` bytes of ``rel`` (links followed), ``None`` if unreadable."""
        real = self.resolve(rel)
        if real is None:
            return None
        try:
            with real.open("rb") as f:
                return f.read(size)
        except OSError:
            return None
