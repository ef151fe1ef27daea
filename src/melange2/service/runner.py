"""The package runner the scheduler calls: one attempt at one package of a build, on one
backend. Nothing else: reuse decided at submission is :mod:`.reuse`'s, a whole build's
publication :mod:`.publish`'s, where things are kept :mod:`.layout`'s.

An attempt:

1. plans the build (parse, environment, sources, LLB) and works out its input digest;
2. if an earlier build had the same digest and its packages are still stored, reuses
   them (``cached``), unless the build asked for ``force``; else solves on the backend;
3. keeps the packages in storage (``<package>/<arch>/`` or ``.../artifacts/<arch>/``)
   and publishes them (:meth:`~.publish.Publication.publish_package`: the build's
   staging repository, and the farm's unless the build publishes only on success);
4. keeps the log: written locally while it grows (followers are woken on each write),
   capped at ``--max-log-bytes``, uploaded when the attempt ends if storage is a bucket.

Whatever fails, before or inside an attempt (naming its log, opening it, planning,
building, storing, publishing, keeping the log), ends the attempt with a
``FarmError``: the scheduler then fails the package with the reason, never leaves it
running. Reasons (in the error and at the end of the log) have the server's paths
replaced by their role (:class:`~melange2.service.redact.Redactor`).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from melange2.apk.index import IndexRecord
from melange2.build.executor import Builder, BuildOptions
from melange2.build.inputs import read_tree
from melange2.build.progress import LogFileSink, open_log
from melange2.build.source_cache import SourceCache
from melange2.buildkit.tls import ClientTLS
from melange2.errors import BuildkitUnavailable, FarmError, PackageFailed, SolveCancelled
from melange2.jobs import Backend, Build, PackageJob
from melange2.scheduler.loop import RunOutcome
from melange2.service.layout import Locations
from melange2.service.limits import Watchdog, wall_limit
from melange2.service.logs import CappedLog, LogHub
from melange2.service.publish import Publication
from melange2.service.redact import Redactor
from melange2.service.reuse import ReuseIndex, ReuseRecord
from melange2.service.secrets import SecretMask, build_secrets
from melange2.service.settings import ServerSettings
from melange2.storage import OnDisk, StorageError
from melange2.timing import PhaseTimer

_log = logging.getLogger(__name__)


class BuildkitRunner:
    """Runs one attempt at a package (the scheduler's
    :class:`~melange2.scheduler.loop.PackageRunner`)."""

    def __init__(
        self,
        settings: ServerSettings,
        builder: Builder,
        locations: Locations,
        publication: Publication,
        reuse: ReuseIndex,
        hub: LogHub | None = None,
        *,
        daemon_tls: Callable[[str], ClientTLS | None] = lambda addr: None,
        source_cache: SourceCache | None = None,
    ) -> None:
        self.settings = settings
        self.builder = builder
        self.locations = locations
        self.storage = locations.storage
        self.publication = publication
        self.reuse = reuse
        self.hub = hub or LogHub()
        self.source_cache = source_cache
        #: how to reach a backend's daemon over TLS, by its address (the pool knows)
        self.daemon_tls = daemon_tls
        self.redact = Redactor.for_server(
            data_dir=settings.data_dir, output_dir=settings.output_dir, key_path=settings.key_path
        )
        #: logs being kept (shielded: a cancelled attempt's log is still stored)
        self._keeping: set[asyncio.Task[None]] = set()

    async def drain(self) -> None:
        """Wait for the logs still being kept (after the scheduler stopped, before the
        storage closes): a cancelled attempt's log is stored, not lost."""
        while self._keeping:
            await asyncio.gather(*self._keeping, return_exceptions=True)

    def log_location(self, job: PackageJob, attempt: int) -> str:
        return self.locations.log_location(job, attempt)

    async def run(
        self, job: PackageJob, build: Build, backend: Backend, attempt: int
    ) -> RunOutcome:
        """One attempt. Raises ``BuildkitUnavailable`` (a backend fault: retried),
        ``SolveCancelled``, or another ``FarmError`` with the reason the package failed;
        never anything else."""
        hub_key = f"{job.build_id}/{job.name}"
        try:
            log = self.locations.log(job, attempt)
        except (ValueError, OSError) as exc:
            raise PackageFailed(f"cannot keep this package's log: {exc}") from exc
        outcome: RunOutcome | None = None
        try:
            try:
                outcome = await self._logged_attempt(job, build, backend, log.path, hub_key)
            except OSError as exc:  # the log itself cannot be written
                raise PackageFailed(self._reason(exc, "cannot write the log")) from exc
        finally:
            try:
                keeping = asyncio.ensure_future(self._keep_log(log))
                self._keeping.add(keeping)
                keeping.add_done_callback(self._keeping.discard)
                await asyncio.shield(keeping)
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
        mask = SecretMask(build_secrets(self.settings.secret_env, build.spec.secrets).values())
        with open_log(live) as raw:
            log = CappedLog(
                raw,
                self.settings.max_log_bytes,
                on_write=lambda: self.hub.notify(hub_key),
                mask=mask,
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
                reason = mask.text(self._reason(exc))
                if not isinstance(exc, FarmError):
                    _log.exception("attempt of %s failed", hub_key)
                log.write_final(f"\nerror: {reason}\n".encode())
                raise PackageFailed(reason) from exc

    async def _keep_log(self, log: OnDisk) -> None:
        """The log into storage (nothing to do when it was written in place)."""
        await log.store()
        await log.discard()

    def _options(self, job: PackageJob, build: Build, backend: Backend, out: Path) -> BuildOptions:
        s = self.settings
        workdir = s.build_dir(job.build_id)
        source_dir = workdir / "src" / job.name
        step = build.spec.options  # the quick digest's options too: one place
        return BuildOptions(
            config=workdir / f"{job.name}.yaml",
            arch=job.arch,
            buildkit_addr=backend.addr,
            buildkit_tls=self.daemon_tls(backend.addr),
            registry=s.registry,
            out_dir=out,
            cache_dir=s.data_dir / "cache",
            source_dir=source_dir if source_dir.is_dir() else None,
            signing_key=s.key_path,
            repositories=[
                self.publication.staging_repository(job.build_id),
                self.publication.published_repository(),
                *s.repositories,
            ],
            keyrings=[str(s.key_path) + ".pub", *s.keyrings],
            env=step.env,
            with_test=step.with_test,
            debug=step.debug,
            force=build.spec.force,
            cache_ref=s.cache_registry,
            cache_mode=s.cache_mode,
            source_cache=self.source_cache,
            # the SBOM names the config as submitted, not the server's work directory, and
            # .melange.yaml the farm's repositories, not this build's staging one (else
            # every build's package would differ and nothing could be reused)
            config_name=f"{job.name}.yaml",
            recorded_repositories=[str(r) for r in s.repositories],
            recorded_keyrings=list(s.keyrings),
            secrets=build_secrets(s.secret_env, build.spec.secrets),
        )

    async def _attempt(
        self, job: PackageJob, build: Build, backend: Backend, log: CappedLog
    ) -> RunOutcome:
        timer = PhaseTimer()
        limit, source = wall_limit(self.settings.package_timeout, build.spec.timeout_s)
        watch = Watchdog(limit=limit, source=source, silent=self.settings.max_silent)
        try:
            async with watch.guard():
                return await self._timed_attempt(job, build, backend, log, timer, watch)
        finally:
            log.write_final(f"\ntimings: {timer.summary()}\n".encode())

    async def _timed_attempt(
        self,
        job: PackageJob,
        build: Build,
        backend: Backend,
        log: CappedLog,
        timer: PhaseTimer,
        watch: Watchdog,
    ) -> RunOutcome:
        out = self.locations.outputs(job)
        artifacts = out.key
        opts = self._options(job, build, backend, out.path)
        with timer.phase("plan"):
            planned = await self.builder.plan(opts)
            digest = planned.input_digest
            log.write(f"input digest {digest}\n".encode())
            watch.tighten(planned.config.package.timeout, "package.timeout")
            if planned.environment_installs:
                listed = "".join(f"\n  {line}" for line in planned.environment_installs)
                log.write(f"environment installs:{listed}\n".encode())
            for missing in planned.source_cache_missing:
                log.write(f"source cache: no {missing} (its fetch downloads it)\n".encode())
            quick = (
                await asyncio.to_thread(self._quick_of, job, build, planned.environment_key, opts)
                if planned.environment_key
                else None
            )
        if not build.spec.force:
            with timer.phase("reuse"):
                hit = await self.reuse.find(job.arch, digest)
                if hit is not None:
                    log.write(
                        f"inputs unchanged since {hit.build_id}/{hit.package}: "
                        "reusing its packages, nothing to build\n".encode()
                    )
                    await self._reuse(job, build, hit, artifacts, log)
                    if quick is not None:
                        await self.reuse.remember_quick(quick, hit)
                    return RunOutcome(
                        output_path=self.storage.url(artifacts), cached=True, input_digest=digest
                    )
        watch.watch_silence()
        result = await self.builder.run(planned, sinks=[LogFileSink(log), watch], timer=timer)
        apks = [p.path for p in result.packages]
        with timer.phase("store"):
            records = await asyncio.to_thread(lambda: [IndexRecord.from_apk(p) for p in apks])
            await out.store()
        with timer.phase("publish"):
            await self.publication.publish_package(job, build, apks, records, _noter(log))
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
        await out.discard()
        return RunOutcome(output_path=self.storage.url(artifacts), input_digest=digest)

    def _quick_of(
        self, job: PackageJob, build: Build, environment_key: str, opts: BuildOptions
    ) -> str:
        """The attempt's quick digest, from the files the build keeps (as submitted)."""
        workdir = self.settings.build_dir(job.build_id)
        return self.reuse.quick(
            arch=job.arch,
            options=build.spec.options,
            secrets=build_secrets(self.settings.secret_env, build.spec.secrets),
            text=opts.config.read_text(),
            pipelines=read_tree(workdir / "pipelines"),
            sources=read_tree(opts.source_dir),
            environment_key=environment_key,
        )

    async def _reuse(
        self, job: PackageJob, build: Build, hit: ReuseRecord, artifacts: str, log: CappedLog
    ) -> None:
        """Copy the earlier build's packages into this package's artifacts and publish
        them as if just built (the index records come from the reuse record)."""
        scratch = self.settings.work_dir(job.build_id, job.name) / "reused"
        apks: list[Path] = []
        copies = []
        for name in hit.files():
            source, target = f"{hit.artifacts}/{name}", f"{artifacts}/{name}"
            await self.storage.copy(source, target)
            copy = self.storage.on_disk(target, scratch / name)  # publishing needs the file
            apks.append(await copy.fetch())
            copies.append(copy)
        await self.publication.publish_package(job, build, apks, hit.records, _noter(log))
        for copy in copies:
            await copy.discard()
        await asyncio.to_thread(shutil.rmtree, scratch, True)  # what is left of the scratch


def _noter(log: CappedLog) -> Callable[[str], None]:
    def note(line: str) -> None:
        log.write(line.encode())

    return note
