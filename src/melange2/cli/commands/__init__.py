"""One module per ``melange2`` command group."""

from __future__ import annotations
