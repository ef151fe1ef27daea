"""The SQL schema as SQLAlchemy Core tables. Alembic migrations must produce exactly this
(``tests/migration`` checks it); change both together.

States are text with a CHECK constraint listing the :class:`~melange2.jobs.PackageStatus`
and :class:`~melange2.jobs.BuildStatus` values. Datetimes are stored in UTC and come back
timezone-aware (:class:`UTCDateTime`).
"""

from __future__ import annotations

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
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    TypeDecorator,
    false,
)

from melange2.jobs import BuildStatus, PackageStatus

__all__ = [
    "attempts",
    "backends",
    "builds",
    "metadata",
    "packages",
    "status_check",
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
    # r0004: what it asks (package.resources): millicores and bytes, 0: nothing
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

attempts = Table(
    "attempts",
    metadata,
    Column("build_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("number", Integer, nullable=False),
    Column("backend", Text, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("error", Text, nullable=False),
    Column("log_path", Text, nullable=False),
    PrimaryKeyConstraint("build_id", "name", "number"),
    ForeignKeyConstraint(
        ["build_id", "name"], ["packages.build_id", "packages.name"], ondelete="CASCADE"
    ),
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
    #: r0004: what its machine has (millicores, bytes); NULL: not declared, unlimited
    Column("cpu_millis", Integer, nullable=True),
    Column("memory_bytes", BigInteger, nullable=True),
)
