"""Alembic's head equals the tables in ``melange2.store.sql.tables`` (style.md item 29)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, create_engine, inspect

from melange2.store.migrations import downgrade, upgrade
from melange2.store.sql.tables import metadata


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'migrated.db'}")
    try:
        yield engine
    finally:
        engine.dispose()


def _schema(conn: Connection) -> dict[str, Any]:
    """Tables, columns, keys, indexes and checks, as the database reports them."""
    inspector = inspect(conn)
    schema: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        if table == "alembic_version":
            continue
        schema[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)
            ],
            "pk": inspector.get_pk_constraint(table),
            "fks": sorted(
                (
                    fk["name"],
                    tuple(fk["constrained_columns"]),
                    fk["referred_table"],
                    tuple(fk["referred_columns"]),
                    fk["options"].get("ondelete"),
                )
                for fk in inspector.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), i["unique"])
                for i in inspector.get_indexes(table)
            ),
            "checks": sorted(
                (c["name"], c["sqltext"]) for c in inspector.get_check_constraints(table)
            ),
        }
    return schema


def _foreign_key(fk: Any) -> tuple[Any, ...]:
    return (
        fk["name"],
        tuple(fk["constrained_columns"]),
        fk["referred_table"],
        tuple(fk["referred_columns"]),
        fk["options"].get("ondelete"),
    )


def _migrate(engine: Engine, *, to: str = "head") -> None:
    with engine.begin() as conn:
        upgrade(conn, to)


def test_upgrade_head_matches_metadata(engine: Engine, tmp_path: Path) -> None:
    _migrate(engine)
    models = create_engine(f"sqlite:///{tmp_path / 'models.db'}")
    try:
        metadata.create_all(models)
        with engine.connect() as migrated, models.connect() as created:
            assert _schema(migrated) == _schema(created)
            assert set(_schema(migrated)) == {"builds", "packages", "attempts", "backends"}
            assert compare_metadata(MigrationContext.configure(migrated), metadata) == []
    finally:
        models.dispose()


def test_downgrade_base_then_upgrade_head(engine: Engine) -> None:
    _migrate(engine)
    with engine.begin() as conn:
        downgrade(conn, "base")
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    _migrate(engine)
    with engine.connect() as conn:
        assert {"builds", "packages", "attempts", "backends"} <= set(
            inspect(conn).get_table_names()
        )


def test_upgrade_is_idempotent(engine: Engine) -> None:
    _migrate(engine)
    _migrate(engine)
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() is not None
