"""The one storage class: an fsspec filesystem, a root inside it, retries and our errors.

Every call runs the filesystem's sync API in a worker thread (``asyncio.to_thread``);
the event loop never waits on I/O. gcsfs and s3fs run their own event loop in fsspec's
IO thread and are safe to call from several threads at once. The memory filesystem is
a plain dict of shared ``BytesIO`` objects, so calls into it take a lock.

Writes are atomic for readers: on ``local`` a temporary file in the target's
directory is renamed over it (``os.replace``); on ``memory`` the lock makes them so;
on ``gcs``/``s3`` one upload (simple, resumable or multipart) only becomes visible
when it completes.

Transient failures (see :mod:`melange2.storage.faults`) are retried with exponential
backoff by tenacity, the only retry layer: :func:`~melange2.storage.open_storage`
turns the libraries' own retries down to one try, so waits never multiply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from melange2.fsutil import link_atomic, write_atomic
from melange2.storage import faults
from melange2.storage.base import (
    ObjectInfo,
    StorageConfigError,
    StorageError,
    StorageKind,
    StorageNotFound,
)
from melange2.storage.keys import validate_key

__all__ = ["BackendHooks", "OnDisk", "Storage"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

#: how much gcs/s3 fetch per ranged request while streaming (fsspec readahead block)
READ_BLOCK = 8 << 20
#: gcs/s3 upload a file in parts of this size, one (s3: up to 4) in memory at a time
UPLOAD_PART = 8 << 20
#: the name of the object ``check()`` writes, reads and deletes
PROBE_PREFIX = ".melange2-probe-"


@dataclass(frozen=True, kw_only=True)
class BackendHooks:
    """What a kind of filesystem adds to :class:`Storage`; each part is optional."""

    #: worth another try? (default: connection errors, timeouts, HTTP 408/429/5xx)
    is_transient: Callable[[BaseException], bool] = faults.is_transient
    #: credentials refused? (for :meth:`Storage.check`'s message)
    is_denied: Callable[[BaseException], bool] = faults.is_denied
    #: what a read raises when the object was replaced since it was opened
    changed_errors: tuple[type[BaseException], ...] = ()
    #: run once before the first call (in a thread): open sessions
    connect: Callable[[], None] | None = None
    #: run by :meth:`Storage.aclose` (in a thread) if ``connect`` ran
    close: Callable[[], None] | None = None
    #: for :meth:`Storage.check`: raise ``FileNotFoundError`` if the bucket is missing,
    #: ``PermissionError`` (or such) if we may not list it
    find_bucket: Callable[[], None] | None = None


class Storage:
    """Objects under one root of an fsspec filesystem, addressed by key.

    Open one with :func:`~melange2.storage.open_storage`. Tests can build one over any
    filesystem::

        storage = Storage(MemoryFileSystem(global_store=False), "/t", kind="memory")
        await storage.put_bytes("repo/x86_64/APKINDEX.tar.gz", data)
        async for chunk in storage.iter_chunks("repo/x86_64/APKINDEX.tar.gz"):
            ...

    Keys are checked by :func:`~melange2.storage.validate_key` (``ValueError``). A
    missing object raises :class:`StorageNotFound`; anything else that still fails
    after ``retry_attempts`` tries raises :class:`StorageError` naming the key and the
    backend, with the library's exception as ``__cause__``.
    """

    kind: StorageKind

    def __init__(
        self,
        fs: Any,
        root: str,
        *,
        kind: StorageKind,
        url_base: str | None = None,
        endpoint: str = "",
        bucket: str = "",
        hooks: BackendHooks | None = None,
        retry_attempts: int = 4,
        retry_wait: float = 0.2,
        retry_max_wait: float = 5.0,
    ) -> None:
        """``fs`` is an fsspec filesystem (sync API), ``root`` the path of the storage
        root in it (no trailing ``/``; for gcs/s3 ``bucket[/prefix]``). ``url_base`` is
        what :meth:`url` puts before the key (default: the root); ``endpoint`` and
        ``bucket`` are for messages."""
        if not root or root.endswith("/"):
            raise ValueError(f"storage root {root!r}: empty or ends with '/'")
        self.kind = kind
        self._fs = fs
        self._root = root
        self._url_base = url_base if url_base is not None else root
        self.endpoint = endpoint
        self.bucket = bucket
        self._hooks = hooks or BackendHooks()
        #: tries per operation (1 = no retry)
        self.retry_attempts = retry_attempts
        #: first wait between tries in seconds, doubled each time up to ``retry_max_wait``
        self.retry_wait = retry_wait
        self.retry_max_wait = retry_max_wait
        self._lock = threading.Lock() if kind == "memory" else None
        self._connected = self._hooks.connect is None
        self._connect_lock = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Storage {self.describe}>"

    @property
    def describe(self) -> str:
        """Where the objects are, for messages: a path, or a URL and its endpoint."""
        if self.endpoint:
            return f"{self._url_base} (endpoint {self.endpoint})"
        return self._url_base

    # -- addressing ---------------------------------------------------------------

    def _path(self, key: str) -> str:
        return f"{self._root}/{validate_key(key)}"

    def url(self, key: str) -> str:
        """The object's real location: an absolute path (local), ``memory://...``,
        ``gs://bucket/prefix/key`` or ``s3://bucket/prefix/key``."""
        return f"{self._url_base}/{validate_key(key)}"

    def local_path(self, key: str) -> Path | None:
        """The object's absolute path on a local storage, else ``None``. For reading in
        place only (serving a file, a repository read as a directory); to write or read
        a key as a file whatever the storage, use :meth:`on_disk`."""
        validate_key(key)
        return Path(self._root, key) if self.kind == "local" else None

    def on_disk(self, key: str, scratch: Path) -> OnDisk:
        """``key`` (an object, or a prefix holding a tree of them) as a path on this
        machine: the stored object itself on local storage, else ``scratch``, which
        :meth:`OnDisk.fetch` fills from storage and :meth:`OnDisk.store` puts back. The
        one place the farm chooses between a directory and a bucket::

            out = storage.on_disk(f"{prefix}/artifacts", scratch=work / "out")
            build_into(out.path)
            await out.store()        # uploaded, unless written in place
            await out.discard()      # the scratch copy removed (never the stored object)
        """
        local = self.local_path(key)
        return OnDisk(
            storage=self,
            key=key,
            path=local if local is not None else scratch,
            in_place=local is not None,
        )

    # -- lifecycle ----------------------------------------------------------------

    async def check(self) -> None:
        """Refuse a storage the server could not use, at start: make the root
        (local/memory) or find the bucket (gcs/s3), then write, read back and delete a
        probe object. Raises :class:`StorageConfigError` saying what is wrong."""
        try:
            if self._hooks.find_bucket is not None:
                await self._run("find the bucket", self.bucket, self._hooks.find_bucket)
            else:
                await self._run("create", "", partial(self._fs.makedirs, self._root, exist_ok=True))
            probe = f"{PROBE_PREFIX}{secrets.token_hex(8)}"
            await self.put_bytes(probe, b"probe")
            back = await self.read_bytes(probe)
            await self.delete(probe)
        except StorageConfigError:
            raise
        except StorageError as exc:
            cause = exc.__cause__ or exc
            raise StorageConfigError(self._config_problem(cause)) from cause
        if back != b"probe":
            raise StorageConfigError(f"{self.describe}: a probe object read back changed")

    def _config_problem(self, cause: BaseException) -> str:
        detail = _summary(cause)
        if self.kind not in ("gcs", "s3"):
            return f"{self.kind} storage {self._root} is not usable: {detail}"
        what = f"{self.kind} bucket {self.bucket!r} at {self.endpoint}"
        if isinstance(cause, FileNotFoundError):
            return f"{what} does not exist ({detail})"
        if self._hooks.is_denied(cause):
            return (
                f"access denied to {what}: check the credentials and their permissions ({detail})"
            )
        if self._hooks.is_transient(cause):
            return (
                f"cannot reach the {self.kind} endpoint {self.endpoint} "
                f"(bucket {self.bucket!r}): {detail}"
            )
        return f"{what} is not usable: {detail}"

    async def aclose(self) -> None:
        """Release the backend's connections (memory: drop its objects). Idempotent;
        the storage refuses calls afterwards."""
        if self._closed:
            return
        self._closed = True
        if self.kind == "memory":
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(self._locked, partial(self._drop_root))
        if self._hooks.close is not None and self._connected:
            try:
                await asyncio.to_thread(self._hooks.close)
            except Exception:
                _log.warning("closing %s failed", self.describe, exc_info=True)

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- writing ------------------------------------------------------------------

    async def put_file(self, local: Path, key: str) -> None:
        """Upload the file at ``local`` to ``key`` (streamed), replacing any object."""
        path = self._path(key)
        fn: Callable[[], None]
        if self.kind == "local":
            fn = partial(write_atomic, Path(path), partial(_copy_from, Path(local)))
        elif self.kind == "memory":
            fn = partial(self._pipe_file_from, Path(local), path)
        else:
            fn = partial(self._put_file, Path(local), path)
        await self._run("put", key, fn)

    async def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key``, replacing any object."""
        path = self._path(key)
        fn: Callable[[], None]
        if self.kind == "local":
            fn = partial(write_atomic, Path(path), data)
        else:
            fn = partial(self._fs.pipe_file, path, data)
        await self._run("put", key, fn)

    async def copy(self, source: str, key: str) -> None:
        """Copy the object at ``source`` to ``key`` inside the storage, replacing any
        object: a hard link on local disk (objects are never changed in place, only
        replaced), a server-side copy in a bucket; nothing passes through this process."""
        src, dest = self._path(source), self._path(key)
        fn: Callable[[], None]
        if self.kind == "local":
            fn = partial(link_atomic, Path(src), Path(dest))
        elif self.kind == "memory":
            fn = partial(self._copy_in_memory, src, dest)
        else:
            fn = partial(self._copy_remote, src, dest)
        await self._run("copy", key, fn)

    async def copy_many(self, pairs: Sequence[tuple[str, str]]) -> None:
        """:meth:`copy` for many (source, key) pairs: in one call on local disk, where a
        thread hop per file would cost more than the link; concurrently in a bucket."""
        if self.kind != "local":
            await asyncio.gather(*(self.copy(src, key) for src, key in pairs))
            return
        paths = [(Path(self._path(src)), Path(self._path(key))) for src, key in pairs]

        def link_all() -> None:
            for src, dest in paths:
                link_atomic(src, dest)

        if paths:
            await self._run("copy", pairs[0][1], link_all)

    async def delete(self, key: str) -> None:
        """Delete the object at ``key``; a missing one is fine."""
        await self._run("delete", key, partial(self._delete, self._path(key)))

    # -- reading ------------------------------------------------------------------

    async def get_file(self, key: str, local: Path) -> None:
        """Download ``key`` to ``local`` (streamed; parents made; replaced atomically)."""
        await self._run("get", key, partial(self._get_file, self._path(key), Path(local)))

    async def read_bytes(self, key: str) -> bytes:
        """The whole object (meant for small ones: indexes, keys, probes)."""
        return await self._run("read", key, partial(self._read_bytes, self._path(key)))

    def iter_chunks(
        self, key: str, chunk_size: int = 1 << 16, offset: int = 0
    ) -> AsyncIterator[bytes]:
        """The object from byte ``offset`` on, in chunks of at most ``chunk_size``.

        A missing object raises :class:`StorageNotFound` from the first ``__anext__``,
        before any chunk. Up to the read block (8 MiB) an object streams in one
        version, even while it is overwritten. A bigger one overwritten while it
        streams: s3 breaks the stream (:class:`StorageError`); gcs may mix versions.
        """
        path = self._path(key)
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, not {offset}")
        return self._chunks(key, path, chunk_size, offset)

    async def _chunks(
        self, key: str, path: str, chunk_size: int, offset: int
    ) -> AsyncIterator[bytes]:
        block = max(chunk_size, READ_BLOCK)
        opened = partial(self._open_first, path, block, offset, chunk_size)
        f, chunk = await self._run("read", key, opened)
        try:
            pos = offset
            while chunk:
                pos += len(chunk)
                yield chunk
                chunk = await self._run("read", key, partial(_read_at, f, pos, chunk_size))
        finally:
            f.close()  # a read handle: no I/O to wait for

    async def read_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """:meth:`read_bytes` for many small objects; ``None`` for each missing one. One
        call on local disk or in memory, concurrent requests in a bucket."""
        if self.kind in ("gcs", "s3"):

            async def one(key: str) -> bytes | None:
                try:
                    return await self.read_bytes(key)
                except StorageNotFound:
                    return None

            return list(await asyncio.gather(*(one(k) for k in keys)))
        paths = [self._path(k) for k in keys]

        def read_all() -> list[bytes | None]:
            out: list[bytes | None] = []
            for path in paths:
                try:
                    out.append(self._read_bytes(path))
                except FileNotFoundError:
                    out.append(None)
            return out

        return await self._run("read", keys[0], read_all) if keys else []

    async def exists_many(self, keys: Sequence[str]) -> list[bool]:
        """:meth:`exists` for many keys (one call on local disk or in memory)."""
        if self.kind in ("gcs", "s3"):
            return list(await asyncio.gather(*(self.exists(k) for k in keys)))
        paths = [self._path(k) for k in keys]

        def stat_all() -> list[bool]:
            return [self._stat(path) is not None for path in paths]

        return await self._run("stat", keys[0], stat_all) if keys else []

    async def exists(self, key: str) -> bool:
        """Whether an object is at ``key`` (a "directory" of keys is not one)."""
        return await self._run("stat", key, partial(self._stat, self._path(key))) is not None

    async def version(self, key: str) -> str | None:
        """A token of the object's version at ``key`` (``None`` if missing), from one
        stat: it changes when the object is written again (GCS's ``generation``, S3's
        ``ETag`` and ``LastModified``, a local file's inode and mtime: a put renames a
        new file in place; memory: its creation time), so comparing two tokens tells
        whether another writer replaced the object without reading it."""
        info = await self._run("stat", key, partial(self._stat, self._path(key)))
        if info is None:
            return None
        parts = [f"{name}={info[name]}" for name in _VERSION_FIELDS if info.get(name) is not None]
        return ";".join(parts)

    async def size(self, key: str) -> int:
        """The object's size in bytes; :class:`StorageNotFound` if missing."""
        info = await self._run("stat", key, partial(self._stat, self._path(key)))
        if info is None:
            raise StorageNotFound(f"no object {key!r} in {self.describe}")
        return int(info["size"])

    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object below ``prefix`` (``a/b`` or ``a/b/``: keys ``a/b/...``, at any
        depth; ``""``: all), sorted by key; ``[]`` if none."""
        prefix = prefix.removesuffix("/")
        base = self._path(prefix) if prefix else self._root
        found = await self._run("list", prefix or "/", partial(self._find, base))
        objects = []
        for path, info in found.items():
            if info.get("type") != "file" or not path.startswith(self._root + "/"):
                continue
            key = path[len(self._root) + 1 :]
            if prefix and not key.startswith(prefix + "/"):
                continue
            try:
                validate_key(key)
            except ValueError:
                continue  # not ours: a temporary file of a write in progress, ...
            objects.append(ObjectInfo(key=key, size=int(info["size"])))
        return sorted(objects, key=lambda o: o.key)

    # -- running a call -----------------------------------------------------------

    async def _run(self, op: str, key: str, fn: Callable[[], T]) -> T:
        """``fn()`` in a thread, retried on transient errors, errors made ours."""
        if self._closed:
            raise StorageError(f"{self.describe}: cannot {op} {key!r}: the storage is closed")
        try:
            if not self._connected:
                await self._ensure_connected()
            return await self._retrying(op, key, fn)
        except StorageError:
            raise
        except FileNotFoundError as exc:
            raise StorageNotFound(f"no object {key!r} in {self.describe}") from exc
        except Exception as exc:
            raise StorageError(f"{self.describe}: cannot {op} {key!r}: {_summary(exc)}") from exc

    async def _retrying(self, op: str, key: str, fn: Callable[[], T]) -> T:
        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            _log.warning(
                "%s: %s %r failed (try %d of %d), retrying: %s",
                self.describe,
                op,
                key,
                state.attempt_number,
                self.retry_attempts,
                _summary(exc) if exc else "?",
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(max(1, self.retry_attempts)),
            wait=wait_exponential(multiplier=self.retry_wait, max=self.retry_max_wait),
            retry=retry_if_exception(self._hooks.is_transient),
            before_sleep=log_retry,
            reraise=True,
        )
        result: T = await retrying(asyncio.to_thread, self._locked, fn)
        return result

    async def _ensure_connected(self) -> None:
        async with self._connect_lock:
            if not self._connected and self._hooks.connect is not None:
                await self._retrying("connect", "", self._hooks.connect)
                self._connected = True

    def _locked(self, fn: Callable[[], T]) -> T:
        if self._lock is None:
            return fn()
        with self._lock:
            return fn()

    # -- the calls (in a worker thread) -------------------------------------------

    def _put_file(self, local: Path, path: str) -> None:
        _require_source(local)
        options: dict[str, Any] = {}
        if self.kind == "s3":
            # up to 2 parts in one PUT, else multipart (S3 allows 10,000 parts)
            size = local.stat().st_size
            options = {"chunksize": max(UPLOAD_PART, -(-size // 9000)), "max_concurrency": 4}
        elif self.kind == "gcs":
            options = {"chunksize": UPLOAD_PART}  # resumable upload above 5 MiB
        self._fs.put_file(str(local), path, **options)

    def _pipe_file_from(self, local: Path, path: str) -> None:
        # the memory filesystem commits a file as soon as it is opened for writing:
        # give it the whole content at once (it holds it in memory anyway)
        _require_source(local)
        self._fs.pipe_file(path, local.read_bytes())

    def _copy_in_memory(self, src: str, dest: str) -> None:
        with _dirs_are_missing():
            data = self._fs.cat_file(src)
        self._fs.pipe_file(dest, data)

    def _copy_remote(self, src: str, dest: str) -> None:
        self._stat_file(src)  # a missing source is StorageNotFound, whatever the backend says
        self._fs.copy(src, dest)

    def _get_file(self, path: str, local: Path) -> None:
        self._stat_file(path)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.parent / _temp_name(local.name)
        try:
            self._fs.get_file(path, str(tmp))
            if not tmp.is_file():  # some backends skip "directories" silently
                raise FileNotFoundError(path)
            os.replace(tmp, local)
        except BaseException:
            _remove(tmp)
            raise

    def _read_bytes(self, path: str) -> bytes:
        with _dirs_are_missing():
            data: bytes = self._fs.cat_file(path)
            return data

    def _open_first(self, path: str, block: int, offset: int, size: int) -> tuple[IO[bytes], bytes]:
        """Open ``path`` and read its first chunk. The first read fetches a whole block,
        so an object of up to a block is read in one request, one version. An object
        replaced between opening and that read is opened again."""
        for attempt in range(3):
            self._stat_file(path)
            with _dirs_are_missing():
                f: IO[bytes] = self._fs.open(path, "rb", block_size=block, cache_type="readahead")
            try:
                return f, _read_at(f, offset, size)
            except self._hooks.changed_errors:
                f.close()
                if attempt == 2:
                    raise
            except BaseException:
                f.close()
                raise
        raise AssertionError("unreachable")

    def _stat(self, path: str) -> dict[str, Any] | None:
        try:
            return self._stat_file(path)
        except FileNotFoundError:
            return None

    def _stat_file(self, path: str) -> dict[str, Any]:
        with _dirs_are_missing():
            info: dict[str, Any] = self._fs.info(path)
        if info.get("type") != "file":
            raise FileNotFoundError(path)
        return info

    def _find(self, base: str) -> dict[str, dict[str, Any]]:
        try:
            found: dict[str, dict[str, Any]] = self._fs.find(base, detail=True)
        except FileNotFoundError:
            if self.kind in ("gcs", "s3"):
                raise  # a missing bucket is not an empty listing
            return {}
        return found

    def _delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self._fs.rm_file(path)

    def _drop_root(self) -> None:
        self._fs.rm(self._root, recursive=True)


#: what :meth:`Storage.version` takes from a stat, where the backend gives it (GCS,
#: S3, local, memory), with the size
_VERSION_FIELDS = (
    "generation",
    "metageneration",
    "ETag",
    "LastModified",
    "VersionId",
    "ino",
    "mtime",
    "created",
    "size",
)


def _summary(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 300:
        first = first[:300] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@contextlib.contextmanager
def _dirs_are_missing() -> Iterator[None]:
    """A "directory" where an object should be is a missing object."""
    try:
        yield
    except (IsADirectoryError, NotADirectoryError) as exc:
        raise FileNotFoundError(str(exc)) from exc


def _require_source(local: Path) -> None:
    if not local.is_file():
        raise StorageError(f"cannot upload {local}: not a file")


def _read_at(f: IO[bytes], pos: int, size: int) -> bytes:
    f.seek(pos)
    return f.read(size)


def _temp_name(name: str) -> str:
    # '#' is outside the key alphabet: list() never shows a temporary file
    return f".{name[:100]}#{secrets.token_hex(6)}.part"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _copy_from(src: Path, out: IO[bytes]) -> None:
    _require_source(src)
    with src.open("rb") as f:
        shutil.copyfileobj(f, out, 1 << 20)


@dataclass(frozen=True, kw_only=True)
class OnDisk:
    """A stored key as a path on this machine (:meth:`Storage.on_disk`): the object itself
    when ``in_place`` (local storage), else a scratch path that nothing else uses."""

    storage: Storage
    key: str
    path: Path
    #: ``path`` is the stored object: nothing to fetch, store or discard
    in_place: bool

    async def fetch(self) -> Path:
        """The object's bytes at :attr:`path` (downloaded there if not in place)."""
        if not self.in_place:
            await self.storage.get_file(self.key, self.path)
        return self.path

    async def store(self) -> None:
        """What was written at :attr:`path` into storage: a file to :attr:`key`, or every
        file of a directory under ``<key>/`` (by its relative path, concurrently).
        Nothing in place; nothing if nothing was written. The scratch copy stays until
        :meth:`discard`."""
        if self.in_place:
            return
        path = self.path
        if await asyncio.to_thread(path.is_dir):
            files = await asyncio.to_thread(
                lambda: [p for p in sorted(path.rglob("*")) if p.is_file()]
            )
            await asyncio.gather(
                *(
                    self.storage.put_file(f, f"{self.key}/{f.relative_to(path).as_posix()}")
                    for f in files
                )
            )
        elif await asyncio.to_thread(path.is_file):
            await self.storage.put_file(path, self.key)

    async def discard(self) -> None:
        """Remove the scratch copy, file or tree (nothing in place)."""
        if not self.in_place:
            await asyncio.to_thread(_remove_tree, self.path)


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
