"""The supervisor of the server's side tasks: the first to end while the server runs
marks it failed with the reason and calls on_failure once; stopping is no failure."""

from __future__ import annotations

import asyncio

import pytest

from melange2.service.supervisor import Supervisor

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _failed(supervisor: Supervisor) -> None:
    async with asyncio.timeout(5):
        while True:
            if supervisor.failure is not None:
                return
            await asyncio.sleep(0.01)


async def test_a_task_that_dies_fails_the_server_with_the_reason() -> None:
    calls: list[str] = []
    supervisor = Supervisor(on_failure=calls.append)
    forever = asyncio.Event()

    async def dies() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("the store went away")

    supervisor.start("the scheduler", dies())
    supervisor.start("the probes", forever.wait())
    await _failed(supervisor)
    assert supervisor.failure == "the scheduler failed: RuntimeError: the store went away"
    assert calls == [supervisor.failure]
    await supervisor.aclose(forever.set)
    assert calls == [supervisor.failure]  # once


async def test_a_task_that_returns_is_a_failure_too() -> None:
    supervisor = Supervisor()
    supervisor.start("the probes", asyncio.sleep(0))
    await _failed(supervisor)
    assert supervisor.failure == "the probes stopped"


async def test_stopping_is_not_a_failure() -> None:
    calls: list[str] = []
    supervisor = Supervisor(on_failure=calls.append)
    stop = asyncio.Event()
    supervisor.start("loop", stop.wait())

    async def stuck() -> None:
        await asyncio.Event().wait()

    supervisor.start("stuck", stuck())
    await supervisor.aclose(stop.set, grace=0.1)  # the stuck one is cancelled
    assert supervisor.failure is None and calls == []
