"""Server paths out of client-facing text: errors, package errors and build logs.

A message such as ``cannot read /var/lib/melange/data/builds/bld-1/x.yaml`` tells a
client where the server keeps its data, its key and its code; the client learns
``cannot read <data-dir>/builds/bld-1/x.yaml`` instead. Messages are written to name
what the client sent (``configs[2]``, ``git_source: pkgs/a.yaml``); this is the net
below them, for the places that name a server file anyway (a library's message, an
operator's repository on disk).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import melange2


class Redactor:
    """Replaces each known server path by its role, longest first."""

    def __init__(self, paths: Mapping[str, str]) -> None:
        #: (path, role), longest path first, so a path inside another wins
        self._pairs = sorted(
            ((p.rstrip("/"), role) for p, role in paths.items() if p.rstrip("/")),
            key=lambda pair: len(pair[0]),
            reverse=True,
        )

    @classmethod
    def for_server(
        cls, *, data_dir: Path, output_dir: Path, key_path: Path | None = None
    ) -> Redactor:
        paths = {
            str(data_dir): "<data-dir>",
            str(output_dir): "<output-dir>",
            str(Path(melange2.__file__).parent): "<melange2>",
            str(Path(tempfile.gettempdir()) / "melange2-"): "<tmp>/melange2-",
        }
        if key_path is not None and not str(key_path).startswith(str(data_dir)):
            paths[str(key_path.parent)] = "<key-dir>"
        for path in list(paths):  # also as the OS resolved them (symlinked /tmp, ...)
            real = str(Path(path).resolve()) if not path.endswith("-") else path
            paths.setdefault(real, paths[path])
        return cls(paths)

    def text(self, message: str) -> str:
        for path, role in self._pairs:
            if path in message:
                message = message.replace(path, role)
        return message
