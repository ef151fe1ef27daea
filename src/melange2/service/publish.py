"""Publication into APK repositories kept in storage: the farm's published repository
(``repo/`` of the farm's storage) and each build's staging repository.

:class:`Publication` holds both for the server: a package's packages as it succeeds
(into its build's staging repository, and into the farm's unless the build publishes
only on success), and a whole build's once every package succeeded (``publish:
build``: all or none). :class:`RepoPublisher` writes one repository:

* **Incremental**: an arch's index records are read once (from the stored index, not
  from the APKs) and kept; a publication computes records for its new APKs only. A
  package file published again under the same name replaces its record.
* **Atomic**: APKs are stored first, then the index in one write (a rename locally, one
  object upload in a bucket): readers see the old index or the new one.
* **Batched, nothing lost**: concurrent publications into one arch queue up; whoever
  holds the arch's lock writes one index for every publication waiting (group commit),
  and each caller returns once an index listing its packages is stored.
* **One writer per arch across replicas**: the index write (and the read of what
  storage holds that comes before it) runs under ``lock("publish:<prefix>/<arch>")``,
  the store's named lock (:meth:`~melange2.store.base.ReplicaStore.hold_lock`: a
  PostgreSQL advisory lock across servers on one database). Under it the publisher
  compares the stored index's version (:meth:`_stored_version`: one stat) with the one
  it last read or wrote; when another replica wrote since, it reads that index (and
  the origins) again and merges into it, so an index never lacks a package another
  replica listed.
* **Fresh for environments**: :meth:`snapshot` (what build environments resolve from)
  compares that version on every call too, and reads the index again when it changed:
  a package another replica published is seen by the next environment here; so does
  :meth:`fresh` (a submission's reuse, the repository page). ``has`` and ``current``
  (thousands of calls per build) do not: they answer from memory, which :meth:`check`,
  :meth:`snapshot`, :meth:`fresh` and every write refresh.
* **Immutable** (the farm's repository, ``immutable=True``): a package file name
  (name, version, epoch) the repository holds, or another publication is storing right
  now, with other content is refused with :class:`~melange2.errors.PublishConflict`
  naming the build that published it, before anything is written; unless the
  publication asks to ``replace``, and then the replacement is logged with both
  checksums. The same bytes again are a no-op. Which build published each file is kept
  beside the index (``origins``, one JSON object per arch, written with the index).

Several servers may share one storage prefix when they share one PostgreSQL database
(the lock). Known limit: the refusal of other bytes under a taken name is checked
against what this replica knows (refreshed before each check) and what it is storing
now; two replicas storing other bytes under one new name in the same moment both pass,
and the later index write wins (it is logged as an error).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

from melange2.apk.index import IndexRecord, read_index_tar_gz, write_index_tar_gz
from melange2.apk.signing import Signer
from melange2.errors import PublishConflict
from melange2.jobs import Build, BuildStatus, PackageJob, PackageStatus
from melange2.repo.repository import LoadedIndex, Repository
from melange2.service.layout import REPO, Locations
from melange2.service.settings import ServerSettings
from melange2.storage import Storage, StorageNotFound, StorageSpec, open_storage

INDEX_NAME = "APKINDEX.tar.gz"
_log = logging.getLogger(__name__)
#: a named lock (the store's ``hold_lock``): one holder of a name at a time
NamedLock = Callable[[str], AbstractAsyncContextManager[None]]


@contextlib.asynccontextmanager
async def _unlocked(name: str) -> AsyncIterator[None]:
    yield


@dataclass(frozen=True, kw_only=True)
class Origin:
    """Which build published a package file."""

    build_id: str
    package: str

    def describe(self) -> str:
        return f"build {self.build_id} (package {self.package})"


@dataclass(frozen=True, kw_only=True)
class Replacement:
    """A package file a publication replaced (``replace``), with both checksums."""

    arch: str
    filename: str
    old: str  #: ``Q1...`` of the replaced package
    new: str
    old_origin: Origin | None

    def describe(self) -> str:
        by = f" from {self.old_origin.describe()}" if self.old_origin else ""
        return f"replaced {self.arch}/{self.filename}: {self.old}{by} -> {self.new}"


@dataclass
class _Claim:
    checksum: bytes
    origin: Origin | None
    holders: int = 1


@dataclass
class _Arch:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: by file name; None until read from the stored index
    records: dict[str, IndexRecord] | None = None
    #: by file name: who published it (immutable repositories); None until read
    origins: dict[str, Origin] | None = None
    waiting: list[tuple[list[IndexRecord], asyncio.Future[None]]] = field(default_factory=list)
    #: file names being stored by a publication right now, and their content
    claims: dict[str, _Claim] = field(default_factory=dict)
    #: origins of the publications waiting for the next index write
    pending_origins: dict[str, Origin] = field(default_factory=dict)
    writes: int = 0  #: index writes so far (observability, tests)
    #: the records as a loaded index, and the records it was made from
    snapshot: LoadedIndex | None = None
    snapshot_of: Mapping[str, IndexRecord] | None = None
    #: the stored index's version when ``records`` were read or written (None: absent)
    version: str | None = None
    #: bumped whenever ``records`` change (a read that raced a write keeps the write's)
    generation: int = 0
    origins_generation: int = 0  #: bumped whenever ``origins`` is set or dropped
    reloads: int = 0  #: reads of an index another writer stored (observability, tests)


class RepoPublisher:
    """Publishes into the repository at ``prefix`` of ``storage`` (``<prefix>/<arch>/``)."""

    def __init__(
        self,
        storage: Storage,
        prefix: str,
        signer: Signer,
        *,
        description: str = "melange2",
        immutable: bool = False,
        origins_key: Callable[[str], str] | None = None,
        lock: NamedLock | None = None,
    ) -> None:
        self.storage = storage
        self.prefix = prefix.strip("/")
        self.signer = signer
        self.description = description
        #: refuse other bytes under a file name already published (unless ``replace``)
        self.immutable = immutable
        #: where each arch's origins are kept (default: ``<prefix>/<arch>/origins.json``)
        self.origins_key = origins_key or (lambda arch: self.key(arch, "origins.json"))
        #: held around each index write, per arch (several replicas on one storage)
        self.lock: NamedLock = lock or _unlocked
        self._arches: dict[str, _Arch] = {}

    def lock_name(self, arch: str) -> str:
        return f"publish:{self.prefix}/{arch}"

    def key(self, arch: str, filename: str) -> str:
        return f"{self.prefix}/{arch}/{filename}" if self.prefix else f"{arch}/{filename}"

    def index_writes(self, arch: str) -> int:
        state = self._arches.get(arch)
        return state.writes if state is not None else 0

    def index_reloads(self, arch: str) -> int:
        """How often this publisher read an index another writer stored."""
        state = self._arches.get(arch)
        return state.reloads if state is not None else 0

    async def records(self, arch: str) -> dict[str, IndexRecord]:
        """The arch's current records by file name (read from storage the first time)."""
        return dict(await self.current(arch))

    async def current(self, arch: str) -> Mapping[str, IndexRecord]:
        """The arch's records themselves (not a copy: thousands of ``has`` per build)."""
        state = self._arches.setdefault(arch, _Arch())
        if state.records is None:
            await self._refresh(arch, state)
        assert state.records is not None
        return state.records

    async def fresh(self, arch: str) -> Mapping[str, IndexRecord]:
        """:meth:`current` after a check that no other replica stored a newer index
        (one stat): for a call made once per request (a submission's reuse, a page)."""
        await self._refresh(arch, self._arches.setdefault(arch, _Arch()))
        return await self.current(arch)

    async def _load(self, arch: str) -> dict[str, IndexRecord]:
        try:
            data = await self.storage.read_bytes(self.key(arch, INDEX_NAME))
        except StorageNotFound:
            return {}
        index = await asyncio.to_thread(read_index_tar_gz, io.BytesIO(data))
        return {r.filename: r for r in index.records}

    async def _stored_version(self, arch: str) -> str | None:
        """The stored index's version (``None``: there is none): the storage's own
        (:meth:`Storage.version`: a bucket's generation or ETag); for a file, its inode,
        mtime and size with its last 8 bytes (the gzip trailer: CRC-32 and length of
        what it holds), since a file's mtime ticks coarsely and inodes are reused."""
        key = self.key(arch, INDEX_NAME)
        local = self.storage.local_path(key)
        if local is not None:
            return await asyncio.to_thread(_file_version, local)
        return await self.storage.version(key)

    async def _refresh(self, arch: str, state: _Arch) -> None:
        """Read the stored index again if another writer replaced it since ``records``
        were read or written (one stat when it did not)."""
        version = await self._stored_version(arch)
        if state.records is not None and version == state.version:
            return
        seen = state.generation
        records = await self._load(arch) if version is not None else {}
        if state.generation != seen:
            return  # a write of ours landed meanwhile: newer than what was read
        if state.records is not None:
            state.reloads += 1
            if self.immutable:
                state.origins = None  # written with that index: read again when asked
                state.origins_generation += 1
        state.records = records
        state.version = version
        state.generation += 1

    async def snapshot(self, repository: Repository, arch: str) -> LoadedIndex | None:
        """The arch's index as stored, from memory (an :class:`IndexSnapshot` for
        ``repository``, which must be this publisher's); ``None`` while it is empty.
        Read again first when another replica stored a newer index (one stat)."""
        state = self._arches.setdefault(arch, _Arch())
        await self._refresh(arch, state)
        records = await self.current(arch)
        if not records:
            return None
        state = self._arches[arch]
        held = state.snapshot
        if held is None or held.repository is not repository or state.snapshot_of is not records:
            held = state.snapshot = LoadedIndex(
                repository=repository,
                arch=arch,
                description=self.description,
                records=tuple(sorted(records.values(), key=_index_order)),
                signed_by=self.signer.key_name,
            )
            state.snapshot_of = records
        return held

    async def has(self, arch: str, record: IndexRecord) -> bool:
        """Is exactly this package (same file name and checksum) published?"""
        current = (await self.current(arch)).get(record.filename)
        return current is not None and current.checksum == record.checksum

    async def origins(self, arch: str) -> Mapping[str, Origin]:
        """Who published each file of the arch (as far as it was recorded)."""
        state = self._arches.setdefault(arch, _Arch())
        if state.origins is None:
            seen = state.origins_generation
            found = await self._read_origins(arch)
            if state.origins is None and state.origins_generation == seen:
                state.origins = found  # not overtaken by a newer read or write
            return found
        return state.origins

    async def _read_origins(self, arch: str) -> dict[str, Origin]:
        try:
            raw = json.loads(await self.storage.read_bytes(self.origins_key(arch)))
            return {
                name: Origin(build_id=str(o["build_id"]), package=str(o["package"]))
                for name, o in raw.items()
            }
        except StorageNotFound:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError):
            _log.warning("unreadable %s: origins unknown", self.origins_key(arch))
            return {}

    async def check(
        self, arch: str, records: Sequence[IndexRecord], *, replace: bool = False
    ) -> None:
        """Raise :class:`PublishConflict` if publishing ``records`` would replace other
        bytes under a name the repository holds (or is storing now). Nothing written."""
        if not self.immutable or replace:
            return
        await self._refresh(arch, self._arches.setdefault(arch, _Arch()))
        current = await self.current(arch)
        origins = await self.origins(arch)
        self._conflicts(arch, records, current, origins)

    def _conflicts(
        self,
        arch: str,
        records: Sequence[IndexRecord],
        current: Mapping[str, IndexRecord],
        origins: Mapping[str, Origin],
    ) -> None:
        state = self._arches.setdefault(arch, _Arch())
        for rec in records:
            held = current.get(rec.filename)
            claim = state.claims.get(rec.filename)
            if held is not None and held.checksum != rec.checksum:
                origin = origins.get(rec.filename)
                by = origin.describe() if origin else "an earlier build (not recorded)"
            elif claim is not None and claim.checksum != rec.checksum:
                by = claim.origin.describe() if claim.origin else "another publication"
                by += ", being published now"
            else:
                continue
            raise PublishConflict(
                f"{arch}/{rec.filename}: the farm's repository already holds a different "
                f"{rec.name} {rec.version}, published by {by}; packages there never change "
                "under the same name, version and epoch: bump the version or epoch, or "
                "submit the build with replace: true"
            )

    async def publish(
        self,
        apks: Sequence[Path],
        arch: str,
        *,
        records: Sequence[IndexRecord] | None = None,
        origin: Origin | None = None,
        replace: bool = False,
    ) -> list[Replacement]:
        """Store ``apks`` under ``<arch>/`` and list them in the arch's signed index.
        ``records`` (the APKs' index records, in order) saves reading them again.
        Returns the packages replaced (only with ``replace`` in an immutable
        repository); raises :class:`PublishConflict` before writing anything if a file
        name is taken by other bytes."""
        if not apks:
            return []
        recs = list(records) if records is not None else await asyncio.to_thread(_records, apks)
        state = self._arches.setdefault(arch, _Arch())
        current = await self.current(arch)
        origins = await self.origins(arch) if self.immutable else {}
        todo = [
            (apk, rec)
            for apk, rec in zip(apks, recs, strict=True)
            if (held := current.get(rec.filename)) is None or held.checksum != rec.checksum
        ]
        if not todo:
            return []  # already published, byte for byte (checksums match)
        if self.immutable and not replace:
            self._conflicts(arch, [rec for _, rec in todo], current, origins)
        replaced = [
            Replacement(
                arch=arch,
                filename=rec.filename,
                old=held.checksum_field,
                new=rec.checksum_field,
                old_origin=origins.get(rec.filename),
            )
            for _, rec in todo
            if self.immutable and (held := current.get(rec.filename)) is not None
        ]
        # checked and claimed with no await in between: two publications of other
        # bytes under one name cannot both pass
        for _, rec in todo:
            claim = state.claims.get(rec.filename)
            if claim is not None and claim.checksum == rec.checksum:
                claim.holders += 1
            else:
                state.claims[rec.filename] = _Claim(checksum=rec.checksum, origin=origin)
        try:
            await asyncio.gather(
                *(self.storage.put_file(apk, self.key(arch, apk.name)) for apk, _ in todo)
            )
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            state.waiting.append(([rec for _, rec in todo], done))
            if origin is not None and self.immutable:
                state.pending_origins.update({rec.filename: origin for _, rec in todo})
            async with state.lock:
                if not done.done():
                    await self._write_waiting(arch, state, done)
            await done
        finally:
            for _, rec in todo:
                claim = state.claims.get(rec.filename)
                if claim is not None and claim.checksum == rec.checksum:
                    claim.holders -= 1
                    if claim.holders <= 0:
                        del state.claims[rec.filename]
        for r in replaced:
            by = f" (published by {r.old_origin.describe()})" if r.old_origin else ""
            _log.warning(
                "%s%s, by %s", r.describe(), by, origin.describe() if origin else "a publication"
            )
        return replaced

    async def _write_waiting(self, arch: str, state: _Arch, done: asyncio.Future[None]) -> None:
        """Under the arch's lock across replicas: one index for every publication
        waiting (those that queued while the lock was awaited too)."""
        try:
            async with self.lock(self.lock_name(arch)):
                batch, state.waiting = state.waiting, []
                try:
                    await self._write(arch, state, [r for recs_, _ in batch for r in recs_])
                except BaseException as exc:
                    for _, fut in batch:
                        if fut is not done and not fut.done():
                            fut.set_exception(exc)
                    raise
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)
        except BaseException:
            # the lock was not had: this publication leaves the queue (the others stay
            # for the next writer)
            state.waiting = [(r, f) for r, f in state.waiting if f is not done]
            raise

    async def _write(self, arch: str, state: _Arch, new: Sequence[IndexRecord]) -> None:
        # what storage holds now: another replica may have written since we last did
        before = state.records or {}
        await self._refresh(arch, state)
        assert state.records is not None
        merged = dict(state.records)
        for rec in new:
            held = merged.get(rec.filename)
            knew = before.get(rec.filename)
            if (
                self.immutable
                and held is not None
                and held.checksum != rec.checksum
                and (knew is None or knew.checksum != held.checksum)
            ):
                # listed by another replica since this one checked: a race across them
                origin = (await self.origins(arch)).get(rec.filename)
                _log.error(
                    "%s/%s: another replica listed other bytes under this name "
                    "(%s) while this one stored its own: the later write wins",
                    arch,
                    rec.filename,
                    origin.describe() if origin else "origin unknown",
                )
            merged[rec.filename] = rec
        ours = {r.filename for r in new}
        mine = {n: o for n, o in state.pending_origins.items() if n in ours}
        if self.immutable and mine:
            # what storage holds, not what memory does: another replica may have
            # added to it (we hold the lock: nobody writes it now)
            known = await self._read_origins(arch)
            known.update(mine)
            # those of publications queued meanwhile wait for their own write
            for name in mine:
                del state.pending_origins[name]
            doc = {
                name: {"build_id": o.build_id, "package": o.package}
                for name, o in sorted(known.items())
                if name in merged
            }
            # before the index: an origin may name a file the index does not list yet,
            # never the other way round
            await self.storage.put_bytes(self.origins_key(arch), json.dumps(doc).encode())
            state.origins = known
            state.origins_generation += 1
        data = await asyncio.to_thread(self._render, merged)
        await self.storage.put_bytes(self.key(arch, INDEX_NAME), data)
        state.records = merged
        state.generation += 1
        state.version = await self._stored_version(arch)  # ours: nobody wrote since (lock)
        state.writes += 1

    def _render(self, records: dict[str, IndexRecord]) -> bytes:
        out = io.BytesIO()
        ordered = sorted(records.values(), key=_index_order)
        write_index_tar_gz(ordered, self.signer, out, description=self.description)
        return out.getvalue()


