"""``/api/v1/replicas``: the server processes sharing this one's database."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from melange2.api.auth import FarmReader
from melange2.api.services import Services, services
from melange2.wire import ErrorOut, ReplicaOut

router = APIRouter(prefix="/api/v1", tags=["replicas"])
Svc = Annotated[Services, Depends(services)]


@router.get(
    "/replicas",
    response_model=list[ReplicaOut],
    responses={
        401: {"model": ErrorOut, "description": "no valid token"},
        403: {"model": ErrorOut, "description": "the token's role does not allow it"},
    },
)
async def list_replicas(svc: Svc, _: FarmReader) -> list[ReplicaOut]:
    """Every replica registered on the store's database, oldest first: its id (the
    ``lease_owner`` of the packages it runs), its advertised URL, when it started and
    last renewed its heartbeat, and whether it is alive (a heartbeat younger than the
    lease TTL). One process alone (SQLite, memory) lists itself."""
    if svc.replicas is None:
        return []
    return [
        ReplicaOut(
            id=v.replica.id,
            url=v.replica.url,
            started_at=v.replica.started_at,
            heartbeat_at=v.replica.heartbeat_at,
            alive=v.alive,
            here=v.me,
        )
        for v in await svc.replicas.list()
    ]
