"""Storage fixtures: the emulators (one per session) and ``storage``, a fresh, checked
:class:`~melange2.storage.Storage` of each kind (local, memory, gcs, s3) per test.

GCS runs on fake-gcs-server (``.tools/bin``, built by ``make setup``), S3 on moto's
server. A missing emulator skips the tests that need it, with the reason, unless
``REQUIRE_REAL_PARTS=1`` or ``REQUIRE_BUILDKIT=1`` (as CI sets): then they fail.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from melange2.storage import Storage, StorageSpec, open_storage
from melange2.testenv.emulators import (
    FakeGcsServer,
    MotoS3Server,
    find_fake_gcs_server,
    find_moto_server,
)
from melange2.testenv.require import require_real_part

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools"

STORAGE_KINDS = ["local", "memory", "gcs", "s3"]
#: the key prefix inside the test buckets (storages keep it out of their keys)
BUCKET_PREFIX = "farm/t"


def _missing(what: str) -> NoReturn:
    require_real_part("test storage", [what])


def new_bucket_name() -> str:
    return f"t-{secrets.token_hex(6)}"


@pytest.fixture(scope="session")
def fake_gcs() -> Iterator[FakeGcsServer]:
    """fake-gcs-server on a loopback port, for the session."""
    binary = find_fake_gcs_server(TOOLS)
    if binary is None:
        _missing(f"{TOOLS}/bin/fake-gcs-server (run `make setup`)")
    with FakeGcsServer(binary) as server:
        yield server


def _moto() -> Path:
    binary = find_moto_server()
    if binary is None:
        _missing("moto_server (moto[server], a dev dependency: `uv sync`)")
    return binary


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3Server]:
    """moto's S3 server on a loopback port, for the session (credentials not checked)."""
    with MotoS3Server(_moto()) as server:
        yield server


@pytest.fixture(scope="session")
def moto_s3_auth() -> Iterator[MotoS3Server]:
    """A second moto server that checks credentials (and refuses the fake ones)."""
    with MotoS3Server(_moto(), auth=True) as server:
        yield server


def storage_spec(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> StorageSpec:
    """A spec of ``kind`` over fresh space: a new directory or bucket (with a prefix)."""
    if kind == "local":
        return StorageSpec(kind="local", path=tmp_path / "storage", retry_wait=0.01)
    if kind == "memory":
        return StorageSpec(kind="memory", retry_wait=0.01)
    bucket = new_bucket_name()
    if kind == "gcs":
        gcs: FakeGcsServer = request.getfixturevalue("fake_gcs")
        gcs.create_bucket(bucket)
        return gcs.storage_spec(bucket, prefix=BUCKET_PREFIX)
    if kind == "s3":
        s3: MotoS3Server = request.getfixturevalue("moto_s3")
        s3.create_bucket(bucket)
        return s3.storage_spec(bucket, prefix=BUCKET_PREFIX)
    raise ValueError(f"unknown storage kind {kind!r}")


@pytest.fixture(params=STORAGE_KINDS)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """A fresh storage of each kind, checked, closed after the test."""
    spec = storage_spec(request.param, request, tmp_path)
    store = open_storage(spec)
    try:
        await store.check()
        yield store
    finally:
        await store.aclose()
