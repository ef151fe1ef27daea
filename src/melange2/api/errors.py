"""The one place where exceptions become HTTP answers: ``{"error": ..., "details": ...}``.

Client mistakes are 4xx with a message naming what is wrong and where; never a 500 or a
traceback for what a client sent. Every message leaves through :func:`error_body`:
client text quoted in it is escaped (a lone surrogate cannot break the JSON answer),
and server paths are replaced by their role (``<data-dir>``) by the app's
:class:`~melange2.service.redact.Redactor`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from melange2.auth import Forbidden, Unauthorized
from melange2.build.source_cache import SourceTooLarge
from melange2.errors import (
    ConfigError,
    FarmError,
    InvalidConfigs,
    InvalidTransition,
    NotFound,
    RequestError,
    StoreConflict,
    StoreUnavailable,
    Unavailable,
)
from melange2.names import excerpt
from melange2.service.gitsource import GitBusy
from melange2.service.redact import Redactor
from melange2.storage import StorageError, StorageNotFound

_log = logging.getLogger(__name__)

_STATUS: list[tuple[type[FarmError], int]] = [
    (Unauthorized, 401),
    (Forbidden, 403),
    (SourceTooLarge, 413),
    (NotFound, 404),
    (StorageNotFound, 404),
    (StorageError, 503),
    (InvalidTransition, 409),
    (StoreConflict, 409),
    (StoreUnavailable, 503),
    (GitBusy, 429),
    (Unavailable, 503),
    (RequestError, 400),
    (ConfigError, 400),
]
_IDENTIFIER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


class BodyTooLarge(StarletteHTTPException):
    """A request body (chunked, or longer than it said) went past the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status_code=413, detail=f"the request body is over the limit of {limit} bytes"
        )
        self.limit = limit


def _clean(value: Any, depth: int = 0) -> Any:
    """``value`` with every string encodable as UTF-8 (lone surrogates escaped)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if depth > 8:
        return None
    if isinstance(value, dict):
        return {_clean(str(k)): _clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, depth + 1) for v in value]
    return value


def error_body(error: str, details: Any = None) -> dict[str, Any]:
    return {"error": _clean(error), "details": _clean(details)}


def _location(loc: tuple[Any, ...]) -> str:
    parts = []
    for p in loc:
        if p == "body":
            continue
        text = str(p)
        if isinstance(p, int) or not text or set(text) - _IDENTIFIER_CHARS or len(text) > 60:
            parts.append(f"[{excerpt(p)}]" if not isinstance(p, int) else f"[{p}]")
        else:
            parts.append(f".{text}" if parts else text)
    return "".join(parts) or "body"


def _message(msg: str) -> str:
    return msg.removeprefix("Value error, ")


def install(app: FastAPI, redactor: Redactor | None = None) -> None:
    redact = redactor or Redactor({})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "field": _location(tuple(e.get("loc", ()))),
                "message": redact.text(_message(str(e.get("msg", "")))),
            }
            for e in exc.errors()
        ]
        first = problems[0] if problems else {"field": "body", "message": "invalid request"}
        message = (
            first["message"]
            if first["field"] == "body" and ": " in first["message"]
            else f"{first['field']}: {first['message']}"
        )
        if any("JSON decode error" in p["message"] for p in problems):
            message = "the request body is not valid JSON"
        return JSONResponse(error_body(message, problems), status_code=400)

    @app.exception_handler(FarmError)
    async def _farm(request: Request, exc: FarmError) -> JSONResponse:
        status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 500)
        if status >= 500:
            _log.error("%s %s: %s", request.method, request.url.path, exc, exc_info=exc)
        details: dict[str, Any] = {"code": exc.code}
        if isinstance(exc, InvalidConfigs):
            details["configs"] = [
                {
                    "index": p.index,
                    "config": p.config,
                    "package": p.package,
                    "error": redact.text(p.error),
                }
                for p in exc.problems
            ]
        # 401: how to authenticate (RFC 6750); the message never holds the token sent
        challenge = {"WWW-Authenticate": 'Bearer realm="melange2"'} if status == 401 else None
        return JSONResponse(
            error_body(redact.text(exc.message), details),
            status_code=status,
            headers=challenge,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        details = {"limit": exc.limit} if isinstance(exc, BodyTooLarge) else None
        return JSONResponse(
            error_body(redact.text(message), details),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        _log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            error_body("internal error (the server's log has the details)", {"code": "internal"}),
            status_code=500,
        )
