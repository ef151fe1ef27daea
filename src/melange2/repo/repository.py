"""APK repositories: load a signed ``APKINDEX.tar.gz``, fetch and verify packages.

A repository is a directory, an http(s) URL, or any store given a :class:`RepositoryReader`
(the server's published repository in a GCS or S3 bucket), laid out as apk-tools expects::

    <repository>/<arch>/APKINDEX.tar.gz
    <repository>/<arch>/<name>-<version>.apk

Usage::

    keys = load_public_keys([Path("/etc/apk/keys")])
    repo = Repository.parse("https://packages.wolfi.dev/os")
    async with httpx.AsyncClient() as client:
        index = await repo.load_index("x86_64", keyring=keys, client=client)
        path = await index.fetch(index.records[0], cache_dir=Path("cache"), client=client)

The index must carry a signature by a trusted key (:class:`UntrustedIndexError`
otherwise). A package is trusted through the index: its control stream's SHA-1
must equal the record's ``C:``, its data stream must match the ``datahash`` and
every file its recorded checksum (:class:`PackageVerificationError`). Verified
packages land in the cache under a name holding that checksum, atomically, so a
cached file is reused as is.

This module is the one place in :mod:`melange2.apk` that does network I/O; file
and CPU work inside the coroutines runs in worker threads.

::

    ApkError                        (melange2.errors)
    └── RepositoryError             a repository cannot be read or a download failed
        ├── UntrustedIndexError     the index is unsigned or signed by no trusted key
        └── PackageVerificationError  a package does not match its index record
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

import httpx

from melange2.apk.errors import ApkFormatError, ApkIntegrityError, ApkSignatureError
from melange2.apk.index import IndexRecord, read_index_tar_gz
from melange2.apk.reader import read_apk
from melange2.apk.signing import PublicKeys, load_public_keys
from melange2.cache import SizedCache
from melange2.errors import ApkError, FarmError

__all__ = [
    "INDEX_FILENAME",
    "IndexCache",
    "LoadedIndex",
    "PackageVerificationError",
    "Repository",
    "RepositoryError",
    "RepositoryReader",
    "UntrustedIndexError",
    "load_indexes",
]

INDEX_FILENAME = "APKINDEX.tar.gz"
_CHUNK = 1 << 16

#: Trusted keys: loaded keys, or key files and directories of them (like ``/etc/apk/keys``).
Keyring = PublicKeys | Sequence[Path]


_log = logging.getLogger(__name__)


class RepositoryError(ApkError):
    """The repository cannot be read."""

    code = "apk_repository_error"


class UntrustedIndexError(RepositoryError, ApkSignatureError):
    """The repository index is not signed by a trusted key."""

    code = "apk_untrusted_index"


class PackageVerificationError(RepositoryError, ApkIntegrityError):
    """The package does not match its index record."""

    code = "apk_package_verification_error"


class RepositoryReader(Protocol):
    """Reads a repository's files (``<arch>/<filename>``) from somewhere else than a
    directory or a web server, e.g. an object store. Raises ``FileNotFoundError`` for a
    missing file."""

    async def exists(self, path: str) -> bool: ...

    def stream(self, path: str) -> AsyncIterator[bytes]: ...


class IndexSnapshot(Protocol):
    """The current index of a repository this process writes itself, without reading
    or verifying its file (``None``: no index for that arch yet)."""

    async def __call__(self, repository: Repository, arch: str) -> LoadedIndex | None: ...


@dataclass(frozen=True, kw_only=True)
class Repository:
    """Where packages come from: a local directory, an http(s) base URL, or a
    ``reader`` (then ``location`` is only the repository's name in messages)."""

    #: the location as given (a ``file://`` URL is kept as written)
    location: str
    reader: RepositoryReader | None = field(default=None, compare=False, repr=False)
    #: the index as its writer in this process holds it (the farm's own repositories:
    #: not parsed again after each of the thousands of publications of a build)
    snapshot: IndexSnapshot | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        scheme = urlsplit(self.location).scheme
        if self.reader is None and scheme not in ("", "file", "http", "https"):
            raise RepositoryError(f"unsupported repository scheme: {self.location!r}")
        if not self.location:
            raise RepositoryError("empty repository location")

    @classmethod
    def parse(cls, location: str | Path) -> Repository:
        """A repository for a directory path, a ``file://`` URL or an http(s) URL."""
        return cls(location=str(location))

    @property
    def local_path(self) -> Path | None:
        """The directory, for a local repository; ``None`` for http(s) or a reader."""
        if self.reader is not None:
            return None
        parts = urlsplit(self.location)
        if parts.scheme == "file":
            return Path(unquote(parts.path))
        if parts.scheme == "":
            return Path(self.location)
        return None

    def url(self, arch: str, filename: str) -> str:
        """Where ``<arch>/<filename>`` lives: a path for directories, a URL otherwise."""
        local = self.local_path
        if local is not None:
            return str(local / arch / filename)
        return f"{self.location.rstrip('/')}/{arch}/{filename}"

    async def load_index(
        self,
        arch: str,
        *,
        keyring: Keyring,
        client: httpx.AsyncClient | None = None,
        allow_untrusted: bool = False,
        cache: IndexCache | None = None,
    ) -> LoadedIndex:
        """Read and verify ``<arch>/APKINDEX.tar.gz``.

        With ``allow_untrusted`` an unsigned or untrusted index is accepted (its
        :attr:`LoadedIndex.signed_by` is then ``None``). With a ``cache``, an index
        whose bytes were parsed and verified before with the same keys is not again.
        """
        keys = await asyncio.to_thread(_load_keys, keyring)
        data = await self._read(arch, INDEX_FILENAME, client)
        if cache is None:
            return await asyncio.to_thread(self._parse_index, arch, data, keys, allow_untrusted)
        key = (
            self.location,
            arch,
            hashlib.sha256(data).hexdigest(),
            tuple(sorted(keys)),
            allow_untrusted,
        )
        found = cache.get(key)
        if found is None:
            found = await asyncio.to_thread(self._parse_index, arch, data, keys, allow_untrusted)
            cache.put(key, found)
        return found

    def _parse_index(
        self, arch: str, data: bytes, keys: PublicKeys, allow_untrusted: bool
    ) -> LoadedIndex:
        where = self.url(arch, INDEX_FILENAME)
        try:
            index = read_index_tar_gz(io.BytesIO(data))
        except ApkFormatError as exc:
            raise RepositoryError(f"{where}: {exc}") from exc
        signed_by: str | None = None
        try:
            read_index_tar_gz(io.BytesIO(data), keys=keys)
            signed_by = next(s.key_name for s in index.signatures if s.key_name in keys)
        except ApkSignatureError as exc:
            if not allow_untrusted:
                if not index.signatures:
                    raise UntrustedIndexError(
                        f"repository {self.location}: {where} is not signed"
                    ) from exc
                names = ", ".join(sorted({s.key_name for s in index.signatures}))
                raise UntrustedIndexError(
                    f"repository {self.location}: {where} is signed with {names}, "
                    f"which is not a trusted key (or the signature does not verify)"
                ) from exc
        return LoadedIndex(
            repository=self,
            arch=arch,
            description=index.description,
            records=index.records,
            signed_by=signed_by,
        )

    async def fetch(
        self,
        record: IndexRecord,
        *,
        arch: str,
        cache_dir: Path,
        client: httpx.AsyncClient | None = None,
    ) -> Path:
        """The verified package file for ``record``, downloaded into ``cache_dir`` if needed.

        The cached name is ``<name>-<version>.<hex checksum>.apk``; a file of that
        name is reused without a download.
        """
        target = cache_dir / f"{record.filename[:-4]}.{record.checksum.hex()}.apk"
        if await asyncio.to_thread(target.is_file):
            return target
        await asyncio.to_thread(cache_dir.mkdir, parents=True, exist_ok=True)
        fd, temp_name = await asyncio.to_thread(
            tempfile.mkstemp, dir=cache_dir, prefix=".fetch-", suffix=".apk"
        )
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                local = self.local_path
                if local is None:
                    async for chunk in self._stream(arch, record.filename, client):
                        await asyncio.to_thread(out.write, chunk)
                else:
                    source = local / arch / record.filename
                    with _map_os_errors(str(source)):
                        await asyncio.to_thread(_copy, source, out)
            await asyncio.to_thread(self._verify, record, temp, arch)
            await asyncio.to_thread(os.replace, temp, target)
        finally:
            await asyncio.to_thread(temp.unlink, missing_ok=True)
        return target

    def _verify(self, record: IndexRecord, path: Path, arch: str) -> None:
        where = self.url(arch, record.filename)
        try:
            # the datahash, in the control stream the signed index names, covers every
            # byte of the data: no need to inflate it (only an APK without one is read
            # whole, its files checked against their checksums)
            package = read_apk(path, inflate_data=False)
            if not package.info.datahash:
                package = read_apk(path)
        except ApkError as exc:
            raise PackageVerificationError(f"{where}: {exc}") from exc
        if package.checksum != record.checksum:
            raise PackageVerificationError(
                f"{where}: control checksum Q1{_b64(package.checksum)} does not match "
                f"the index ({record.checksum_field})"
            )
        if record.size and package.size != record.size:
            raise PackageVerificationError(
                f"{where}: {package.size} bytes, the index says {record.size}"
            )
        if package.info.datahash and package.info.datahash != package.data_sha256:
            raise PackageVerificationError(f"{where}: data does not match its datahash")

    async def _read(self, arch: str, filename: str, client: httpx.AsyncClient | None) -> bytes:
        local = self.local_path
        if local is not None:
            path = local / arch / filename
            with _map_os_errors(str(path)):
                return await asyncio.to_thread(path.read_bytes)
        chunks = [chunk async for chunk in self._stream(arch, filename, client)]
        return b"".join(chunks)

    async def _stream(
        self, arch: str, filename: str, client: httpx.AsyncClient | None
    ) -> AsyncIterator[bytes]:
        url = self.url(arch, filename)
        if self.reader is not None:
            try:
                async for chunk in self.reader.stream(f"{arch}/{filename}"):
                    yield chunk
            except FileNotFoundError as exc:
                raise RepositoryError(f"cannot fetch {url}: not found") from exc
            except OSError as exc:
                raise RepositoryError(f"cannot fetch {url}: {exc}") from exc
            return
        async with (
            _client(client) as http,
            map_fetch_errors(url),
            http.stream("GET", url) as response,
        ):
            response.raise_for_status()
            async for chunk in response.aiter_bytes(_CHUNK):
                yield chunk


#: the estimated memory of one index record, parsed
RECORD_BYTES = 1024


class IndexCache:
    """Parsed, verified indexes by (location, arch, content digest, keys, trust): a
    farm resolves thousands of environments against the same few indexes. Bounded by
    estimated size (:data:`RECORD_BYTES` per record), least recently used first out."""

    def __init__(self, max_bytes: int = 512 * 1024 * 1024) -> None:
        self._entries: SizedCache[tuple[object, ...], LoadedIndex] = SizedCache(
            max_bytes, lambda index: 512 + RECORD_BYTES * len(index.records)
        )

    def get(self, key: tuple[object, ...]) -> LoadedIndex | None:
        return self._entries.get(key)

    def put(self, key: tuple[object, ...], index: LoadedIndex) -> None:
        self._entries.put(key, index)


@dataclass(frozen=True, kw_only=True)
class LoadedIndex:
    """One repository's index for one architecture, signature checked."""

    repository: Repository
    arch: str
    description: str
    records: tuple[IndexRecord, ...]
    #: the trusted key that verified the index (``None`` if loaded with ``allow_untrusted``)
    signed_by: str | None

    async def fetch(
        self,
        record: IndexRecord,
        *,
        cache_dir: Path,
        client: httpx.AsyncClient | None = None,
    ) -> Path:
        """:meth:`Repository.fetch` for a record of this index."""
        return await self.repository.fetch(
            record, arch=self.arch, cache_dir=cache_dir, client=client
        )


async def load_indexes(
    repositories: Sequence[Repository | str | Path],
    arch: str,
    *,
    keyring: Keyring,
    client: httpx.AsyncClient | None = None,
    allow_untrusted: bool = False,
    cache: IndexCache | None = None,
) -> list[LoadedIndex]:
    """Load every repository's index concurrently, keeping the given order. A local
    directory without an index for ``arch`` is an empty repository: skipped, with a
    warning (``--repository-append ./packages`` before the first build)."""
    keys = await asyncio.to_thread(_load_keys, keyring)
    repos = [r if isinstance(r, Repository) else Repository.parse(r) for r in repositories]
    present: list[Repository] = []
    held: dict[int, LoadedIndex] = {}
    for repo in repos:
        if repo.snapshot is not None:
            snapshot = await repo.snapshot(repo, arch)
            if snapshot is None:
                _log.debug("repository %s has no %s index yet: skipped", repo.location, arch)
                continue
            if not allow_untrusted and snapshot.signed_by not in keys:
                raise UntrustedIndexError(
                    f"repository {repo.location}: its {arch} index is signed with "
                    f"{snapshot.signed_by}, which is not a trusted key"
                )
            held[len(present)] = snapshot
            present.append(repo)
            continue
        local = repo.local_path
        missing = (local is not None and not (local / arch / INDEX_FILENAME).exists()) or (
            repo.reader is not None and not await repo.reader.exists(f"{arch}/{INDEX_FILENAME}")
        )
        if missing:
            _log.warning("repository %s has no %s/%s: skipped", repo.location, arch, INDEX_FILENAME)
            continue
        present.append(repo)
    try:
        async with _client(client) as http, asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(
                    repo.load_index(
                        arch,
                        keyring=keys,
                        client=http,
                        allow_untrusted=allow_untrusted,
                        cache=cache,
                    )
                )
                for n, repo in enumerate(present)
                if n not in held
            ]
    except* RepositoryError as group_error:
        raise group_error.exceptions[0] from None
    loaded = iter(task.result() for task in tasks)
    return [held[n] if n in held else next(loaded) for n in range(len(present))]


