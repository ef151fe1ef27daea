"""initial schema: builds, packages, attempts, backends

Revision ID: 0001
Revises:
Create Date: 2025-11-27 06:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# frozen here on purpose: a later state needs a migration, not an edit of this one
BUILD_STATES = "'pending', 'running', 'success', 'failed', 'partial', 'cancelled'"
PACKAGE_STATES = "'blocked', 'pending', 'running', 'success', 'failed', 'skipped', 'cancelled'"


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "builds",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.CheckConstraint(f"status IN ({BUILD_STATES})", name=op.f("ck_builds_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_builds")),
    )
    op.create_index(op.f("ix_builds_created_at_id"), "builds", ["created_at", "id"])
    op.create_index(
        op.f("ix_builds_status_created_at_id"), "builds", ["status", "created_at", "id"]
    )

    op.create_table(
        "packages",
        sa.Column("build_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("config_yaml", sa.Text(), nullable=False),
        sa.Column("arch", sa.Text(), nullable=False),
        sa.Column("dependencies", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("log_path", sa.Text(), nullable=False),
        sa.Column("output_path", sa.Text(), nullable=False),
        sa.Column("backend", sa.JSON(), nullable=True),
        sa.Column("lease_owner", sa.Text(), nullable=False),
        sa.Column("lease_expires", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(f"status IN ({PACKAGE_STATES})", name=op.f("ck_packages_status")),
        sa.ForeignKeyConstraint(
            ["build_id"],
            ["builds.id"],
            name=op.f("fk_packages_build_id_builds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("build_id", "name", name=op.f("pk_packages")),
    )
    op.create_index(op.f("ix_packages_lease_owner"), "packages", ["lease_owner"])
    op.create_index(
        op.f("ix_packages_name_status_finished_at"), "packages", ["name", "status", "finished_at"]
    )
    op.create_index(
        op.f("ix_packages_status_lease_expires"), "packages", ["status", "lease_expires"]
    )

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

    op.create_table(
        "backends",
        sa.Column("addr", sa.Text(), nullable=False),
        sa.Column("arch", sa.Text(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("max_jobs", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("addr", name=op.f("pk_backends")),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("backends")
    op.drop_table("attempts")
    op.drop_index(op.f("ix_packages_status_lease_expires"), table_name="packages")
    op.drop_index(op.f("ix_packages_name_status_finished_at"), table_name="packages")
    op.drop_index(op.f("ix_packages_lease_owner"), table_name="packages")
    op.drop_table("packages")
    op.drop_index(op.f("ix_builds_status_created_at_id"), table_name="builds")
    op.drop_index(op.f("ix_builds_created_at_id"), table_name="builds")
    op.drop_table("builds")
