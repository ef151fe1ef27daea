"""``/api/v1/tokens``: the API tokens, for admins (``melange-server tokens`` does the
same where the store is). A token's secret is shown once, in the answer that made it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends

from melange2.api.auth import TokenAdmin
from melange2.api.services import Services, services
from melange2.auth import Role, Token, parse_expiry
from melange2.service.tokens import issue_token, revoke_token
from melange2.wire import CreatedTokenOut, CreateTokenRequest, ErrorOut, TokenList, TokenOut

router = APIRouter(prefix="/api/v1", tags=["tokens"])
Svc = Annotated[Services, Depends(services)]
_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorOut},
    401: {"model": ErrorOut, "description": "no valid token"},
    403: {"model": ErrorOut, "description": "not an admin token (or a --no-auth server)"},
    404: {"model": ErrorOut},
    409: {"model": ErrorOut},
}


def token_state(token: Token, now: datetime) -> str:
    if token.revoked_at is not None:
        return "revoked"
    return "active" if token.valid_at(now) else "expired"


def token_out(token: Token, now: datetime | None = None) -> TokenOut:
    return TokenOut(
        id=token.id,
        name=token.name,
        role=token.role.value,
        created_at=token.created_at,
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
        state=token_state(token, now or datetime.now(UTC)),
    )


@router.get("/tokens", response_model=TokenList, responses=_ERRORS)
async def list_tokens(_: TokenAdmin, svc: Svc) -> TokenList:
    """Every token, oldest first: revoked and expired ones too. Never a secret."""
    now = datetime.now(UTC)
    return TokenList(tokens=[token_out(t, now) for t in await svc.store.list_tokens()])


@router.post("/tokens", status_code=201, response_model=CreatedTokenOut, responses=_ERRORS)
async def create_token(_: TokenAdmin, request: CreateTokenRequest, svc: Svc) -> CreatedTokenOut:
    """Make a token; its ``secret`` is in this answer only. 409 if a token not revoked
    has the name."""
    now = datetime.now(UTC)
    expires = parse_expiry(request.expires, now) if request.expires else None
    issued = await issue_token(
        svc.store, name=request.name, role=Role(request.role), expires_at=expires, now=now
    )
    return CreatedTokenOut(token=token_out(issued.token, now), secret=issued.secret)


@router.delete("/tokens/{token}", response_model=TokenOut, responses=_ERRORS)
async def delete_token(token: str, _: TokenAdmin, svc: Svc) -> TokenOut:
    """Revoke a token, by id (``tok-...``) or by the name of the one not revoked; it is
    refused (401) from the next request on."""
    return token_out(await revoke_token(svc.store, token))
