"""The store contract against every implementation (memory, SQLite, PostgreSQL on a real
server: ``tests/postgres_fixtures.py``), and a random-walk check that the memory fake
and each SQL store agree with a model built from ``ALLOWED_TRANSITIONS``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from itertools import count
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import make_url
from sqlalchemy.exc import IntegrityError

from melange2.errors import (
    ConfigError,
    InvalidTransition,
    StoreConflict,
    StoreError,
    StoreUnavailable,
)
from melange2.ids import BuildId
from melange2.jobs import ALLOWED_TRANSITIONS, Backend, PackageStatus
from melange2.store import JobStore, MemoryStore, PostgresStore, SqliteStore, open_store
from melange2.store.base import Move
from melange2.testenv.contracts import StoreContract
from melange2.testenv.contracts.store import T0, make_build
from melange2.testenv.postgres import PostgresCluster


class TestMemoryStore(StoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[JobStore]:
        async with MemoryStore() as store:
            yield store


class TestSqliteStore(StoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[JobStore]:
        async with await SqliteStore.open(tmp_path / "store.db") as store:
            yield store


class TestOpenStore(StoreContract):
    """The factory's SQLite store, reopened: the contract still holds on a migrated file."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[JobStore]:
        async with open_store("sqlite", data_dir=tmp_path / "data") as first:
            assert isinstance(first, SqliteStore)
        async with open_store("sqlite", data_dir=tmp_path / "data") as store:
            yield store


class TestPostgresStore(StoreContract):
    """A clone of the migrated template per test, opened (and so migrated: a no-op at head)
    through the factory, as the server opens it."""

    @pytest.fixture
    async def store(self, postgres_dsn: str) -> AsyncIterator[JobStore]:
        async with open_store("postgres", dsn=postgres_dsn) as store:
            assert isinstance(store, PostgresStore)
            yield store

    @pytest.fixture
    def supports_listen_notify(self) -> bool:
        return True


@pytest.mark.anyio
async def test_open_store_memory_and_config_errors(tmp_path: Path) -> None:
    async with open_store("memory", data_dir=None) as store:
        assert isinstance(store, MemoryStore)
    with pytest.raises(StoreError):
        await store.list_backends()  # closed on exit
    with pytest.raises(ConfigError):
        async with open_store("sqlite", data_dir=None):
            pass
    with pytest.raises(ConfigError, match="needs a DSN"):
        async with open_store("postgres", data_dir=tmp_path):
            pass
    for dsn in ("not a url", "mysql://db/x", "postgresql://db"):
        with pytest.raises(ConfigError, match="DSN"):
            async with open_store("postgres", dsn=dsn):
                pass
    with pytest.raises(ConfigError):
        async with open_store("oracle", data_dir=tmp_path):  # type: ignore[arg-type]
            pass


@pytest.mark.anyio
async def test_postgres_migrates_an_empty_database_at_open(postgres_empty_dsn: str) -> None:
    async with await PostgresStore.open(postgres_empty_dsn) as store:
        await store.create_build(make_build("bld-fresh"))
    async with await PostgresStore.open(postgres_empty_dsn) as store:  # at head: no-op
        assert (await store.get_build(BuildId("bld-fresh"))).id == "bld-fresh"


@pytest.mark.anyio
async def test_postgres_replicas_opening_together_migrate_once(postgres_empty_dsn: str) -> None:
    opened = await asyncio.gather(*(PostgresStore.open(postgres_empty_dsn) for _ in range(4)))
    try:
        await opened[0].create_build(make_build("bld-shared"))
        for store in opened:
            assert (await store.get_build(BuildId("bld-shared"))).id == "bld-shared"
    finally:
        for store in opened:
            await store.aclose()


