"""The store contract against every implementation, and a random-walk check that the
memory fake and SQLite agree with a model built from ``ALLOWED_TRANSITIONS``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from itertools import count
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melange2.errors import ConfigError, InvalidTransition, StoreError
from melange2.ids import BuildId
from melange2.jobs import ALLOWED_TRANSITIONS, PackageStatus
from melange2.store import JobStore, MemoryStore, SqliteStore, open_store
from melange2.testenv.contracts import StoreContract
from melange2.testenv.contracts.store import make_build


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


@pytest.mark.anyio
async def test_open_store_memory_and_config_errors(tmp_path: Path) -> None:
    async with open_store("memory", data_dir=None) as store:
        assert isinstance(store, MemoryStore)
    with pytest.raises(StoreError):
        await store.list_backends()  # closed on exit
    with pytest.raises(ConfigError):
        async with open_store("sqlite", data_dir=None):
            pass
    with pytest.raises(ConfigError):
        async with open_store("postgres", data_dir=tmp_path):  # type: ignore[arg-type]
            pass


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[JobStore, JobStore]]:
    memory = MemoryStore()
    sqlite = await SqliteStore.open(tmp_path / "walk.db")
    try:
        yield memory, sqlite
    finally:
        await sqlite.aclose()
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

    memory, sqlite = stores
    got_memory = await memory.get_build(build_id)
    got_sqlite = await sqlite.get_build(build_id)
    assert {j.name: j.status for j in got_memory.packages} == model
    assert got_sqlite == got_memory
