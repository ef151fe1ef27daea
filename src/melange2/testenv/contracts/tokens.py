"""The :class:`~melange2.store.base.TokenStore` contract: what every store does with API
tokens. :class:`~melange2.testenv.contracts.store.StoreContract` includes it (every
``JobStore`` is a ``TokenStore``); subclass it alone for a token store of its own::

    class TestMyTokens(TokenStoreContract):
        @pytest.fixture
        async def store(self) -> AsyncIterator[TokenStore]:
            async with MyStore() as store:
                yield store
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from melange2.auth import Role, Token, hash_token, new_secret
from melange2.errors import NotFound, StoreConflict, StoreError
from melange2.store.base import TokenStore

__all__ = ["TokenStoreContract", "make_token"]

T0 = datetime(2026, 12, 1, 9, 30, 0, 500_000, tzinfo=UTC)
_PLUS2 = timezone(timedelta(hours=2))


def make_token(name: str = "ci", role: Role = Role.SUBMIT, **fields: Any) -> Token:
    """A token with a fresh secret's hash (the secret itself is thrown away)."""
    defaults: dict[str, Any] = {
        "id": f"tok-{name}-{role}",
        "token_hash": hash_token(new_secret()),
        "created_at": T0,
    }
    return Token(name=name, role=role, **{**defaults, **fields})


class TokenStoreContract:
    """Every :class:`~melange2.store.base.TokenStore` passes these."""

    pytestmark = [pytest.mark.anyio]

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def store(self) -> AsyncIterator[TokenStore]:
        """An empty, open store; override in the subclass."""
        raise NotImplementedError("override the `store` fixture")
        yield  # pragma: no cover

    async def test_a_token_comes_back_whole_by_its_hash(self, store: TokenStore) -> None:
        secret = new_secret()
        token = make_token(
            "alice@example.org",
            Role.ADMIN,
            token_hash=hash_token(secret),
            created_at=datetime(2026, 12, 1, 11, 30, 0, 500_000, tzinfo=_PLUS2),
            expires_at=datetime(2027, 1, 1, 12, 0, tzinfo=_PLUS2),
        )
        await store.create_token(token)
        got = await store.token_by_hash(hash_token(secret))
        assert got == token
        assert got is not None and isinstance(got.role, Role)
        for stamp in (got.created_at, got.expires_at):
            assert stamp is not None and stamp.utcoffset() == timedelta(0)
        assert got.matches(secret) and not got.matches(new_secret())
        assert await store.token_by_hash(hash_token(new_secret())) is None

    async def test_tokens_are_listed_oldest_first(self, store: TokenStore) -> None:
        later = make_token("b", created_at=T0 + timedelta(seconds=1))
        first = make_token("a", Role.READ)
        same_time = make_token("c", Role.ADMIN)
        for token in (later, same_time, first):
            await store.create_token(token)
        assert list(await store.list_tokens()) == [first, same_time, later]

    async def test_a_name_has_one_active_token(self, store: TokenStore) -> None:
        first = make_token("ci", id="tok-1")
        await store.create_token(first)
        with pytest.raises(StoreConflict, match="a token named 'ci' exists"):
            await store.create_token(make_token("ci", Role.ADMIN, id="tok-2"))
        assert list(await store.list_tokens()) == [first]
        revoked = await store.revoke_token("tok-1", T0 + timedelta(hours=1))
        assert revoked == first.evolve(revoked_at=T0 + timedelta(hours=1))
        rotated = make_token("ci", id="tok-3", created_at=T0 + timedelta(hours=2))
        await store.create_token(rotated)  # the name is free again
        assert list(await store.list_tokens()) == [revoked, rotated]

    async def test_a_taken_id_or_hash_is_a_conflict(self, store: TokenStore) -> None:
        token = make_token("a")
        await store.create_token(token)
        with pytest.raises(StoreConflict):
            await store.create_token(make_token("b", id=token.id))
        with pytest.raises(StoreConflict):
            await store.create_token(make_token("c", token_hash=token.token_hash))
        assert list(await store.list_tokens()) == [token]

    async def test_revoking_keeps_the_first_time_and_refuses_unknown_ids(
        self, store: TokenStore
    ) -> None:
        secret = new_secret()
        await store.create_token(make_token("a", token_hash=hash_token(secret), id="tok-a"))
        at = datetime(2026, 12, 2, 14, 0, tzinfo=_PLUS2)
        revoked = await store.revoke_token("tok-a", at)
        assert revoked.revoked_at == at and not revoked.valid_at(at)
        again = await store.revoke_token("tok-a", at + timedelta(days=1))
        assert again.revoked_at == at
        found = await store.token_by_hash(hash_token(secret))
        assert found is not None and found.revoked_at == at  # still found: 401 says why
        with pytest.raises(NotFound):
            await store.revoke_token("tok-nothing", at)

    async def test_bad_tokens_are_refused(self, store: TokenStore) -> None:
        with pytest.raises(ValueError):
            await store.create_token(make_token("a", created_at=datetime(2026, 1, 1)))
        with pytest.raises(ValueError):
            await store.create_token(make_token("b", role="root"))  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await store.create_token(make_token("c\0"))
        with pytest.raises(ValueError):
            await store.revoke_token("tok-x", datetime(2026, 1, 1))
        assert list(await store.list_tokens()) == []

    async def test_two_creates_of_one_name_at_once_leave_one(self, store: TokenStore) -> None:
        results = await asyncio.gather(
            *(store.create_token(make_token("race", id=f"tok-{n}")) for n in range(4)),
            return_exceptions=True,
        )
        assert sum(r is None for r in results) == 1
        assert all(isinstance(r, StoreConflict) for r in results if r is not None)
        assert [t.name for t in await store.list_tokens()] == ["race"]

    async def test_a_closed_store_refuses_token_calls(self, store: TokenStore) -> None:
        closable: Any = store
        await closable.aclose()
        with pytest.raises(StoreError):
            await store.list_tokens()
