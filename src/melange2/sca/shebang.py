"""The interpreter a script names on its ``#!`` line, as melange's ``getShbang`` reads it."""

from __future__ import annotations

from typing import Final

from melange2.sca._go import go_base, go_fields

__all__ = ["ShebangError", "interpreter_of"]

#: melange never depends on these from a shebang: ``sh``/``python3``/``python`` are links
#: nothing provides as ``cmd:``, and ``luajit`` has several incompatible providers
IGNORED: Final = frozenset({"python3", "python", "sh", "awk", "luajit"})

#: melange reads this many bytes of a script
HEAD: Final = 80


class ShebangError(ValueError):
    """A ``#!`` line melange cannot take a dependency from."""


def interpreter_of(head: bytes) -> str:
    """The command a script's ``#!`` line runs (``""`` if none, or one melange ignores).

    ``head`` is the start of the file (melange reads 80 bytes). ``#!/usr/bin/env perl``
    gives ``perl``, ``#!/usr/bin/env -S perl -w`` too; ``#!/bin/bash`` gives
    ``/bin/bash`` (the caller takes the base name). :class:`ShebangError` for a line
    melange rejects (``/usr/bin/env`` alone, or with options it does not read) and for
    an empty ``#!`` line, on which melange v0.34.0 crashes.
    """
    head = head[:HEAD]
    if len(head) < 2 or not head.startswith(b"#!"):
        return ""
    line = head[2:].decode("utf-8", "surrogateescape")
    end = line.find("\n")
    if end >= 0:
        line = line[:end]
    tokens = go_fields(line)
    if not tokens:
        raise ShebangError("an empty '#!' line")
    command = tokens[0]
    if command == "/usr/bin/env":
        if len(tokens) == 1:
            raise ShebangError("a shbang of only '/usr/bin/env'")
        if len(tokens) == 2:
            command = tokens[1]
        elif tokens[1] == "-S" and not tokens[2].startswith("-"):
            command = tokens[2]
        else:
            raise ShebangError(
                "a shbang of only '/usr/bin/env' with multiple arguments "
                f"({len(tokens)} {' '.join(tokens)})"
            )
    if go_base(command) in IGNORED:
        return ""
    return command
