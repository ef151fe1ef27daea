"""Alembic's head equals the tables in ``melange2.store.sql.tables`` (style.md item 29),
on SQLite and on PostgreSQL (a real server: ``tests/postgres_fixtures.py``): one history
for both dialects."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    insert,
    inspect,
    select,
)
from sqlalchemy.pool import NullPool

from melange2.ids import BuildId
from melange2.jobs import Attempt
from melange2.store.migrations import downgrade, upgrade
from melange2.store.sql import queries
from melange2.store.sql.postgres import postgres_url
from melange2.store.sql.tables import UTCDateTime, metadata
from melange2.testenv.postgres import PostgresCluster


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str], Engine]]:
    """Makes sync engines on new, empty databases of one dialect (each test runs on both)."""
    engines: list[Engine] = []
    dropped: list[str] = []

    def make(name: str) -> Engine:
        if request.param == "sqlite":
            engine = create_engine(f"sqlite:///{tmp_path / f'{name}.db'}")
        else:
            cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
            database = f"migration_{name}"
            cluster.drop_database(database)
            dropped.append(database)
            dsn = cluster.create_database(database)
            engine = create_engine(postgres_url(dsn), poolclass=NullPool)
        engines.append(engine)
        return engine

    try:
        yield make
    finally:
        for engine in engines:
            engine.dispose()
        if dropped:
            cluster = request.getfixturevalue("postgres_cluster")
            for database in dropped:
                cluster.drop_database(database)


@pytest.fixture
def engine(empty_database: Callable[[str], Engine]) -> Engine:
    """An empty database to migrate."""
    return empty_database("migrated")


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
                (i["name"], tuple(i["column_names"]), bool(i["unique"]), _where(i))
                for i in inspector.get_indexes(table)
            ),
            "checks": sorted(
                (c["name"], c["sqltext"]) for c in inspector.get_check_constraints(table)
            ),
        }
    return schema


def _where(index: Any) -> str:
    """A partial index's condition, as the database keeps it ('' for a whole index)."""
    options = index.get("dialect_options", {})
    clause = options.get("sqlite_where", options.get("postgresql_where"))
    return "" if clause is None else " ".join(str(clause).lower().replace('"', "").split())


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


def test_upgrade_head_matches_metadata(
    engine: Engine, empty_database: Callable[[str], Engine]
) -> None:
    _migrate(engine)
    models = empty_database("models")
    metadata.create_all(models)
    with engine.connect() as migrated, models.connect() as created:
        assert _schema(migrated) == _schema(created)
        assert set(_schema(migrated)) == {"builds", "packages", "backends", "tokens", "replicas"}
        assert compare_metadata(MigrationContext.configure(migrated), metadata) == []


def test_downgrade_base_then_upgrade_head(engine: Engine) -> None:
    _migrate(engine)
    with engine.begin() as conn:
        downgrade(conn, "base")
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    _migrate(engine)
    with engine.connect() as conn:
        assert {"builds", "packages", "backends", "tokens"} <= set(inspect(conn).get_table_names())


def test_upgrade_is_idempotent(engine: Engine) -> None:
    _migrate(engine)
    _migrate(engine)
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() is not None


# the r0002 schema's rows, for the data a migration must carry
_r0002 = MetaData()
_r0002_builds = Table(
    "builds",
    _r0002,
    Column("id", Text),
    Column("status", Text),
    Column("spec", JSON),
    Column("created_at", UTCDateTime),
    Column("cancel_requested", Boolean),
)
_r0002_packages = Table(
    "packages",
    _r0002,
    *(Column(n, Text) for n in ("build_id", "name", "status", "config_yaml", "arch")),
    *(Column(n, Text) for n in ("reason", "error", "log_path", "output_path", "lease_owner")),
    Column("seq", Integer),
    Column("dependencies", JSON),
    Column("priority", Float),
)
_r0002_attempts = Table(
    "attempts",
    _r0002,
    *(Column(n, Text) for n in ("build_id", "name", "backend", "error", "log_path")),
    Column("number", Integer),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
)

ATTEMPT_FIELDS = [f.name for f in fields(Attempt)]
T0 = datetime(2026, 11, 30, 12, 0, 0, 123_456, tzinfo=UTC)
ATTEMPTS = (
    Attempt(number=1, backend="tcp://a:1", started_at=T0, finished_at=T0, error="gone"),
    Attempt(number=2, backend="tcp://b:1", started_at=T0 + timedelta(seconds=5), log_path="l"),
)


def test_r0004_moves_attempts_into_packages_and_back(engine: Engine) -> None:
    _migrate(engine, to="0003")
    with engine.begin() as conn:
        conn.execute(
            insert(_r0002_builds),
            [
                {
                    "id": "b1",
                    "status": "running",
                    "spec": {},
                    "created_at": T0,
                    "cancel_requested": False,
                }
            ],
        )
        package = {
            "build_id": "b1", "status": "running", "config_yaml": "", "arch": "x86_64",
            "reason": "", "error": "", "log_path": "", "output_path": "", "lease_owner": "",
            "seq": 0, "dependencies": [], "priority": 1.0,
        }  # fmt: skip
        conn.execute(insert(_r0002_packages), [{**package, "name": n} for n in ("p", "q")])
        conn.execute(
            insert(_r0002_attempts),
            [
                {"build_id": "b1", "name": "p", **{f: getattr(a, f) for f in ATTEMPT_FIELDS}}
                for a in reversed(ATTEMPTS)
            ],
        )

    _migrate(engine)
    with engine.connect() as conn:
        build = queries.fetch_build(conn, BuildId("b1"))
    assert build is not None
    assert {j.name: j.attempts for j in build.packages} == {"p": ATTEMPTS, "q": ()}

    with engine.begin() as conn:
        downgrade(conn, "0003")
    with engine.connect() as conn:
        rows = conn.execute(select(_r0002_attempts).order_by(_r0002_attempts.c.number))
        back = [{f: row[f] for f in ATTEMPT_FIELDS} for row in rows.mappings()]
    assert back == [{f: getattr(a, f) for f in ATTEMPT_FIELDS} for a in ATTEMPTS]
