"""Alembic migrations of the SQL store, run from the installed package (no alembic.ini).

The store runs :func:`upgrade` every time it opens, so the schema in use is always the
migrated one; ``tests/migration`` checks that head equals
:data:`melange2.store.sql.tables.metadata`.

To write a migration, change ``tables.py`` and then, against a database at head::

    from alembic import command
    cfg = alembic_config(connection)        # a sync Connection, e.g. in run_sync
    command.revision(cfg, "what changed", autogenerate=True)

and review the generated file under ``versions/``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

__all__ = ["MIGRATIONS_DIR", "alembic_config", "downgrade", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config(connection: Connection) -> Config:
    """An Alembic config built in code that runs on ``connection`` (see ``env.py``)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Migrate the database behind ``connection`` up to ``revision``, in its transaction."""
    command.upgrade(alembic_config(connection), revision)


def downgrade(connection: Connection, revision: str = "base") -> None:
    """Migrate the database behind ``connection`` down to ``revision``."""
    command.downgrade(alembic_config(connection), revision)