def _index_order(r: IndexRecord) -> tuple[str, str, str]:
    return (r.name, r.version, r.filename)


def _file_version(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            f.seek(max(0, st.st_size - 8))
            tail = f.read(8)
    except FileNotFoundError:
        return None
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}:{tail.hex()}"


def _records(apks: Sequence[Path]) -> list[IndexRecord]:
    return [IndexRecord.from_apk(p) for p in apks]


class StorageRepositoryReader:
    """The farm's published repository, read straight from its storage (a bucket is
    not a directory the resolver can open)."""

    def __init__(self, storage: Storage, prefix: str) -> None:
        self.storage = storage
        self.prefix = prefix

    async def exists(self, path: str) -> bool:
        return await self.storage.exists(f"{self.prefix}/{path}")

    async def stream(self, path: str) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.storage.iter_chunks(f"{self.prefix}/{path}"):
                yield chunk
        except StorageNotFound as exc:
            raise FileNotFoundError(path) from exc


class Publication:
    """The server's repositories: the farm's published one (``repo/`` of its storage,
    immutable: other bytes under a file name it holds are refused unless a build asks
    to ``replace``) and each build's staging one (a directory under the data dir, which
    the build's later packages install from)."""

    def __init__(
        self,
        settings: ServerSettings,
        storage: Storage,
        signer: Signer,
        locations: Locations,
        *,
        lock: NamedLock | None = None,
    ) -> None:
        """``lock``: the store's named lock (``store.hold_lock``), held around each
        index write of the farm's repository (which replicas share)."""
        self.settings = settings
        self.storage = storage
        self.signer = signer
        self.locations = locations
        self.published = RepoPublisher(
            storage,
            REPO,
            signer,
            immutable=True,
            origins_key=locations.layout.origins,
            lock=lock,
        )
        self._staging: dict[str, RepoPublisher] = {}
        self._staging_repos: dict[str, Repository] = {}
        self._published_repo: Repository | None = None

    def published_repository(self) -> Repository:
        """The farm's repository as build environments read it: its packages from the
        storage (in place when it is a directory), its index from the publisher's memory."""
        if self._published_repo is None:
            local = self.storage.local_path(REPO)
            self._published_repo = Repository(
                location=str(local) if local is not None else self.storage.url(REPO),
                reader=None if local is not None else StorageRepositoryReader(self.storage, REPO),
                snapshot=self.published.snapshot,
            )
        return self._published_repo

    def staging(self, build_id: str) -> RepoPublisher:
        publisher = self._staging.get(build_id)
        if publisher is None:
            local = open_storage(
                StorageSpec(kind="local", path=self.settings.staging_repo(build_id))
            )
            publisher = self._staging[build_id] = RepoPublisher(
                local, "", self.signer, description=f"melange2 staging {build_id}"
            )
        return publisher

    def staging_repository(self, build_id: str) -> Repository:
        repo = self._staging_repos.get(build_id)
        if repo is None:
            repo = self._staging_repos[build_id] = Repository(
                location=str(self.settings.staging_repo(build_id)),
                snapshot=self.staging(build_id).snapshot,
            )
        return repo

    def forget(self, build_id: str) -> None:
        """A build ended: drop its staging publisher (its directory stays)."""
        self._staging.pop(build_id, None)
        self._staging_repos.pop(build_id, None)

    # -- one package ----------------------------------------------------------------------

    async def publish_package(
        self,
        job: PackageJob,
        build: Build,
        apks: Sequence[Path],
        records: Sequence[IndexRecord],
        note: Callable[[str], None],
    ) -> None:
        """A package's packages, just built or reused: into its build's staging
        repository, and into the farm's unless the build publishes on success only.
        Replacements (``replace: true``) are noted, one line each."""
        replace = build.spec.replace
        # the farm's repository never gets other bytes under a name it holds (unless
        # the build asked to replace): refused before anything is staged
        await self.published.check(job.arch, records, replace=replace)
        # when the farm's repository already holds exactly these packages (a reused
        # build), the build's later packages install them from there: no staging
        published = [await self.published.has(job.arch, r) for r in records]
        if not all(published):
            await self.staging(job.build_id).publish(apks, job.arch, records=records)
        if build.spec.publish == "package":
            replaced = await self.published.publish(
                apks,
                job.arch,
                records=records,
                origin=Origin(build_id=job.build_id, package=job.name),
                replace=replace,
            )
            for r in replaced:
                note(f"{r.describe()} (replace: true)\n")

    # -- a whole build --------------------------------------------------------------------

    async def build_ending(self, build: Build, status: BuildStatus) -> None:
        """Before a build's final status is written: publish it if it waited for success."""
        try:
            if status is BuildStatus.SUCCESS:
                await self.publish_build(build)
        finally:
            self.forget(build.id)

    async def publish_build(self, build: Build) -> None:
        """For builds that publish on success: every package into the farm's repository,
        all or none (every conflict is found before anything is written)."""
        if build.spec.publish != "build":
            return
        scratch = self.settings.data_dir / "work" / f"{build.id}-publish"
        groups: dict[tuple[str, str], tuple[list[Path], list[IndexRecord]]] = {}
        staged = self.staging(build.id)
        for job in build.packages:
            if job.status is not PackageStatus.SUCCESS:
                continue
            prefix = self.locations.artifacts_key(job)
            for obj in await self.storage.list(prefix):
                rel = obj.key[len(prefix) + 1 :] if obj.key.startswith(prefix + "/") else obj.key
                if not rel.endswith(".apk") or rel.count("/") != 1:
                    continue
                arch, filename = rel.split("/")
                local = await self.storage.on_disk(obj.key, scratch / rel).fetch()
                record = (await staged.records(arch)).get(filename)
                if record is None:
                    record = await asyncio.to_thread(IndexRecord.from_apk, local)
                paths, recs = groups.setdefault((job.name, arch), ([], []))
                paths.append(local)
                recs.append(record)
        for (_, arch), (_, recs) in groups.items():
            await self.published.check(arch, recs, replace=build.spec.replace)
        await asyncio.gather(
            *(
                self.published.publish(
                    paths,
                    arch,
                    records=recs,
                    origin=Origin(build_id=build.id, package=name),
                    replace=build.spec.replace,
                )
                for (name, arch), (paths, recs) in sorted(groups.items())
            )
        )
        if scratch.exists():
            await asyncio.to_thread(shutil.rmtree, scratch, True)
