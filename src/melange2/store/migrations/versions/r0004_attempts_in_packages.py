"""packages.attempts: a package's attempts as a JSON list in its own row (table dropped)

A package's attempts are always read and written whole, with the package: keeping them
in the row makes every transition one guarded UPDATE (before: the UPDATE, a DELETE and an
INSERT of the attempts, or a SELECT of them). Each attempt is ``{"number", "backend",
"started_at", "finished_at", "error", "log_path"}`` with ISO 8601 UTC times, sorted by
``number``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:00:00

"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# the tables as this migration knows them (frozen: later changes need their own migration)
_meta = sa.MetaData()
_packages = sa.Table(
    "packages",
    _meta,
    sa.Column("build_id", sa.Text()),
    sa.Column("name", sa.Text()),
    sa.Column("attempts", sa.JSON()),
)
_attempts = sa.Table(
    "attempts",
    _meta,
    sa.Column("build_id", sa.Text()),
    sa.Column("name", sa.Text()),
    sa.Column("number", sa.Integer()),
    sa.Column("backend", sa.Text()),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("error", sa.Text()),
    sa.Column("log_path", sa.Text()),
)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)  # SQLite: UTC
    return aware.astimezone(UTC).isoformat()


def _utc(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).astimezone(UTC)


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("packages") as batch:
        batch.add_column(
            sa.Column("attempts", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
    conn = op.get_bind()
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    rows = conn.execute(
        sa.select(_attempts).order_by(_attempts.c.build_id, _attempts.c.name, _attempts.c.number)
    )
    for row in rows.mappings():
        grouped.setdefault((row["build_id"], row["name"]), []).append(
            {
                "number": row["number"],
                "backend": row["backend"],
                "started_at": _iso(row["started_at"]),
                "finished_at": _iso(row["finished_at"]),
                "error": row["error"],
                "log_path": row["log_path"],
            }
        )
    if grouped:
        conn.execute(
            sa.update(_packages)
            .where(
                _packages.c.build_id == sa.bindparam("b_build_id"),
                _packages.c.name == sa.bindparam("b_name"),
            )
            .values(attempts=sa.bindparam("b_attempts")),
            [
                {"b_build_id": build_id, "b_name": name, "b_attempts": tries}
                for (build_id, name), tries in grouped.items()
            ],
        )
    op.drop_table("attempts")


def downgrade() -> None:
    """Downgrade schema."""
    conn = op.get_bind()
    copied = [
        {
            "build_id": row["build_id"],
            "name": row["name"],
            "number": attempt["number"],
            "backend": attempt["backend"],
            "started_at": _utc(attempt["started_at"]),
            "finished_at": _utc(attempt["finished_at"]),
            "error": attempt["error"],
            "log_path": attempt["log_path"],
        }
        for row in conn.execute(sa.select(_packages)).mappings()
        for attempt in row["attempts"] or ()
    ]
    # first, while no table refers to packages: SQLite rebuilds it to drop a column
    with op.batch_alter_table("packages") as batch:
        batch.drop_column("attempts")
    op.create_table(
        "attempts",
        sa.Column("build_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("backend", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("log_path", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["build_id", "name"],
            ["packages.build_id", "packages.name"],
            name=op.f("fk_attempts_build_id_name_packages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("build_id", "name", "number", name=op.f("pk_attempts")),
    )
    if copied:
        if conn.dialect.name == "sqlite":  # the old schema kept UTC wall times there
            for values in copied:
                for key in ("started_at", "finished_at"):
                    if values[key] is not None:
                        values[key] = values[key].replace(tzinfo=None)
        conn.execute(sa.insert(_attempts), copied)
