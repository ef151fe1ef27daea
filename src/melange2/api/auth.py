"""Authentication for the routes: one FastAPI dependency per permission.

A route declares what it needs in its signature, and the dependency answers 401 (no
valid token) or 403 (a token whose role lacks it) before the route runs, before the
request body is even read::

    @router.put("/sources/{digest}")
    async def put_source(digest: str, principal: Submitter, svc: Svc) -> ...:
        ...  # principal: the caller (None only on a --no-auth server)

Routes that decide per build (cancel, a build's env values) take :data:`Caller` and ask
the policy themselves: ``policy(request).check(caller, Action.CANCEL, build)``.

For other front ends on the same app (the web dashboard): ``await
principal_from_request(request)`` is who the request comes from (``None``: nobody),
and ``policy(request).allows(principal, action, build)`` (or
:meth:`~melange2.auth.Principal.can`) what they may do.

The dashboard's login keeps the token in a cookie (:data:`TOKEN_COOKIE`, HttpOnly,
SameSite=Strict). A ``GET`` or ``HEAD`` without an ``Authorization`` header is
authenticated by that cookie too (the pages' event streams, logs and downloads); any
other method of the API needs the header, so that a cookie never makes a change
through the API. The pages' own forms check the request's origin themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from melange2.auth import Action, AuthPolicy, Principal
from melange2.errors import StoreError, Unavailable
from melange2.service.tokens import authenticate

__all__ = [
    "TOKEN_COOKIE",
    "BackendAdmin",
    "BuildReader",
    "Caller",
    "FarmReader",
    "Submitter",
    "TokenAdmin",
    "policy",
    "principal_from_request",
    "require",
]

#: reads ``Authorization: Bearer <token>``; documents the scheme in the OpenAPI schema
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description="An API token (mlg_...) from `melange-server tokens create`.",
)
_NO_ONE = object()
#: the dashboard's login cookie: the token given at ``/login``
TOKEN_COOKIE = "melange2_token"
#: the methods a cookie authenticates on the API (reads only)
_READS = frozenset({"GET", "HEAD"})


def policy(request: Request) -> AuthPolicy:
    """The app's rule (``--no-auth``, ``--public-read``)."""
    found: AuthPolicy = request.app.state.auth_policy
    return found


async def principal_from_request(request: Request) -> Principal | None:
    """Who sent ``request``: the principal of its bearer token, or ``None`` without
    one. A token that is not valid (unknown, revoked, expired) raises
    :class:`~melange2.auth.Unauthorized` (401). On a ``--no-auth`` server tokens are
    not looked at: ``None``. Worked out once per request."""
    return await _resolve(request, await _bearer(request))


async def _resolve(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Principal | None:
    cached = getattr(request.state, "principal", _NO_ONE)
    if cached is not _NO_ONE:
        return cached  # type: ignore[return-value]
    principal: Principal | None = None
    secret = credentials.credentials if credentials is not None else None
    if secret is None and request.method in _READS:
        secret = request.cookies.get(TOKEN_COOKIE) or None
    if secret is not None and policy(request).enabled:
        try:
            principal = await authenticate(request.app.state.services.store, secret)
        except StoreError as exc:  # not the client's fault: try again later
            raise Unavailable(f"cannot check the token now: {exc.message}") from exc
    request.state.principal = principal
    return principal


async def _credentials(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal | None:
    # through the HTTPBearer dependency: the OpenAPI schema shows the security scheme
    return await _resolve(request, credentials)


def require(action: Action) -> Callable[..., Awaitable[Principal | None]]:
    """A dependency: the caller if the policy allows ``action``, else 401/403."""

    async def dependency(
        request: Request, principal: Annotated[Principal | None, Depends(_credentials)]
    ) -> Principal | None:
        policy(request).check(principal, action)
        return principal

    dependency.__name__ = f"require_{action.value}"
    return dependency


#: the caller, unchecked (the route checks, against a build)
Caller = Annotated[Principal | None, Depends(_credentials)]
#: builds, packages, logs, artifacts (anonymous with --public-read)
BuildReader = Annotated[Principal | None, Depends(require(Action.READ_BUILDS))]
#: backends, metrics, the source cache (never anonymous: --public-read is for builds)
FarmReader = Annotated[Principal | None, Depends(require(Action.READ_FARM))]
#: create builds, upload to the source cache
Submitter = Annotated[Principal | None, Depends(require(Action.SUBMIT))]
BackendAdmin = Annotated[Principal | None, Depends(require(Action.MANAGE_BACKENDS))]
TokenAdmin = Annotated[Principal | None, Depends(require(Action.MANAGE_TOKENS))]
