"""The build executor: one melange config into a BuildKit solve and signed APKs."""

from __future__ import annotations
