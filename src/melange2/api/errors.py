"""The one place where exceptions become HTTP answers: ``{"error": ..., "details": ...}``.

Client mistakes are 4xx with a message naming what is wrong and where; never a 500 or a
traceback for what a client sent."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from melange2.build.source_cache import SourceTooLarge
from melange2.errors import (
    ConfigError,
    FarmError,
    InvalidTransition,
    NotFound,
    RequestError,
    StoreConflict,
    StoreUnavailable,
)
from melange2.storage import StorageError, StorageNotFound

_STATUS: list[tuple[type[FarmError], int]] = [
    (SourceTooLarge, 413),
    (NotFound, 404),
    (StorageNotFound, 404),
    (StorageError, 503),
    (InvalidTransition, 409),
    (StoreConflict, 409),
    (StoreUnavailable, 503),
    (RequestError, 400),
    (ConfigError, 400),
]


def error_body(error: str, details: Any = None) -> dict[str, Any]:
    return {"error": error, "details": details}


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": _location(tuple(e.get("loc", ()))), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        first = problems[0] if problems else {"field": "body", "message": "invalid request"}
        message = f"{first['field']}: {first['message']}"
        if any("JSON decode error" in p["message"] for p in problems):
            message = "the request body is not valid JSON"
        return JSONResponse(error_body(message, problems), status_code=400)

    @app.exception_handler(FarmError)
    async def _farm(request: Request, exc: FarmError) -> JSONResponse:
        status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 500)
        return JSONResponse(error_body(exc.message, {"code": exc.code}), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )
