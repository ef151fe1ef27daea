"""resources: what a package asks and what a backend has (cpu millicores, memory bytes)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("packages") as batch:
        batch.add_column(sa.Column("cpu_millis", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("memory_bytes", sa.BigInteger(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("backends") as batch:
        batch.add_column(sa.Column("cpu_millis", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("memory_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("backends") as batch:
        batch.drop_column("memory_bytes")
        batch.drop_column("cpu_millis")
    with op.batch_alter_table("packages") as batch:
        batch.drop_column("memory_bytes")
        batch.drop_column("cpu_millis")
