"""backends: tls (client TLS settings of a runtime backend)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:30:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("backends") as batch:
        batch.add_column(sa.Column("tls", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("backends") as batch:
        batch.drop_column("tls")
