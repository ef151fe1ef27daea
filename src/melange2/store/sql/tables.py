"""The SQL schema as SQLAlchemy Core tables. Alembic migrations must produce exactly this
(``tests/migration`` checks it); change both together.

States are text with a CHECK constraint listing the :class:`~melange2.jobs.PackageStatus`
and :class:`~melange2.jobs.BuildStatus` values. Datetimes are stored in UTC and come back
timezone-aware (:class:`UTCDateTime`). A package's attempts are a JSON list in its row
(:class:`AttemptList`): they are always read and written whole, with the package.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    TypeDecorator,
    false,
    text,
)

from melange2.auth import Role
from melange2.jobs import Attempt, BuildStatus, PackageStatus

__all__ = [
    "AttemptList",
    "UTCDateTime",
    "backends",
    "builds",
    "metadata",
    "packages",
    "replicas",
    "status_check",
    "tokens",
]

#: constraint names are fixed so migrations can refer to them
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime, kept in UTC; naive datetimes are refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps aware UTC datetimes")
        value = value.astimezone(UTC)
        # SQLite has no time zones: keep the UTC wall time (fixed width, sorts as text)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_literal_param(self, value: Any, dialect: Dialect) -> str:
        raise NotImplementedError("bind datetimes as parameters")


class AttemptList(TypeDecorator[tuple[Attempt, ...]]):
    """A package's attempts as a JSON list sorted by ``number``; times as ISO 8601 UTC."""

    impl = JSON
    cache_ok = True

    def process_bind_param(
        self, value: Sequence[Attempt] | None, dialect: Dialect
    ) -> list[dict[str, Any]] | None:
        if value is None:
            return None
        return [_attempt_json(a) for a in sorted(value, key=lambda a: a.number)]

    def process_result_value(self, value: Any, dialect: Dialect) -> tuple[Attempt, ...] | None:
        if value is None:
            return None
        return tuple(_attempt_from_json(a) for a in value)

    def process_literal_param(self, value: Any, dialect: Dialect) -> str:
        raise NotImplementedError("bind attempts as parameters")


def _iso(value: datetime | None, what: str) -> str | None:
    if value is None:
        return None
    if value.utcoffset() is None:
        raise ValueError(f"naive {what} {value!r}: the store keeps aware UTC datetimes")
    return value.astimezone(UTC).isoformat()


def _attempt_json(attempt: Attempt) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "backend": attempt.backend,
        "started_at": _iso(attempt.started_at, "started_at"),
        "finished_at": _iso(attempt.finished_at, "finished_at"),
        "error": attempt.error,
        "log_path": attempt.log_path,
    }


def _attempt_from_json(raw: Mapping[str, Any]) -> Attempt:
    finished = raw["finished_at"]
    return Attempt(
        number=raw["number"],
        backend=raw["backend"],
        started_at=datetime.fromisoformat(raw["started_at"]),
        finished_at=None if finished is None else datetime.fromisoformat(finished),
        error=raw["error"],
        log_path=raw["log_path"],
    )


def status_check(values: type[PackageStatus] | type[BuildStatus]) -> str:
    """``status IN ('a', 'b', ...)`` for a CHECK constraint."""
    return "status IN (" + ", ".join(f"'{v.value}'" for v in values) + ")"


builds = Table(
    "builds",
    metadata,
    Column("id", Text, primary_key=True),
    Column("status", Text, nullable=False),
    #: the submission request, as JSON
    Column("spec", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("cancel_requested", Boolean, nullable=False),
    #: r0006: the name of the token that submitted it ('' without authentication)
    Column("submitted_by", Text, nullable=False, server_default=""),
    #: r0006: the commit a git_source build was made from ('' otherwise)
    Column("source_commit", Text, nullable=False, server_default=""),
    CheckConstraint(status_check(BuildStatus), name="status"),
    # list_builds: newest first with a (created_at, id) cursor, optionally by status
    Index(None, "created_at", "id"),
    Index(None, "status", "created_at", "id"),
)

packages = Table(
    "packages",
    metadata,
    Column("build_id", Text, ForeignKey("builds.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("config_yaml", Text, nullable=False),
    Column("arch", Text, nullable=False),
    #: names within the build this package waits for, a JSON list
    Column("dependencies", JSON, nullable=False),
    Column("priority", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("error", Text, nullable=False),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("log_path", Text, nullable=False),
    Column("output_path", Text, nullable=False),
    #: ``{"addr", "arch", "labels"}`` or NULL
    Column("backend", JSON),
    Column("lease_owner", Text, nullable=False),
    Column("lease_expires", UTCDateTime),
    # r0002
    Column("cached", Boolean, nullable=False, server_default=false()),
    Column("input_digest", Text, nullable=False, server_default=""),
    #: r0004: the attempts, in ``number`` order
    Column("attempts", AttemptList, nullable=False, server_default=text("'[]'")),
    # r0005: what it asks (package.resources): millicores and bytes, 0: nothing
    Column("cpu_millis", Integer, nullable=False, server_default="0"),
    Column("memory_bytes", BigInteger, nullable=False, server_default="0"),
    PrimaryKeyConstraint("build_id", "name"),
    CheckConstraint(status_check(PackageStatus), name="status"),
    # expire_leases: running packages by lease deadline
    Index(None, "status", "lease_expires"),
    # renew_leases: one owner's leases
    Index(None, "lease_owner"),
    # durations: latest success per package name
    Index(None, "name", "status", "finished_at"),
)

backends = Table(
    "backends",
    metadata,
    Column("addr", Text, primary_key=True),
    Column("arch", Text, nullable=False),
    #: JSON object of label -> value
    Column("labels", JSON, nullable=False),
    Column("max_jobs", Integer, nullable=False),
    #: when it was first added (list order); replacing a backend keeps its place
    Column("position", Integer, nullable=False),
    #: client TLS as JSON ``{"caCert", "cert", "key", "serverName"}`` (PEM text); NULL: plain
    Column("tls", JSON, nullable=True),
    #: r0005: what its machine has (millicores, bytes); NULL: not declared, unlimited
    Column("cpu_millis", Integer, nullable=True),
    Column("memory_bytes", BigInteger, nullable=True),
)

#: r0006: API tokens, by the SHA-256 of their secret (the secret is never kept)
tokens = Table(
    "tokens",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("token_hash", Text, nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
    CheckConstraint("role IN (" + ", ".join(f"'{r.value}'" for r in Role) + ")", name="role"),
    # one token not revoked per name
    Index(
        "uq_tokens_active_name",
        "name",
        unique=True,
        sqlite_where=text("revoked_at IS NULL"),
        postgresql_where=text("revoked_at IS NULL"),
    ),
)

#: r0007: the server processes on this database (several replicas): their lease owner
#: id, where their API is reached, and their heartbeat
replicas = Table(
    "replicas",
    metadata,
    Column("id", Text, primary_key=True),
    Column("url", Text, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
)
