"""melange-server with ``--store postgres`` end to end: a real server process on the
session's PostgreSQL cluster (``tests/postgres_fixtures.py``), the real farm's buildkitd.
A dependency-ordered build runs to success on an empty database (the server migrates
it), and the restarted server finds the build and its packages in the database, with no
SQLite file in its data directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from melange2.farm.local import FarmEnv
from melange2.ids import BuildId
from melange2.jobs import BuildStatus, PackageStatus
from melange2.store import SQLITE_FILENAME, PostgresStore
from tests.integration.test_server_e2e import Server, by_name, config, submit, wait

pytestmark = pytest.mark.e2e


def test_a_dag_build_on_postgres_survives_a_restart(
    farm: FarmEnv, postgres_empty_dsn: str, tmp_path: Path
) -> None:
    args = ["--store", "postgres", "--postgres-dsn", postgres_empty_dsn]
    srv = Server(farm, tmp_path, extra_args=args)
    srv.start()
    try:
        with srv.client() as client:
            build_id = submit(
                client,
                configs=[config("pg-app", needs=("pg-lib",)), config("pg-lib")],
                mode="dag",
            )
            build = wait(client, build_id)
            assert build["status"] == "success", build
            p = by_name(build)
            assert p["pg-lib"]["finished_at"] <= p["pg-app"]["started_at"]
            assert p["pg-app"]["dependencies"] == ["pg-lib"]
        srv.stop()
        assert not (tmp_path / "data" / SQLITE_FILENAME).exists()
        srv.start()
        with srv.client() as client:
            listed = client.get("/api/v1/builds").json()["builds"]
            assert [b["id"] for b in listed] == [build_id]
            again = client.get(f"/api/v1/builds/{build_id}").json()
            assert again["status"] == "success"
            assert {n: q["status"] for n, q in by_name(again).items()} == {
                "pg-lib": "success",
                "pg-app": "success",
            }
    finally:
        srv.stop()

    async def stored() -> None:
        async with await PostgresStore.open(postgres_empty_dsn) as store:
            kept = await store.get_build(BuildId(build_id))
        assert kept.status is BuildStatus.SUCCESS
        assert all(j.status is PackageStatus.SUCCESS for j in kept.packages)
        assert all(len(j.attempts) == 1 and j.attempts[0].finished_at for j in kept.packages)

    asyncio.run(stored())
