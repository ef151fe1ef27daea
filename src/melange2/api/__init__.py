"""The HTTP API (FastAPI): ``create_app(settings)``. Only the server entry point
(:mod:`melange2.server`) imports it; the wire format both the API and the CLI speak is
:mod:`melange2.wire`, below both."""

from __future__ import annotations

from melange2.api.app import create_app

__all__ = ["create_app"]
