"""The HTTP API (FastAPI): ``create_app(settings)``.

``create_app`` is imported lazily so that the CLI can use :mod:`melange2.api.schemas`
without loading the server."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from melange2.api.app import create_app

        return create_app
    raise AttributeError(name)
