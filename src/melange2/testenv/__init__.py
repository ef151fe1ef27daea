"""The shipped test kit: contract suites every implementation of a seam must pass."""

from __future__ import annotations
