"""Retries and error mapping of :class:`Storage`, over a named fake filesystem that
fails as told, and the classification of the libraries' errors."""

from __future__ import annotations

import errno
import time
from typing import Any

import pytest
from fsspec.implementations.memory import MemoryFileSystem  # type: ignore[import-untyped]

from melange2.storage import Storage, StorageError, StorageNotFound
from melange2.storage.faults import is_denied, is_transient

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FlakyFileSystem(MemoryFileSystem):  # type: ignore[misc]
    """A memory filesystem of its own whose ``cat_file`` raises ``errors`` first, one
    per call, then works; it counts the calls."""

    def __init__(self, errors: list[BaseException], **kwargs: Any) -> None:
        super().__init__(global_store=False, **kwargs)
        self.errors = list(errors)
        self.calls = 0

    def cat_file(self, path: str, start: Any = None, end: Any = None, **kwargs: Any) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return super().cat_file(path, start, end, **kwargs)


class HttpStatusError(Exception):
    """Like aiohttp's ClientResponseError: an HTTP status in ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


async def flaky(*errors: BaseException, **retry: Any) -> tuple[Storage, FlakyFileSystem]:
    fs = FlakyFileSystem(list(errors), skip_instance_cache=True)
    storage = Storage(fs, "/t", kind="memory", **({"retry_wait": 0} | retry))
    await storage.put_bytes("pkg/x.apk", b"data")
    return storage, fs


async def test_transient_errors_are_retried_until_it_works() -> None:
    storage, fs = await flaky(ConnectionResetError("reset"), TimeoutError("slow"))
    assert await storage.read_bytes("pkg/x.apk") == b"data"
    assert fs.calls == 3


async def test_http_429_and_5xx_are_transient() -> None:
    storage, fs = await flaky(HttpStatusError(503), HttpStatusError(429))
    assert await storage.read_bytes("pkg/x.apk") == b"data"
    assert fs.calls == 3


async def test_not_found_is_not_retried() -> None:
    storage, fs = await flaky(FileNotFoundError("pkg/x.apk"))
    with pytest.raises(StorageNotFound, match=r"pkg/x\.apk") as info:
        await storage.read_bytes("pkg/x.apk")
    assert fs.calls == 1
    assert isinstance(info.value.__cause__, FileNotFoundError)


@pytest.mark.parametrize(
    "error",
    [PermissionError("denied"), ValueError("bad request"), HttpStatusError(403)],
    ids=["permission", "value", "http-403"],
)
async def test_final_errors_are_not_retried(error: BaseException) -> None:
    storage, fs = await flaky(error)
    with pytest.raises(StorageError) as info:
        await storage.read_bytes("pkg/x.apk")
    assert not isinstance(info.value, StorageNotFound)
    assert info.value.__cause__ is error
    assert fs.calls == 1


async def test_gives_up_after_the_attempts_naming_key_and_backend() -> None:
    errors = [ConnectionRefusedError("refused") for _ in range(10)]
    storage, fs = await flaky(*errors, retry_attempts=3)
    with pytest.raises(StorageError, match=r"/t: cannot read 'pkg/x.apk': Connection") as info:
        await storage.read_bytes("pkg/x.apk")
    assert fs.calls == 3
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


async def test_waits_grow_between_tries() -> None:
    storage, fs = await flaky(ConnectionError(), ConnectionError(), retry_wait=0.04)
    started = time.monotonic()
    assert await storage.read_bytes("pkg/x.apk") == b"data"
    assert time.monotonic() - started >= 0.04 + 0.08 - 0.01
    assert fs.calls == 3


def test_classification_of_library_errors() -> None:
    from botocore.exceptions import ClientError  # type: ignore[import-untyped]
    from gcsfs.retry import HttpError  # type: ignore[import-untyped]
    from s3fs.errors import translate_boto_error  # type: ignore[import-untyped]

    def boto(status: int, code: str) -> BaseException:
        error = ClientError(
            {
                "Error": {"Code": code, "Message": code},
                "ResponseMetadata": {"HTTPStatusCode": status},
            },
            "GetObject",
        )
        translated: BaseException = translate_boto_error(error)
        return translated

    slow_down = boto(503, "SlowDown")  # s3fs: OSError(EBUSY) caused by the ClientError
    assert isinstance(slow_down, OSError)
    assert slow_down.errno == errno.EBUSY
    assert is_transient(slow_down)
    assert is_transient(boto(500, "InternalError"))
    assert not is_transient(boto(404, "NoSuchKey"))  # FileNotFoundError
    denied = boto(403, "AccessDenied")
    assert not is_transient(denied)
    assert is_denied(denied)

    assert is_transient(HttpError({"code": 429, "message": "slow down"}))
    assert is_transient(HttpError({"code": 502, "message": "bad gateway"}))
    assert not is_transient(HttpError({"code": 400, "message": "bad"}))
    assert is_denied(HttpError({"code": 401, "message": "Invalid Credentials"}))

    wrapped = OSError("cannot connect")
    wrapped.__cause__ = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    assert is_transient(wrapped)
    assert not is_transient(OSError("something else"))