def _load_keys(keyring: Keyring) -> PublicKeys:
    if isinstance(keyring, Mapping):
        return keyring
    try:
        return load_public_keys(keyring)
    except OSError as exc:
        raise RepositoryError(f"cannot read the keyring: {exc}") from exc


def _copy(source: Path, out: BinaryIO) -> None:
    with source.open("rb") as raw:
        shutil.copyfileobj(raw, out, _CHUNK)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


@asynccontextmanager
async def _client(client: httpx.AsyncClient | None) -> AsyncIterator[httpx.AsyncClient]:
    if client is not None:
        yield client
        return
    async with httpx.AsyncClient(follow_redirects=True) as owned:
        yield owned


@asynccontextmanager
async def map_fetch_errors(
    what: str, error: type[FarmError] = RepositoryError
) -> AsyncIterator[None]:
    """The one place httpx errors of a fetch from a URL a config or the operator names
    (a repository's files, a key) become ours: ``error`` (:class:`RepositoryError`
    unless given), "cannot fetch <what>: ...", the cause kept."""
    try:
        yield
    except httpx.HTTPStatusError as exc:
        raise error(f"cannot fetch {what}: HTTP {exc.response.status_code}") from exc
    except httpx.HTTPError as exc:
        raise error(f"cannot fetch {what}: {exc}") from exc


@contextmanager
def _map_os_errors(path: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise RepositoryError(f"cannot read {path}: {exc.strerror or exc}") from exc
