"""The queries of the ``replicas`` table (r0007), for SQLite and PostgreSQL alike; kept
apart from :mod:`~melange2.store.sql.queries` (builds, packages, backends, tokens)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, RowMapping, delete, insert, select, update

from melange2.store.base import Replica
from melange2.store.sql.tables import replicas

__all__ = ["get_replica", "heartbeat_replica", "list_replicas", "put_replica", "remove_replica"]


def _replica_of(row: RowMapping) -> Replica:
    return Replica(
        id=row["id"],
        url=row["url"],
        started_at=row["started_at"],
        heartbeat_at=row["heartbeat_at"],
    )


def put_replica(conn: Connection, replica: Replica) -> None:
    """Replace the replica with this id, or insert it."""
    values = {
        "url": replica.url,
        "started_at": replica.started_at,
        "heartbeat_at": replica.heartbeat_at,
    }
    if conn.execute(update(replicas).where(replicas.c.id == replica.id).values(values)).rowcount:
        return
    conn.execute(insert(replicas).values(id=replica.id, **values))


def heartbeat_replica(conn: Connection, replica_id: str, at: datetime) -> bool:
    result = conn.execute(
        update(replicas).where(replicas.c.id == replica_id).values(heartbeat_at=at)
    )
    return bool(result.rowcount)


def remove_replica(conn: Connection, replica_id: str) -> None:
    conn.execute(delete(replicas).where(replicas.c.id == replica_id))


def get_replica(conn: Connection, replica_id: str) -> Replica | None:
    row = conn.execute(select(replicas).where(replicas.c.id == replica_id)).mappings().first()
    return None if row is None else _replica_of(row)


def list_replicas(conn: Connection) -> list[Replica]:
    rows = conn.execute(select(replicas).order_by(replicas.c.started_at, replicas.c.id))
    return [_replica_of(row) for row in rows.mappings()]
