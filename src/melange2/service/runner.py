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

Whatever fails, before or inside an attempt (naming its log, opening it, planning,
building, storing, publishing, keeping the log), ends the attempt with a
``FarmError``: the scheduler then fails the package with the reason, never leaves it
running. Reasons (in the error and at the end of the log) have the server's paths
replaced by their role (:class:`~melange2.service.redact.Redactor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from melange2.apk.index import IndexRecord
from melange2.apk.signing import Signer
from melange2.build.environment_resolve import ResolvedEnvironment, Resolver
from melange2.build.executor import Builder, BuildOptions
from melange2.build.inputs import quick_digest, read_tree
from melange2.build.progress import LogFileSink, open_log
from melange2.buildkit.tls import ClientTLS
from melange2.errors import BuildkitUnavailable, FarmError, PackageFailed, SolveCancelled
from melange2.jobs import (
    Backend,
    Build,
    BuildSpec,
    BuildStatus,
    PackageJob,
    PackageStatus,
    StepOptions,
)
from melange2.recipe import Config
from melange2.repo.repository import Repository
from melange2.scheduler.loop import RunOutcome
from melange2.service.layout import REPO, Layout
from melange2.service.logs import CappedLog, LogHub
from melange2.service.publish import Origin, RepoPublisher
from melange2.service.redact import Redactor
from melange2.service.reuse import ReuseIndex, ReuseRecord
from melange2.service.settings import ServerSettings
from melange2.storage import Storage, StorageError, StorageNotFound, StorageSpec, open_storage
from melange2.timing import PhaseTimer


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


_log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SubmittedPackage:
    """A package of a build being submitted, as the reuse check at submission sees it."""

    name: str
    text: str  #: the config as submitted
    config: Config
    world: tuple[str, ...]  #: its environment's packages (empty: a ``--base-image``)
    sources: Mapping[str, bytes]  #: its source files


@dataclass(frozen=True, kw_only=True)
class Reusable:
    """A package whose inputs, resolved at submission, match an earlier build's."""

    record: ReuseRecord
    #: names and origins of the packages its environment installs
    installs: frozenset[str]


class BuildkitRunner:
    def __init__(
        self,
        settings: ServerSettings,
        builder: Builder,
        signer: Signer,
        storage: Storage,
        hub: LogHub | None = None,
        *,
        daemon_tls: Callable[[str], ClientTLS | None] = lambda addr: None,
    ) -> None:
        self.settings = settings
        #: how to reach a backend's daemon over TLS, by its address (the pool knows)
        self.daemon_tls = daemon_tls
        self.builder = builder
        self.signer = signer
        self.storage = storage
        self.hub = hub or LogHub()
        self.layout = Layout(bucket=storage.kind in ("gcs", "s3"))
        self.published = RepoPublisher(
            storage, REPO, signer, immutable=True, origins_key=self.layout.origins
        )
        self.redact = Redactor.for_server(
            data_dir=settings.data_dir, output_dir=settings.output_dir, key_path=settings.key_path
        )
        self.reuse = ReuseIndex(storage, self.layout)
        self._staging: dict[str, RepoPublisher] = {}
        self._staging_repos: dict[str, Repository] = {}
        self._published_repo: Repository | None = None

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

    def published_repository(self) -> Repository:
        """The farm's repository as build environments read it: its packages from the
        storage, its index from the publisher's memory."""
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

    # -- one attempt ----------------------------------------------------------------------

    async def run(
        self, job: PackageJob, build: Build, backend: Backend, attempt: int
    ) -> RunOutcome:
        """One attempt. Raises ``BuildkitUnavailable`` (a backend fault: retried),
        ``SolveCancelled``, or another ``FarmError`` with the reason the package failed;
        never anything else."""
        hub_key = f"{job.build_id}/{job.name}"
        try:
            live = self.live_log(job, attempt)
            key = self.log_key(job, attempt)
        except (ValueError, OSError) as exc:
            raise PackageFailed(f"cannot keep this package's log: {exc}") from exc
        outcome: RunOutcome | None = None
        try:
            try:
                outcome = await self._logged_attempt(job, build, backend, live, hub_key)
            except OSError as exc:  # the log itself cannot be written
                raise PackageFailed(self._reason(exc, "cannot write the log")) from exc
        finally:
            try:
                await asyncio.shield(self._keep_log(live, key))
            except (StorageError, OSError) as exc:
                _log.warning("keeping the log of %s", hub_key, exc_info=True)
                if outcome is not None:  # else the attempt's own failure is the reason
                    raise PackageFailed(self._reason(exc, "cannot store the log")) from exc
            finally:
                self.hub.notify(hub_key)
        return RunOutcome(
            log_path=self.log_location(job, attempt),
            output_path=outcome.output_path,
            cached=outcome.cached,
            input_digest=outcome.input_digest,
        )

    def _reason(self, exc: BaseException, what: str = "") -> str:
        """Why the package failed, for its client: ``[<what>: ]<message>`` for our
        errors, ``<what or "internal error">: <type>: <message>`` for others; server
        paths redacted."""
        if isinstance(exc, FarmError):
            return self.redact.text(f"{what}: {exc}" if what else str(exc))
        return self.redact.text(f"{what or 'internal error'}: {type(exc).__name__}: {exc}")

    async def _logged_attempt(
        self, job: PackageJob, build: Build, backend: Backend, live: Path, hub_key: str
    ) -> RunOutcome:
        with open_log(live) as raw:
            log = CappedLog(
                raw, self.settings.max_log_bytes, on_write=lambda: self.hub.notify(hub_key)
            )
            try:
                return await self._attempt(job, build, backend, log)
            except asyncio.CancelledError:
                log.write_final(b"\ncancelled\n")
                raise
            except (BuildkitUnavailable, SolveCancelled) as exc:
                log.write_final(f"\nerror: {self._reason(exc)}\n".encode())
                raise
            except Exception as exc:  # any step: the package fails with the reason
                reason = self._reason(exc)
                if not isinstance(exc, FarmError):
                    _log.exception("attempt of %s failed", hub_key)
                log.write_final(f"\nerror: {reason}\n".encode())
                raise PackageFailed(reason) from exc

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
        return BuildOptions(
            config=workdir / f"{job.name}.yaml",
            arch=job.arch,
            buildkit_addr=backend.addr,
            buildkit_tls=self.daemon_tls(backend.addr),
            registry=s.registry,
            out_dir=out_dir,
            cache_dir=s.data_dir / "cache",
            source_dir=source_dir if source_dir.is_dir() else None,
            signing_key=s.key_path,
            repositories=[
                self.staging_repository(job.build_id),
                self.published_repository(),
                *s.repositories,
            ],
            keyrings=[str(s.key_path) + ".pub", *s.keyrings],
            # the same StepOptions as the quick digest's (one place: they cannot drift)
            env=build.spec.options.env,
            with_test=build.spec.options.with_test,
            debug=build.spec.options.debug,
            cache_ref=s.cache_registry,
            cache_mode=s.cache_mode,
            # the SBOM names the config as submitted, not the server's work directory, and
            # .melange.yaml the farm's repositories, not this build's staging one (else
            # every build's package would differ and nothing could be reused)
            config_name=f"{job.name}.yaml",
            recorded_repositories=[str(r) for r in s.repositories],
            recorded_keyrings=list(s.keyrings),
        )

    async def _attempt(
        self, job: PackageJob, build: Build, backend: Backend, log: CappedLog
    ) -> RunOutcome:
        timer = PhaseTimer()
        try:
            return await self._timed_attempt(job, build, backend, log, timer)
        finally:
            log.write_final(f"\ntimings: {timer.summary()}\n".encode())

    async def _timed_attempt(
        self, job: PackageJob, build: Build, backend: Backend, log: CappedLog, timer: PhaseTimer
    ) -> RunOutcome:
        artifacts = self.artifacts_key(job)
        local_out = self.storage.local_path(artifacts)
        out_dir = local_out or self.settings.work_dir(job.build_id, job.name) / "out"
        opts = self._options(job, build, backend, out_dir)
        with timer.phase("plan"):
            planned = await self.builder.plan(opts)
            digest = planned.input_digest
            log.write(f"input digest {digest}\n".encode())
            quick = (
                await asyncio.to_thread(self._quick_of, job, build, planned.environment_key, opts)
                if planned.environment_key
                else None
            )
        publish_now = build.spec.publish == "package"
        if not build.spec.force:
            with timer.phase("reuse"):
                hit = await self.reuse.find(job.arch, digest)
                if hit is not None:
                    log.write(
                        f"inputs unchanged since {hit.build_id}/{hit.package}: "
                        "reusing its packages, nothing to build\n".encode()
                    )
                    await self._reuse(job, build, hit, artifacts, publish_now, log)
                    if quick is not None:
                        await self.reuse.remember_quick(quick, hit)
                    return RunOutcome(
                        output_path=self.storage.url(artifacts), cached=True, input_digest=digest
                    )
        result = await self.builder.run(planned, sinks=[LogFileSink(log)], timer=timer)
        apks = [p.path for p in result.packages]
        with timer.phase("store"):
            records = await asyncio.to_thread(lambda: [IndexRecord.from_apk(p) for p in apks])
            if local_out is None:
                await self._upload_outputs(out_dir, artifacts)
        with timer.phase("publish"):
            await self._publish(job, build, apks, records, publish_now, log)
        with timer.phase("remember"):
            record = await self.reuse.remember(
                arch=job.arch,
                digest=digest,
                build_id=job.build_id,
                package=job.name,
                artifacts=artifacts,
                records=records,
            )
            if quick is not None:
                await self.reuse.remember_quick(quick, record)
        if local_out is None:
            await asyncio.to_thread(shutil.rmtree, out_dir, True)
        return RunOutcome(output_path=self.storage.url(artifacts), input_digest=digest)

    def _quick_of(
        self, job: PackageJob, build: Build, environment_key: str, opts: BuildOptions
    ) -> str:
        """The attempt's quick digest, from the files the build keeps (as submitted)."""
        workdir = self.settings.build_dir(job.build_id)
        return self.quick(
            arch=job.arch,
            options=build.spec.options,
            text=opts.config.read_text(),
            pipelines=read_tree(workdir / "pipelines"),
            sources=read_tree(opts.source_dir),
            environment_key=environment_key,
        )

    def quick(
        self,
        *,
        arch: str,
        options: StepOptions,
        text: str,
        pipelines: Mapping[str, bytes],
        sources: Mapping[str, bytes],
        environment_key: str,
    ) -> str:
        return quick_digest(
            arch=arch,
            config_text=text,
            pipelines=pipelines,
            sources=sources,
            environment_key=environment_key,
            options=options.digest_fields(),
            signer=self.signer,
        )

    # -- reuse decided at submission ------------------------------------------------------

    async def reusable(
        self,
        arch: str,
        spec: BuildSpec,
        packages: Sequence[SubmittedPackage],
        pipelines: Mapping[str, bytes],
    ) -> dict[str, Reusable]:
        """The packages of a build being submitted that an earlier build already made
        from the same inputs, resolved now against the farm's repository: for each, the
        reuse record its quick digest led to, when every package that record names is
        still stored and already published. (:func:`~melange2.service.reuse.settle_reuse`
        then drops those a rebuilt package of the same build could change.)

        Thousands of packages are checked in a few batched calls, not one call each: a
        no-op resubmission of a distribution is this and nothing else."""
        if spec.force:
            return {}
        try:
            # an optimisation: a slow repository host never holds a submission longer
            async with asyncio.timeout(self.settings.fetch_timeout):
                resolved = await self._resolve_all(arch, packages)
        except Exception:  # the build reports it when the package runs
            _log.warning("reuse at submission skipped: cannot resolve", exc_info=True)
            return {}
        candidates = [(pkg, env) for pkg, env in zip(packages, resolved, strict=True) if env]

        def quick_keys() -> list[str]:
            return [
                self.layout.quick_record(
                    arch,
                    self.quick(
                        arch=arch,
                        options=spec.options,
                        text=pkg.text,
                        pipelines=pipelines,
                        sources=pkg.sources,
                        environment_key=env.key,
                    ),
                )
                for pkg, env in candidates
            ]

        keys = await asyncio.to_thread(quick_keys)
        found = await self.storage.read_many(keys)
        records = await asyncio.to_thread(lambda: [self.reuse.decode(d) for d in found])
        published = await self.published.current(arch)
        hits: dict[str, tuple[ReuseRecord, ResolvedEnvironment]] = {}
        for (pkg, env), record in zip(candidates, records, strict=True):
            if record is not None and all(
                (now := published.get(r.filename)) is not None and now.checksum == r.checksum
                for r in record.records
            ):
                hits[pkg.name] = (record, env)
        files = [f"{r.artifacts}/{f}" for r, _ in hits.values() for f in r.files()]
        present = dict(zip(files, await self.storage.exists_many(files), strict=True))
        return {
            name: Reusable(
                record=record,
                installs=frozenset(
                    n
                    for p in env.resolution.packages
                    for n in (p.record.name, p.record.origin)
                    if n
                ),
            )
            for name, (record, env) in hits.items()
            if all(present[f"{record.artifacts}/{f}"] for f in record.files())
        }

    async def _resolve_all(
        self, arch: str, packages: Sequence[SubmittedPackage]
    ) -> list[ResolvedEnvironment | None]:
        """Each package's environment as its build would resolve it now (the build's
        staging repository is empty yet); ``None`` where there is none or it fails."""
        s = self.settings
        resolvers: dict[tuple[tuple[str, ...], tuple[str, ...]], Resolver] = {}
        for pkg in packages:
            contents = pkg.config.environment.contents
            group = (tuple(contents.repositories), tuple(contents.keyring))
            if pkg.world and group not in resolvers:
                resolvers[group] = await self.builder.environments.resolver(
                    arch,
                    [*contents.repositories, self.published_repository(), *s.repositories],
                    [*contents.keyring, str(s.key_path) + ".pub", *s.keyrings],
                )

        def resolve_all() -> list[ResolvedEnvironment | None]:
            out: list[ResolvedEnvironment | None] = []
            for pkg in packages:
                contents = pkg.config.environment.contents
                resolver = resolvers.get((tuple(contents.repositories), tuple(contents.keyring)))
                try:
                    out.append(resolver.resolve(pkg.world) if resolver and pkg.world else None)
                except Exception:  # the build reports it when the package runs
                    out.append(None)
            return out

        return await asyncio.to_thread(resolve_all)

    async def adopt(self, build_id: str, reused: Mapping[str, ReuseRecord]) -> dict[str, str]:
        """Give each package reused at submission its own copy of the earlier artifacts
        (hard links locally, server-side copies in a bucket); returns their locations."""
        pairs = []
        where = {}
        for name, record in reused.items():
            artifacts = self.layout.artifacts(build_id, name)
            pairs += [(f"{record.artifacts}/{f}", f"{artifacts}/{f}") for f in record.files()]
            where[name] = self.storage.url(artifacts)
        await self.storage.copy_many(pairs)
        return where

    async def forget_artifacts(self, build_id: str, names: Sequence[str]) -> None:
        """Undo :meth:`adopt` for a submission that failed after it (best effort)."""
        for name in names:
            prefix = self.layout.artifacts(build_id, name)
            with contextlib.suppress(StorageError):
                for obj in await self.storage.list(prefix):
                    await self.storage.delete(obj.key)

    async def reuse_note(self, job: PackageJob) -> bytes:
        """The log of a package reused at submission (it never ran anywhere)."""
        lines = [f"input digest {job.input_digest}"]
        record = await self.reuse.find(job.arch, job.input_digest) if job.input_digest else None
        since = f" since {record.build_id}/{record.package}" if record else ""
        lines.append(
            f"inputs unchanged{since}: its packages were reused when the build was "
            "submitted, nothing was built"
        )
        return ("\n".join(lines) + "\n").encode()

    async def _publish(
        self,
        job: PackageJob,
        build: Build,
        apks: Sequence[Path],
        records: Sequence[IndexRecord],
        publish_now: bool,
        log: CappedLog,
    ) -> None:
        # the farm's repository never gets other bytes under a name it holds (unless
        # the build asked to replace): refused before anything is staged
        await self.published.check(job.arch, records, replace=build.spec.replace)
        # when the farm's repository already holds exactly these packages (a reused
        # build), the build's later packages install them from there: no staging
        published = [await self.published.has(job.arch, r) for r in records]
        if not all(published):
            await self.staging(job.build_id).publish(apks, job.arch, records=records)
        if publish_now:
            replaced = await self.published.publish(
                apks,
                job.arch,
                records=records,
                origin=Origin(build_id=job.build_id, package=job.name),
                replace=build.spec.replace,
            )
            for r in replaced:
                log.write(f"{r.describe()} (replace: true)\n".encode())

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
        self,
        job: PackageJob,
        build: Build,
        hit: ReuseRecord,
        artifacts: str,
        publish_now: bool,
        log: CappedLog,
    ) -> None:
        """Copy the earlier build's packages into this package's artifacts and publish
        them as if just built (the index records come from the reuse record)."""
        scratch = self.settings.work_dir(job.build_id, job.name) / "reused"
        apks: list[Path] = []
        for name in hit.files():
            source, target = f"{hit.artifacts}/{name}", f"{artifacts}/{name}"
            await self.storage.copy(source, target)
            local = self.storage.local_path(target)
            if local is None:  # publishing needs the file here
                local = scratch / name
                await self.storage.get_file(target, local)
            apks.append(local)
        await self._publish(job, build, apks, hit.records, publish_now, log)
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
        if build.spec.publish != "build":
            return
        scratch = self.settings.data_dir / "work" / f"{build.id}-publish"
        groups: dict[tuple[str, str], tuple[list[Path], list[IndexRecord]]] = {}
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
                paths, recs = groups.setdefault((job.name, arch), ([], []))
                paths.append(local)
                recs.append(record)
        # every conflict first: the build's packages are published all or none
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
