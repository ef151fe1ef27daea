"""API tokens over a :class:`~melange2.store.base.TokenStore`: make one (its secret is
returned once and never kept), find who a secret belongs to, revoke by id or name.

``melange-server tokens``, the tokens endpoints, the local farm and the request
dependency (:mod:`melange2.api.auth`) all go through here::

    issued = await issue_token(store, name="ci", role=Role.SUBMIT)
    print(issued.secret)                      # shown once
    principal = await authenticate(store, issued.secret)
    await revoke_token(store, "ci")           # by name (the active one) or by id
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from melange2.auth import (
    Principal,
    Role,
    Token,
    Unauthorized,
    check_token_name,
    hash_token,
    looks_like_token,
    new_secret,
    new_token_id,
)
from melange2.errors import NotFound
from melange2.names import excerpt
from melange2.store.base import TokenStore

__all__ = ["Issued", "authenticate", "find_token", "issue_token", "revoke_token", "rotate_token"]


@dataclass(frozen=True, kw_only=True)
class Issued:
    """A token just made, and its secret (shown once; the store has only the hash)."""

    token: Token
    secret: str


async def issue_token(
    store: TokenStore,
    *,
    name: str,
    role: Role,
    expires_at: datetime | None = None,
    now: datetime | None = None,
) -> Issued:
    """A new token. ``RequestError`` for a bad name, ``StoreConflict`` if a token not
    revoked has that name."""
    check_token_name(name)
    secret = new_secret()
    token = Token(
        id=new_token_id(),
        name=name,
        role=Role(role),
        token_hash=hash_token(secret),
        created_at=now or datetime.now(UTC),
        expires_at=expires_at,
    )
    await store.create_token(token)
    return Issued(token=token, secret=secret)


async def find_token(store: TokenStore, which: str) -> Token:
    """The token with id ``which``, else the one not revoked named ``which``.
    ``NotFound`` if neither."""
    tokens: Sequence[Token] = await store.list_tokens()
    for token in tokens:
        if token.id == which:
            return token
    for token in tokens:
        if token.name == which and token.revoked_at is None:
            return token
    raise NotFound(f"no token with id or name {excerpt(which)} (revoked ones go by id)")


async def revoke_token(store: TokenStore, which: str, now: datetime | None = None) -> Token:
    """Revoke the token ``which`` names (:func:`find_token`); it is refused from then on."""
    token = await find_token(store, which)
    return await store.revoke_token(token.id, now or datetime.now(UTC))


async def rotate_token(
    store: TokenStore, *, name: str, role: Role, now: datetime | None = None
) -> Issued:
    """Revoke the active token named ``name``, if any, and make a new one (the local
    farm does at every start)."""
    now = now or datetime.now(UTC)
    for token in await store.list_tokens():
        if token.name == name and token.revoked_at is None:
            await store.revoke_token(token.id, now)
    return await issue_token(store, name=name, role=role, now=now)


async def authenticate(store: TokenStore, secret: str, now: datetime | None = None) -> Principal:
    """Who holds ``secret``. ``Unauthorized`` for an unknown, revoked or expired token
    (the message never repeats the secret)."""
    if not looks_like_token(secret):
        raise Unauthorized("the bearer token is not a melange2 token (mlg_...)")
    token = await store.token_by_hash(hash_token(secret))
    if token is None or not token.matches(secret):
        raise Unauthorized("the bearer token is not valid (unknown or revoked)")
    now = now or datetime.now(UTC)
    if token.revoked_at is not None:
        raise Unauthorized("the bearer token is not valid (unknown or revoked)")
    if token.expires_at is not None and now >= token.expires_at:
        raise Unauthorized(
            f"the bearer token {token.name!r} expired at {token.expires_at:%Y-%m-%d %H:%M:%S} UTC"
        )
    return token.principal
