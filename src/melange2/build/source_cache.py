"""melange's source cache: downloads kept under their digest, ``sha256:<hex>`` (or
``sha512:<hex>``), where a build's ``fetch`` looks before it downloads.

melange mounts its ``--cache-dir`` at ``/var/cache/melange`` and ``fetch`` copies
``/var/cache/melange/sha256:<expected-sha256>`` instead of downloading when it is there.
Here the cache is a :class:`~melange2.storage.Storage` (a directory in melange's own
layout, so the same directory serves melange and melange2, or a bucket), and it
reaches a build the way every other input does: the files a build's pipelines expect
(their ``expected-sha256``/``expected-sha512`` inputs, :attr:`BuildPlan.source_digests`)
go into a small image, mounted read-only at ``/var/cache/melange`` in every step
(:func:`cache_image`). Every daemon of a farm sees the same cache that way, local or
remote.

A file is only ever used after its content was checked against its name: a cached file
with another digest is left out (and logged), and ``fetch`` then downloads or fails
naming the URL; the build log names each expected digest the cache lacks
(:attr:`CachedSources.missing`). Uploads are checked while they stream
(:meth:`SourceCache.add_stream`) and refused when the digest differs or they grow over
the limit.

::

    cache = SourceCache.open("/var/cache/melange2-sources")    # or gs://b/p, s3://b/p
    await cache.add_file(Path("hello-2.12.tar.gz"))             # -> "sha256:cf04af86..."
    path = await cache.verified("sha256:cf04af86...")          # a checked local file, or None
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from melange2.errors import RequestError
from melange2.oci.image import (
    Blob,
    BuiltLayer,
    Entry,
    ImageRef,
    make_config,
    make_layer,
    make_manifest,
)
from melange2.oci.registry import RegistryClient
from melange2.platform import Platform
from melange2.storage import Storage, StorageNotFound, StorageSpec, open_storage

__all__ = [
    "CACHE_MOUNT",
    "CachedSources",
    "DigestMismatch",
    "SourceCache",
    "SourceTooLarge",
    "cache_image",
    "parse_digest",
]

#: where melange mounts its cache dir in a build
CACHE_MOUNT = "/var/cache/melange"
SOURCE_CACHE_REPO = "melange2/source-cache"
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
_log = logging.getLogger(__name__)


class DigestMismatch(RequestError):
    """The content does not have the digest it was sent under."""

    code = "digest_mismatch"


class SourceTooLarge(RequestError):
    """The upload is larger than the source cache accepts."""

    code = "source_too_large"


def parse_digest(text: str) -> str:
    """``sha256:<64 hex>`` or ``sha512:<128 hex>`` (lowercased), else :class:`RequestError`."""
    digest = text.strip().lower()
    if not _DIGEST.fullmatch(digest):
        raise RequestError(
            f"{text[:80]!r} is not a source digest: expected sha256:<64 hex digits> "
            "or sha512:<128 hex digits>"
        )
    return digest


def _hasher(digest: str) -> hashlib._Hash:
    return hashlib.sha256() if digest.startswith("sha256:") else hashlib.sha512()


@dataclass(frozen=True)
class _Stamp:
    size: int
    mtime_ns: int


class SourceCache:
    """A source cache over a storage; ``work_dir`` holds checked copies of bucket
    objects and uploads in progress."""

    def __init__(self, storage: Storage, *, work_dir: Path | None = None) -> None:
        self.storage = storage
        self.work_dir = work_dir or Path(tempfile.gettempdir()) / "melange2-source-cache"
        self._checked: dict[str, tuple[Path, _Stamp]] = {}
        #: images made this process, by (digests, platform): :func:`cache_image`
        self.images: dict[tuple[tuple[str, ...], str], ImageRef] = {}

    @classmethod
    def open(
        cls,
        location: str | Path,
        *,
        work_dir: Path | None = None,
        spec: StorageSpec | None = None,
    ) -> SourceCache:
        """A cache at a directory, ``gs://bucket[/prefix]`` or ``s3://bucket[/prefix]``;
        ``spec`` carries a bucket's endpoint and credentials (its kind, bucket and prefix
        are taken from ``location``)."""
        text = str(location)
        for scheme, kind in (("gs://", "gcs"), ("s3://", "s3")):
            if text.startswith(scheme):
                bucket, _, prefix = text.removeprefix(scheme).partition("/")
                base = spec or StorageSpec()
                storage = open_storage(
                    StorageSpec(
                        **{
                            **base.__dict__,
                            "kind": kind,
                            "bucket": bucket,
                            "prefix": prefix.strip("/"),
                        }
                    )
                )
                return cls(storage, work_dir=work_dir)
        path = Path(text).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return cls(open_storage(StorageSpec(kind="local", path=path)), work_dir=work_dir)

    def url(self) -> str:
        return self.storage.describe

    async def aclose(self) -> None:
        await self.storage.aclose()

    async def has(self, digest: str) -> bool:
        return await self.storage.exists(parse_digest(digest))

    async def verified(self, digest: str) -> Path | None:
        """A local file with the content ``digest`` names, or ``None`` when the cache
        has none (or holds something else under that name: never used)."""
        digest = parse_digest(digest)
        local = self.storage.local_path(digest)
        if local is not None:
            try:
                st = await asyncio.to_thread(local.stat)
            except OSError:
                return None
            stamp = _Stamp(size=st.st_size, mtime_ns=st.st_mtime_ns)
            known = self._checked.get(digest)
            if known is not None and known[1] == stamp:
                return local
            if await asyncio.to_thread(_file_digest, local, digest) != digest:
                _log.warning("source cache: %s does not hold what its name says: not used", local)
                return None
            self._checked[digest] = (local, stamp)
            return local
        copy = self.work_dir / "checked" / digest.replace(":", "-")
        known = self._checked.get(digest)
        if known is not None and copy.is_file():
            return copy
        try:
            await self.storage.get_file(digest, copy)
        except StorageNotFound:
            return None
        if await asyncio.to_thread(_file_digest, copy, digest) != digest:
            _log.warning(
                "source cache: %s does not hold what its name says: not used",
                self.storage.url(digest),
            )
            copy.unlink(missing_ok=True)
            return None
        st = copy.stat()
        self._checked[digest] = (copy, _Stamp(size=st.st_size, mtime_ns=st.st_mtime_ns))
        return copy

    async def add_file(self, path: Path, algorithm: str = "sha256") -> str:
        """Store ``path`` under its digest; return the digest."""
        digest = (
            f"{algorithm}:"
            + (await asyncio.to_thread(_file_digest, path, f"{algorithm}:")).split(":", 1)[1]
        )
        if not await self.storage.exists(digest):
            await self.storage.put_file(path, digest)
        return digest

    async def add_stream(self, digest: str, chunks: AsyncIterator[bytes], *, limit: int) -> int:
        """Store what ``chunks`` yields under ``digest``, checked as it streams (never
        held in memory whole): :class:`SourceTooLarge` past ``limit`` bytes,
        :class:`DigestMismatch` when the content has another digest; nothing is stored
        then. Returns the size."""
        digest = parse_digest(digest)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.work_dir, prefix=".upload-", suffix=".part")
        h = _hasher(digest)
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise SourceTooLarge(
                            f"source {digest[:19]}...: more than the limit of {limit} bytes"
                        )
                    h.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
            got = f"{digest.split(':', 1)[0]}:{h.hexdigest()}"
            if got != digest:
                raise DigestMismatch(
                    f"the body's digest is {got}, not {digest} as the path says: not stored"
                )
            await self.storage.put_file(Path(tmp), digest)
            self._checked.pop(digest, None)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return size


def _file_digest(path: Path, digest: str) -> str:
    h = _hasher(digest)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"{digest.split(':', 1)[0]}:{h.hexdigest()}"


@dataclass(frozen=True, slots=True)
class CachedSources:
    """What :func:`cache_image` found of a build's expected downloads."""

    #: the image of the files found (``None``: none was)
    image: ImageRef | None
    #: the digests the cache does not hold (their ``fetch`` downloads, or fails): the
    #: build log names them, since melange's ``fetch`` only names the URL
    missing: tuple[str, ...] = ()