@pytest.mark.anyio
async def test_postgres_unreachable_and_lost_connections_are_store_unavailable(
    postgres_cluster: PostgresCluster, postgres_dsn: str, tmp_path: Path
) -> None:
    nowhere = f"postgresql://melange2@/nothing?host={tmp_path}&connect_timeout=1"
    with pytest.raises(StoreUnavailable) as caught:
        await PostgresStore.open(nowhere)
    assert caught.value.__cause__ is not None  # the driver's error, kept
    assert "password" not in str(caught.value)

    async with await PostgresStore.open(postgres_dsn) as store:
        await store.create_build(make_build("bld-cut"))
        database = make_url(postgres_dsn).database
        postgres_cluster.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        with pytest.raises(StoreUnavailable) as lost:
            await store.get_build(BuildId("bld-cut"))
        assert lost.value.__cause__ is not None
        # the pool dropped the dead connections: the next call reconnects
        assert (await store.get_build(BuildId("bld-cut"))).id == "bld-cut"
        # a move runs on the driver's cursor itself: losing it is the same error
        start = Move(build_id=BuildId("bld-cut"), name="a", to=PackageStatus.RUNNING)
        assert (await store.apply([start]))[0] is not None  # its connection is open
        postgres_cluster.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        end = Move(build_id=BuildId("bld-cut"), name="a", to=PackageStatus.SUCCESS)
        with pytest.raises(StoreUnavailable) as lost:
            await store.apply([end])
        assert lost.value.__cause__ is not None
        moved = await store.apply([end])
        assert moved[0] is not None and moved[0].status is PackageStatus.SUCCESS


@pytest.mark.anyio
async def test_sqlite_move_refused_by_the_database_is_a_conflict(tmp_path: Path) -> None:
    # a NOT NULL column given NULL: the driver's error, raised from a move's own
    # statement, maps as any other; the store's connection goes on
    async with await SqliteStore.open(tmp_path / "m.db") as store:
        build = make_build("bld-notnull", names=("a", "b"))
        await store.create_build(build)
        bad = Move(build_id=build.id, name="a", to=PackageStatus.RUNNING, fields={"arch": None})
        with pytest.raises(StoreConflict) as refused:
            await store.apply([bad])
        assert isinstance(refused.value.__cause__, IntegrityError)
        assert await store.get_build(build.id) == build
        moved = await store.apply([Move(build_id=build.id, name="b", to=PackageStatus.RUNNING)])
        assert moved[0] is not None and moved[0].status is PackageStatus.RUNNING


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgres"])
async def stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[JobStore, JobStore]]:
    """The memory fake beside one SQL store."""
    memory = MemoryStore()
    sql: JobStore
    if request.param == "sqlite":
        sql = await SqliteStore.open(tmp_path / "walk.db")
    else:
        sql = await PostgresStore.open(request.getfixturevalue("postgres_dsn"))
    try:
        yield memory, sql
    finally:
        await sql.aclose()
        await memory.aclose()


NAMES = ("a", "b", "c")
_build_numbers = count()

steps = st.lists(
    st.tuples(
        st.sampled_from(NAMES),
        st.sampled_from(list(PackageStatus)),
        st.none() | st.frozensets(st.sampled_from(list(PackageStatus))),
    ),
    max_size=25,
)


@pytest.mark.anyio
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(start=st.sampled_from([PackageStatus.BLOCKED, PackageStatus.PENDING]), walk=steps)
async def test_random_transitions_agree_with_the_model(
    stores: tuple[JobStore, JobStore],
    start: PackageStatus,
    walk: list[tuple[str, PackageStatus, frozenset[PackageStatus] | None]],
) -> None:
    # a fresh build per example: the stores live for the whole test
    build_id = BuildId(f"bld-walk-{next(_build_numbers):06d}")
    build = make_build(build_id, names=NAMES, package_status=start)
    model = dict.fromkeys(NAMES, start)
    for store in stores:
        await store.create_build(build)

    for name, to, expect in walk:
        allowed = to in ALLOWED_TRANSITIONS[model[name]] and (
            expect is None or model[name] in expect
        )
        for store in stores:
            if allowed:
                moved = await store.transition(build_id, name, to, expect=expect)
                assert moved.status == to
            else:
                with pytest.raises(InvalidTransition):
                    await store.transition(build_id, name, to, expect=expect)
        if allowed:
            model[name] = to

    memory, sql = stores
    got_memory = await memory.get_build(build_id)
    got_sql = await sql.get_build(build_id)
    assert {j.name: j.status for j in got_memory.packages} == model
    assert got_sql == got_memory


