"""The package runner the scheduler calls: one package of a build, on one backend.

For each attempt:

1. plan the build (parse, environment, sources, LLB) and work out its input digest;
2. if an earlier build had the same digest and its packages are still stored, reuse
   them (``cached``), unless the build asked for ``force``; else solve on the backend;
3. keep the packages in storage (``<package>/<arch>/`` or ``.../artifacts/<arch>/``),
   publish them into the build's staging repository (so its later packages install
   them) and, unless the build publishes only on success, into the farm's repository;
4. keep the log: written locally while it grows (followers are woken on each write),
   capped at ``--max-log-bytes``, uploaded when the attempt ends if storage is a bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from melange2.apk.index import IndexRecord
from melange2.apk.signing import Signer
from melange2.build.executor import Builder, BuildOptions
from melange2.build.progress import LogFileSink, open_log
from melange2.errors import FarmError
from melange2.jobs import Backend, Build, BuildStatus, PackageJob, PackageStatus
from melange2.repo.repository import Repository
from melange2.scheduler.loop import RunOutcome
from melange2.service.layout import REPO, Layout
from melange2.service.logs import CappedLog, LogHub
from melange2.service.publish import RepoPublisher
from melange2.service.reuse import ReuseIndex, ReuseRecord
from melange2.service.settings import ServerSettings
from melange2.storage import Storage, StorageNotFound, StorageSpec, open_storage


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


def publish_mode(build: Build) -> str:
    """``package`` (default): into the farm's repository as each package succeeds;
    ``build``: only once every package of the build has succeeded."""
    mode = build.spec.get("publish")
    return "build" if mode == "build" else "package"


class BuildkitRunner:
    def __init__(
        self,
        settings: ServerSettings,
        builder: Builder,
        signer: Signer,
        storage: Storage,
        hub: LogHub | None = None,
    ) -> None:
        self.settings = settings
        self.builder = builder
        self.signer = signer
        self.storage = storage
        self.hub = hub or LogHub()
        self.layout = Layout(bucket=storage.kind in ("gcs", "s3"))
        self.published = RepoPublisher(storage, REPO, signer)
        self.reuse = ReuseIndex(storage, self.layout)
        self._staging: dict[str, RepoPublisher] = {}

    # -- where things are -----------------------------------------------------------------

    def log_key(self, job: PackageJob, attempt: int) -> str:
        return self.layout.log(job.build_id, job.name, attempt)

    def log_location(self, job: PackageJob, attempt: int) -> str:
        return self.storage.url(self.log_key(job, attempt))

    def live_log(self, job: PackageJob, attempt: int) -> Path:
        """Where the attempt's log is written while it runs."""
        key = self.log_key(job, attempt)
        local = self.storage.local_path(key)
        if local is not None:
            return local
        return self.settings.work_dir(job.build_id, job.name) / "logs" / key.rsplit("/", 1)[-1]

    def artifacts_key(self, job: PackageJob) -> str:
        return self.layout.artifacts(job.build_id, job.name)

    def published_repository(self) -> str | Repository:
        """The farm's repository as build environments read it."""
        local = self.storage.local_path(REPO)
        if local is not None:
            return str(local)
        return Repository(
            location=self.storage.url(REPO), reader=StorageRepositoryReader(self.storage, REPO)
        )

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

    def forget(self, build_id: str) -> None:
        """A build ended: drop its staging publisher (its directory stays)."""
        self._staging.pop(build_id, None)

    # -- one attempt ----------------------------------------------------------------------

    async def run(
        self, job: PackageJob, build: Build, backend: Backend, attempt: int
    ) -> RunOutcome:
        live = self.live_log(job, attempt)
        hub_key = f"{job.build_id}/{job.name}"
        try:
            with open_log(live) as raw:
                log = CappedLog(
                    raw, self.settings.max_log_bytes, on_write=lambda: self.hub.notify(hub_key)
                )
                try:
                    outcome = await self._attempt(job, build, backend, log)
                except FarmError as exc:
                    log.write_final(f"\nerror: {exc}\n".encode())
                    raise
                except asyncio.CancelledError:
                    log.write_final(b"\ncancelled\n")
                    raise
            return RunOutcome(
                log_path=self.log_location(job, attempt),
                output_path=outcome.output_path,
                cached=outcome.cached,
                input_digest=outcome.input_digest,
            )
        finally:
            await asyncio.shield(self._keep_log(live, self.log_key(job, attempt)))
            self.hub.notify(hub_key)

    async def _keep_log(self, live: Path, key: str) -> None:
        if self.storage.local_path(key) is not None:
            return  # written in place
        with contextlib.suppress(FileNotFoundError):
            await self.storage.put_file(live, key)
            await asyncio.to_thread(live.unlink)

    def _options(
        self, job: PackageJob, build: Build, backend: Backend, out_dir: Path
    ) -> BuildOptions:
        s = self.settings
        workdir = s.build_dir(job.build_id)
        source_dir = workdir / "src" / job.name
        spec_env = build.spec.get("env") or {}
        return BuildOptions(
            config=workdir / f"{job.name}.yaml",
            arch=job.arch,
            buildkit_addr=backend.addr,
            registry=s.registry,
            out_dir=out_dir,
            cache_dir=s.data_dir / "cache",
            source_dir=source_dir if source_dir.is_dir() else None,
            signing_key=s.key_path,
            repositories=[
                str(s.staging_repo(job.build_id)),
                self.published_repository(),
                *s.repositories,
            ],
            keyrings=[str(s.key_path) + ".pub", *s.keyrings],
            env={str(k): str(v) for k, v in spec_env.items()} if isinstance(spec_env, dict) else {},
            with_test=bool(build.spec.get("with_test")),
            debug=bool(build.spec.get("debug")),
            cache_ref=s.cache_registry,
            cache_mode=s.cache_mode,
        )

    async def _attempt(
        self, job: PackageJob, build: Build, backend: Backend, log: CappedLog
    ) -> RunOutcome:
        artifacts = self.artifacts_key(job)
        local_out = self.storage.local_path(artifacts)
        out_dir = local_out or self.settings.work_dir(job.build_id, job.name) / "out"
        opts = self._options(job, build, backend, out_dir)
        planned = await self.builder.plan(opts)
        digest = planned.input_digest
        log.write(f"input digest {digest}\n".encode())
        publish_now = publish_mode(build) == "package"
        if not build.spec.get("force"):
            hit = await self.reuse.find(job.arch, digest)
            if hit is not None:
                log.write(
                    f"inputs unchanged since {hit.build_id}/{hit.package}: "
                    "reusing its packages, nothing to build\n".encode()
                )
                await self._reuse(job, hit, artifacts, publish_now)
                return RunOutcome(
                    output_path=self.storage.url(artifacts), cached=True, input_digest=digest
                )
        result = await self.builder.run(planned, sinks=[LogFileSink(log)])
        apks = [p.path for p in result.packages]
        records = await asyncio.to_thread(lambda: [IndexRecord.from_apk(p) for p in apks])
        if local_out is None:
            await self._upload_outputs(out_dir, artifacts)
        await self._publish(job, apks, records, publish_now)
        await self.reuse.remember(
            arch=job.arch,
            digest=digest,
            build_id=job.build_id,
            package=job.name,
            artifacts=artifacts,
            records=records,
        )
        if local_out is None:
            await asyncio.to_thread(shutil.rmtree, out_dir, True)
        return RunOutcome(output_path=self.storage.url(artifacts), input_digest=digest)

    async def _publish(
        self,
        job: PackageJob,
        apks: Sequence[Path],
        records: Sequence[IndexRecord],
        publish_now: bool,
    ) -> None:
        # when the farm's repository already holds exactly these packages (a reused
        # build), the build's later packages install them from there: no staging
        published = [await self.published.has(job.arch, r) for r in records]
        if not all(published):
            await self.staging(job.build_id).publish(apks, job.arch, records=records)
        if publish_now:
            await self.published.publish(apks, job.arch, records=records)

    async def _upload_outputs(self, out_dir: Path, artifacts: str) -> None:
        files = await asyncio.to_thread(
            lambda: [p for p in sorted(out_dir.rglob("*")) if p.is_file()]
        )
        await asyncio.gather(
            *(
                self.storage.put_file(p, f"{artifacts}/{p.relative_to(out_dir).as_posix()}")
                for p in files
            )
        )

    async def _reuse(
        self, job: PackageJob, hit: ReuseRecord, artifacts: str, publish_now: bool
    ) -> None:
        """Copy the earlier build's packages into this package's artifacts and publish
        them as if just built (the index records come from the reuse record)."""
        scratch = self.settings.work_dir(job.build_id, job.name) / "reused"
        apks: list[Path] = []
        for name in hit.files():
            source, target = f"{hit.artifacts}/{name}", f"{artifacts}/{name}"
            local = self.storage.local_path(source)
            if local is None:
                local = scratch / name
                await self.storage.get_file(source, local)
            await self.storage.put_file(local, target)
            apks.append(self.storage.local_path(target) or local)
        await self._publish(job, apks, hit.records, publish_now)
        if scratch.exists():
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    # -- publication of a whole build -----------------------------------------------------

    async def build_ending(self, build: Build, status: BuildStatus) -> None:
        """Before a build's final status is written: publish it if it waited for success."""
        try:
            if status is BuildStatus.SUCCESS:
                await self.publish_build(build)
        finally:
            self.forget(build.id)

    async def publish_build(self, build: Build) -> None:
        """For builds that publish on success: every package into the farm's repository."""
        if publish_mode(build) != "build":
            return
        scratch = self.settings.data_dir / "work" / f"{build.id}-publish"
        by_arch: dict[str, tuple[list[Path], list[IndexRecord]]] = {}
        staged = self.staging(build.id)
        for job in build.packages:
            if job.status is not PackageStatus.SUCCESS:
                continue
            prefix = self.artifacts_key(job)
            for obj in await self.storage.list(prefix):
                rel = obj.key[len(prefix) + 1 :] if obj.key.startswith(prefix + "/") else obj.key
                if not rel.endswith(".apk") or rel.count("/") != 1:
                    continue
                arch, filename = rel.split("/")
                local = self.storage.local_path(obj.key)
                if local is None:
                    local = scratch / rel
                    await self.storage.get_file(obj.key, local)
                record = (await staged.records(arch)).get(filename)
                if record is None:
                    record = await asyncio.to_thread(IndexRecord.from_apk, local)
                paths, recs = by_arch.setdefault(arch, ([], []))
                paths.append(local)
                recs.append(record)
        for arch, (paths, recs) in sorted(by_arch.items()):
            await self.published.publish(paths, arch, records=recs)
        if scratch.exists():
            await asyncio.to_thread(shutil.rmtree, scratch, True)
