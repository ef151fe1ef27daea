"""The APK fixtures (keys, trees) shared with the apk tests."""

from __future__ import annotations

from tests.unit.apk.conftest import build, info, keys, tree

__all__ = ["build", "info", "keys", "tree"]