@pytest.mark.anyio
async def test_postgres_named_lock_excludes_across_stores_on_one_database(
    postgres_dsn: str,
) -> None:
    """Two stores (two replicas) on one database: one holder of a name at a time, while
    other names are free."""
    first = await PostgresStore.open(postgres_dsn)
    second = await PostgresStore.open(postgres_dsn)
    try:
        inside: list[str] = []
        most = 0

        async def hold(store: PostgresStore, who: str) -> None:
            nonlocal most
            for _ in range(5):
                async with store.hold_lock("publish:repo/x86_64"):
                    inside.append(who)
                    most = max(most, len(inside))
                    await asyncio.sleep(0.01)
                    inside.remove(who)

        await asyncio.wait_for(asyncio.gather(hold(first, "a"), hold(second, "b")), 60)
        assert most == 1
        async with first.hold_lock("publish:repo/x86_64"):
            # another name is free on the other store meanwhile
            async with asyncio.timeout(10), second.hold_lock("publish:repo/aarch64"):
                pass
            waiting = asyncio.create_task(_enter(second, "publish:repo/x86_64"))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # still held by the first store
        await asyncio.wait_for(waiting, 10)
    finally:
        await first.aclose()
        await second.aclose()


async def _enter(store: JobStore, name: str) -> None:
    async with store.hold_lock(name):
        pass


@pytest.mark.anyio
async def test_postgres_named_lock_is_released_when_its_holders_connection_dies(
    postgres_cluster: PostgresCluster, postgres_dsn: str
) -> None:
    from melange2.store.sql.postgres import lock_keys

    holder = await PostgresStore.open(postgres_dsn)
    other = await PostgresStore.open(postgres_dsn)
    try:
        held = asyncio.Event()
        release = asyncio.Event()

        async def hold() -> None:
            async with holder.hold_lock("publish:repo/x86_64"):
                held.set()
                await release.wait()

        task = asyncio.create_task(hold())
        await asyncio.wait_for(held.wait(), 10)
        waiting = asyncio.create_task(_enter(other, "publish:repo/x86_64"))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        classid, objid = lock_keys("publish:repo/x86_64")
        # the holder's session dies (a crashed replica, a cut network)
        postgres_cluster.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_locks WHERE "
            f"locktype = 'advisory' AND classid = {classid & 0xFFFFFFFF} "
            f"AND objid = {objid & 0xFFFFFFFF} AND objsubid = 2 AND granted"
        )
        await asyncio.wait_for(waiting, 10)  # the other store got it
        release.set()
        await asyncio.wait_for(task, 10)  # the dead holder's exit does not raise
        async with asyncio.timeout(10), holder.hold_lock("publish:repo/x86_64"):
            pass  # and its store takes it again on a fresh connection
    finally:
        await holder.aclose()
        await other.aclose()


@pytest.mark.anyio
async def test_sqlite_rows_read_alike_share_nothing_mutable(tmp_path: Path) -> None:
    # a round's starts store the same backend and times: the rows read back give equal
    # values, but no package's backend labels are another's
    async with await SqliteStore.open(tmp_path / "r.db") as store:
        build = make_build("bld-alike", names=("a", "b", "c"))
        await store.create_build(build)
        backend = Backend(addr="tcp://b:1", arch="x86_64", labels={"k": "v"})
        moves = [
            Move(
                build_id=build.id,
                name=name,
                to=PackageStatus.RUNNING,
                fields={"backend": backend, "started_at": T0, "dependencies": ("x",)},
            )
            for name in ("a", "b", "c")
        ]
        moved = [j for j in await store.apply(moves) if j is not None]
        read = (await store.get_build(build.id)).packages
        jobs = [*moved, *read]
        assert all(j.backend == backend and j.started_at == T0 for j in jobs)
        assert all(j.dependencies == ("x",) for j in jobs)
        labels = [j.backend.labels for j in jobs if j.backend is not None]
        assert len({id(x) for x in labels}) == len(jobs) == 6
        assert all(x is not backend.labels for x in labels)