async def cache_image(
    cache: SourceCache,
    digests: Sequence[str],
    platform: Platform,
    registry: RegistryClient,
) -> CachedSources:
    """An image holding the cached files among ``digests`` at its root, named as
    melange names them (``sha256:<hex>``), pushed by digest (``None`` when the cache
    has none of them), and the digests it lacks."""
    found: list[tuple[str, Path]] = []
    missing: list[str] = []
    for digest in dict.fromkeys(d.lower() for d in digests):
        if not _DIGEST.fullmatch(digest):
            continue  # fetch itself says what is wrong with it
        path = await cache.verified(digest)
        if path is not None:
            found.append((digest, path))
        else:
            missing.append(digest)
    if not found:
        return CachedSources(image=None, missing=tuple(missing))

    def build() -> tuple[BuiltLayer, Blob, Blob]:
        entries = [
            Entry(path=digest, kind="file", mode=0o644, data=path.read_bytes())
            for digest, path in found
        ]
        layer = make_layer(entries)
        config = make_config(platform, [layer], env=[], cmd=[])
        return layer, config, make_manifest(config, [layer])

    memo = (tuple(d for d, _ in found), str(platform))
    known = cache.images.get(memo)
    if known is not None and known.host == registry.host:
        return CachedSources(image=known, missing=tuple(missing))
    layer, config, manifest = await asyncio.to_thread(build)
    tag = f"cache-{hashlib.sha256(manifest.data).hexdigest()[:48]}"
    await registry.push_blob(SOURCE_CACHE_REPO, layer.blob)
    await registry.push_blob(SOURCE_CACHE_REPO, config)
    digest = await registry.push_manifest(SOURCE_CACHE_REPO, tag, manifest)
    cache.images[memo] = ImageRef(
        host=registry.host, repo=SOURCE_CACHE_REPO, tag=tag, digest=digest
    )
    return CachedSources(image=cache.images[memo], missing=tuple(missing))
