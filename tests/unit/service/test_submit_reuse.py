"""Reuse at submission is an optimisation: when the storage fails while it is decided or
while the artifacts are linked, the submission goes on and the packages are built. The
runner here is a fake (unit test only); the real path is tested end to end in
tests/integration/test_reuse_e2e.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import pytest

from melange2.ids import BuildId
from melange2.jobs import BuildSpec
from melange2.service.reuse import ReuseRecord
from melange2.service.runner import BuildkitRunner, Reusable
from melange2.service.submit import Submitter
from melange2.storage import StorageError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FailingRunner:
    """A fake runner whose storage fails (unit test only)."""

    def __init__(self) -> None:
        self.forgotten: list[tuple[str, list[str]]] = []

    async def reusable(self, *args: Any) -> dict[str, Reusable]:
        raise StorageError("bucket unreachable")

    async def adopt(self, build_id: str, reused: Mapping[str, ReuseRecord]) -> dict[str, str]:
        raise StorageError("an artifact vanished")

    async def forget_artifacts(self, build_id: str, names: Sequence[str]) -> None:
        self.forgotten.append((build_id, list(names)))


def _submitter(runner: FailingRunner) -> Submitter:
    return Submitter(
        cast(Any, None),
        cast(Any, None),
        cast(Any, None),
        cast(Any, None),
        cast(BuildkitRunner, runner),
    )


async def test_a_failing_link_means_building_and_leaves_no_artifacts() -> None:
    runner = FailingRunner()
    record = ReuseRecord(
        input_digest="sha256:" + "a" * 64,
        arch="x86_64",
        build_id="bld-0011223344556677",
        package="a",
        artifacts="bld-0011223344556677-a",
        records=(),
    )
    adopted = await _submitter(runner)._adopt(
        BuildId("bld-0000000000000009"), {"a": Reusable(record=record, installs=frozenset())}
    )
    assert adopted == {}
    assert runner.forgotten == [("bld-0000000000000009", ["a"])]


async def test_a_failing_storage_while_deciding_means_building() -> None:
    found = await _submitter(FailingRunner())._reusable(
        "x86_64", BuildSpec(), [], cast(Any, None), {}, {}
    )
    assert found == {}
