"""packages: cached and input_digest (rebuilds that skip unchanged inputs)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 08:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("packages") as batch:
        batch.add_column(
            sa.Column("cached", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("input_digest", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("packages") as batch:
        batch.drop_column("input_digest")
        batch.drop_column("cached")
