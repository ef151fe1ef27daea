"""The ``melange2`` command line."""

from __future__ import annotations
