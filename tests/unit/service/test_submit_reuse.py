"""Reuse at submission is an optimisation: when the storage fails while it is decided or
while the artifacts are linked, the submission goes on and the packages are built. The
reuse here is a fake behind the Submitter's protocol (unit test only); the real path is
tested end to end in tests/integration/test_reuse_e2e.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from melange2.ids import BuildId
from melange2.jobs import Build, BuildSpec
from melange2.pool.config import PoolConfig
from melange2.pool.pool import BackendPool
from melange2.scheduler.graph import build_graph
from melange2.service.reuse import Reusable, ReuseRecord, SubmittedPackage
from melange2.service.settings import ServerSettings
from melange2.service.submit import Submitter
from melange2.storage import StorageError
from melange2.store.memory import MemoryStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FailingReuse:
    """A fake reuse at submission whose storage fails (unit test only)."""

    def __init__(self) -> None:
        self.forgotten: list[tuple[str, list[str]]] = []

    async def find(
        self,
        spec: BuildSpec,
        packages: Sequence[SubmittedPackage],
        deps: Mapping[str, Sequence[str]],
        pipelines: Mapping[str, bytes],
    ) -> dict[str, Reusable]:
        raise StorageError("bucket unreachable")

    async def adopt(self, build_id: BuildId, reused: Mapping[str, Reusable]) -> dict[str, str]:
        raise StorageError("an artifact vanished")

    async def forget(self, build_id: BuildId, names: Sequence[str]) -> None:
        self.forgotten.append((build_id, list(names)))


class Queue:
    """Where submitted builds go (a fake scheduler: it keeps them)."""

    def __init__(self) -> None:
        self.builds: list[Build] = []

    async def submit(self, build: Build) -> None:
        self.builds.append(build)


def _submitter(reuse: FailingReuse) -> Submitter:
    return Submitter(
        ServerSettings(),
        MemoryStore(),
        Queue(),
        BackendPool.from_config(PoolConfig(backends=())),
        reuse,
    )


async def test_a_failing_link_means_building_and_leaves_no_artifacts() -> None:
    reuse = FailingReuse()
    record = ReuseRecord(
        input_digest="sha256:" + "a" * 64,
        arch="x86_64",
        build_id="bld-0011223344556677",
        package="a",
        artifacts="bld-0011223344556677-a",
        records=(),
    )
    adopted = await _submitter(reuse)._adopt(
        BuildId("bld-0000000000000009"), {"a": Reusable(record=record, installs=frozenset())}
    )
    assert adopted == {}
    assert reuse.forgotten == [("bld-0000000000000009", ["a"])]


async def test_a_failing_storage_while_deciding_means_building() -> None:
    submitter = _submitter(FailingReuse())
    found = await submitter._reusable(BuildSpec(), [], build_graph([]), {}, {})
    assert found == {}
