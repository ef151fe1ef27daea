"""The throwaway PostgreSQL cluster of :mod:`melange2.testenv.postgres`, as the local farm
and benchmarks will use it: a cluster kept in a directory across processes (started by
one object, found and stopped by another, data kept between starts, no TCP), and the
sweep that removes temporary clusters whose owner died. (The session cluster of the
other tests is the temporary kind: ``tests/postgres_fixtures.py``.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from melange2.testenv.postgres import PostgresCluster, missing_postgres, sweep_stale
from melange2.testenv.require import require_real_part


@pytest.fixture
def place() -> Iterator[Path]:
    """A directory the unprivileged user PostgreSQL runs as can reach (pytest's own temp
    dirs are private to root)."""
    missing = missing_postgres()
    if missing:
        require_real_part("run PostgreSQL", missing)
    root = Path(tempfile.mkdtemp(prefix="melange2-pgtest-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _databases(cluster: PostgresCluster) -> set[str]:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}


def test_a_kept_cluster_outlives_its_object_and_a_dead_owners_is_swept(place: Path) -> None:
    root = place / "melange2-pg-kept"
    first = PostgresCluster(root)
    first.start()
    try:
        assert first.running()
        first.create_database("kept")
        # no TCP: the only way in is the socket in root/run
        with psycopg.connect(first.dsn()) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
        assert (first.socket_dir / ".s.PGSQL.5432").is_socket()

        later = PostgresCluster(root)  # another process's view, by the files alone
        assert later.running()
        later.stop()
        assert not first.running()
        assert root.exists()  # not temporary: stopping keeps the data

        again = PostgresCluster(root)
        again.start()  # no second initdb
        assert "kept" in _databases(again)

        # the same directory as a temporary cluster whose owner died: swept, server and all
        child = subprocess.Popen([sys.executable, "-c", "pass"])
        child.wait()  # reaped: its pid names no process now
        (root / "owner.pid").write_text(f"{child.pid}\n")
        alive = place / "melange2-pg-alive"
        alive.mkdir()
        (alive / "owner.pid").write_text("1\n")  # init never dies
        assert sweep_stale(place) == [root]
        assert not root.exists()
        assert not again.running()
        assert alive.exists()
    finally:
        PostgresCluster(root).stop()
