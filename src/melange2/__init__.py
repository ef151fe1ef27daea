"""melange2 remote builds: a build farm for melange-described APK packages on BuildKit."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
