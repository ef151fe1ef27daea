"""The source cache (melange's ``sha256:<hex>`` files): uploads checked as they stream,
a file whose content is not what its name says never used, and the digests a
config's fetch steps expect found at compile time."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from melange2.build.source_cache import (
    DigestMismatch,
    SourceCache,
    SourceTooLarge,
    cache_image,
    parse_digest,
)
from melange2.errors import RequestError
from melange2.oci.registry import RegistryClient
from melange2.platform import Platform
from melange2.recipe import load_config
from melange2.recipe.compile import compile_build

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


DATA = b"a release tarball, or what passes for one\n" * 1000
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


async def chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_digests_are_checked_for_form() -> None:
    assert parse_digest(DIGEST.upper().replace("SHA256", "sha256")) == DIGEST
    for bad in ("sha256:abc", "md5:" + "0" * 32, "../etc/passwd", "sha256:" + "g" * 64):
        with pytest.raises(RequestError, match="not a source digest"):
            parse_digest(bad)


async def test_an_upload_is_stored_under_its_digest_in_melanges_layout(tmp_path: Path) -> None:
    cache = SourceCache.open(tmp_path / "cache", work_dir=tmp_path / "work")
    try:
        assert not await cache.has(DIGEST)
        assert await cache.add_stream(DIGEST, chunks(DATA), limit=len(DATA)) == len(DATA)
        assert (tmp_path / "cache" / DIGEST).read_bytes() == DATA
        assert await cache.verified(DIGEST) == tmp_path / "cache" / DIGEST
        assert list((tmp_path / "work").iterdir()) == []  # nothing left behind
    finally:
        await cache.aclose()


async def test_an_upload_with_another_digest_or_too_large_is_refused(tmp_path: Path) -> None:
    cache = SourceCache.open(tmp_path / "cache", work_dir=tmp_path / "work")
    other = "sha256:" + "0" * 64
    try:
        with pytest.raises(DigestMismatch, match=f"not {other}"):
            await cache.add_stream(other, chunks(DATA), limit=len(DATA))
        with pytest.raises(SourceTooLarge, match="limit of 100 bytes"):
            await cache.add_stream(DIGEST, chunks(DATA), limit=100)
        assert not await cache.has(other) and not await cache.has(DIGEST)
        assert [p.name for p in (tmp_path / "work").iterdir()] == []
    finally:
        await cache.aclose()


async def test_a_file_whose_content_is_not_its_name_is_never_used(tmp_path: Path) -> None:
    cache = SourceCache.open(tmp_path / "cache")
    try:
        (tmp_path / "cache" / DIGEST).write_bytes(b"something else entirely")
        assert await cache.verified(DIGEST) is None
        # put right, it is used; changed again behind the cache's back, it is not
        (tmp_path / "cache" / DIGEST).write_bytes(DATA)
        assert await cache.verified(DIGEST) is not None
        (tmp_path / "cache" / DIGEST).write_bytes(DATA[:-1] + b"?")
        assert await cache.verified(DIGEST) is None
        assert await cache.verified("sha256:" + "1" * 64) is None  # not there at all
    finally:
        await cache.aclose()


async def test_the_digests_the_cache_lacks_are_named(tmp_path: Path) -> None:
    # none found: no image is made (the registry, which answers nobody, is not asked)
    cache = SourceCache.open(tmp_path / "cache")
    lacking = ["sha256:" + "1" * 64, "SHA512:" + "2" * 128]
    try:
        (tmp_path / "cache" / DIGEST).write_bytes(b"something else entirely")
        async with RegistryClient("127.0.0.1:1", retries=0) as registry:
            found = await cache_image(
                cache, [DIGEST, *lacking, "sha256:short"], Platform.from_arch("x86_64"), registry
            )
        assert found.image is None
        # a file that is not what its name says is lacking too; a malformed digest is
        # fetch's to name
        assert found.missing == (DIGEST, *(d.lower() for d in lacking))
    finally:
        await cache.aclose()


async def test_add_file_names_it_by_its_sha256(tmp_path: Path) -> None:
    cache = SourceCache.open(tmp_path / "cache")
    try:
        src = tmp_path / "hello-2.12.tar.gz"
        src.write_bytes(DATA)
        assert await cache.add_file(src) == DIGEST
        assert (tmp_path / "cache" / DIGEST).read_bytes() == DATA
    finally:
        await cache.aclose()


def test_the_build_plan_names_the_digests_its_fetches_expect(tmp_path: Path) -> None:
    config = tmp_path / "pkg.yaml"
    config.write_text(
        "package:\n  name: pkg\n  version: 1.0.0\n  description: d\n"
        "environment:\n  contents:\n    packages: [busybox]\n"
        "pipeline:\n"
        "  - uses: fetch\n    with:\n      uri: https://example.org/pkg-${{package.version}}.tgz\n"
        f"      expected-sha256: {DIGEST.split(':')[1].upper()}\n"
        "  - uses: fetch\n    with:\n      uri: https://example.org/other.tgz\n"
        "      expected-sha512: " + "ab" * 64 + "\n"
        "  - runs: echo built\n"
    )
    plan = compile_build(load_config(config, arch="x86_64"))
    assert plan.source_digests == (DIGEST, "sha512:" + "ab" * 64)
