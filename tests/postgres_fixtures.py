"""PostgreSQL fixtures: one throwaway cluster per session (``initdb`` in a temp dir, a
unix socket only, run as an unprivileged user when we are root), a template database
migrated to head once, and per test a clone of it (``CREATE DATABASE ... TEMPLATE``, a
file copy of a few tens of milliseconds) dropped afterwards. The cluster is stopped and
removed at the end of the session, also when tests fail
(:mod:`melange2.testenv.postgres`).

Without PostgreSQL's binaries the tests that need them skip with the reason, unless
``REQUIRE_REAL_PARTS=1`` or ``REQUIRE_BUILDKIT=1`` (as CI sets): then they fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count

import pytest

from melange2.testenv.postgres import PostgresCluster, migrated_template, missing_postgres
from melange2.testenv.require import require_real_part

_numbers = count()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A running throwaway cluster for the session."""
    missing = missing_postgres()
    if missing:
        require_real_part("run PostgreSQL", missing)
    with PostgresCluster.create() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_template(postgres_cluster: PostgresCluster) -> str:
    """The name of a database at the store's head, to clone."""
    return migrated_template(postgres_cluster)


def _database(cluster: PostgresCluster, template: str | None) -> Iterator[str]:
    name = f"test_{next(_numbers):05d}"
    dsn = cluster.create_database(name, template=template)
    try:
        yield dsn
    finally:
        cluster.drop_database(name)


@pytest.fixture
def postgres_dsn(postgres_cluster: PostgresCluster, postgres_template: str) -> Iterator[str]:
    """The DSN of a fresh database already at the store's head, dropped after the test."""
    yield from _database(postgres_cluster, postgres_template)


@pytest.fixture
def postgres_empty_dsn(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """The DSN of a fresh, empty database (no schema), dropped after the test."""
    yield from _database(postgres_cluster, None)
