"""RegistryClient retries what failed on the way and nothing that may have happened.
The registry here is a scripted httpx transport (a fake, for this unit test only); the
real registry is exercised end to end by the farm's tests."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from melange2.errors import RegistryError
from melange2.oci.registry import RegistryClient

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ScriptedRegistry:
    """Answers each request with the next entry of ``script`` (a status, or an exception
    to raise), then 200; records what it was asked."""

    def __init__(self, script: list[int | Callable[[httpx.Request], Exception]]) -> None:
        self.script = script
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request.method)
        step = self.script.pop(0) if self.script else 200
        if callable(step):
            raise step(request)
        return httpx.Response(step)


def _client(fake: ScriptedRegistry, retries: int = 4) -> RegistryClient:
    return RegistryClient(
        "registry.test", transport=httpx.MockTransport(fake), retries=retries, retry_wait=0.001
    )


async def test_reads_are_retried_on_errors_and_busy_answers() -> None:
    fake = ScriptedRegistry(
        [
            lambda r: httpx.ConnectError("refused", request=r),
            503,
            lambda r: httpx.ReadError("reset", request=r),
        ]
    )
    async with _client(fake) as reg:
        assert await reg.has_blob("env", "sha256:" + "0" * 64)
    assert fake.seen == ["HEAD"] * 4


async def test_a_write_is_retried_only_if_it_never_reached_the_registry() -> None:
    fake = ScriptedRegistry([lambda r: httpx.ConnectError("refused", request=r), 202])
    async with _client(fake) as reg:
        resp = await reg._request("POST", "/v2/env/blobs/uploads/")
    assert resp.status_code == 202 and fake.seen == ["POST", "POST"]

    fake = ScriptedRegistry([lambda r: httpx.ReadError("reset after sending", request=r)])
    async with _client(fake) as reg:
        with pytest.raises(RegistryError, match="reset after sending"):
            await reg._request("PUT", "/v2/env/manifests/x", content=b"{}")
    assert fake.seen == ["PUT"]

    fake = ScriptedRegistry([500])
    async with _client(fake) as reg:
        assert (await reg._request("PUT", "/v2/env/manifests/x", content=b"{}")).status_code == 500
    assert fake.seen == ["PUT"]


async def test_gives_up_after_the_last_try() -> None:
    fake = ScriptedRegistry([lambda r: httpx.ConnectError("refused", request=r)] * 5)
    async with _client(fake, retries=3) as reg:
        with pytest.raises(RegistryError, match="refused"):
            await reg.has_blob("env", "sha256:" + "0" * 64)
    assert len(fake.seen) == 3

    fake = ScriptedRegistry([503] * 5)
    async with _client(fake, retries=3) as reg:
        assert (await reg._request("GET", "/v2/")).status_code == 503  # the caller reports it
    assert len(fake.seen) == 3
