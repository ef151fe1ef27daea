"""The package runner the scheduler calls: one package of a build, on one backend,
with the build's staging repository and the farm's published repository available to
its environment, then published into both."""

from __future__ import annotations

from pathlib import Path

from melange2.apk.signing import Signer
from melange2.build.executor import Builder, BuildOptions
from melange2.build.progress import LogFileSink, open_log
from melange2.errors import FarmError
from melange2.jobs import Backend, Build, PackageJob
from melange2.scheduler.loop import RunOutcome
from melange2.service.publish import Publisher
from melange2.service.settings import ServerSettings


def log_name(attempt: int) -> str:
    """Each attempt keeps its own log."""
    return "build.log" if attempt == 1 else f"build.attempt-{attempt}.log"


class BuildkitRunner:
    def __init__(self, settings: ServerSettings, builder: Builder, signer: Signer) -> None:
        self.settings = settings
        self.builder = builder
        self.signer = signer
        self.publisher = Publisher(signer)

    def log_path(self, job: PackageJob, attempt: int) -> Path:
        return self.settings.package_dir(job.build_id, job.name) / "logs" / log_name(attempt)

    def log_location(self, job: PackageJob, attempt: int) -> str:
        return str(self.log_path(job, attempt))

    async def run(
        self, job: PackageJob, build: Build, backend: Backend, attempt: int
    ) -> RunOutcome:
        s = self.settings
        workdir = s.build_dir(job.build_id)
        out_dir = s.package_dir(job.build_id, job.name)
        source_dir = workdir / "src" / job.name
        spec_env = build.spec.get("env") or {}
        opts = BuildOptions(
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
                str(s.published_repo),
                *s.repositories,
            ],
            keyrings=[str(s.key_path) + ".pub", *s.keyrings],
            env={str(k): str(v) for k, v in spec_env.items()} if isinstance(spec_env, dict) else {},
            with_test=bool(build.spec.get("with_test")),
            cache_ref=s.cache_registry,
            cache_mode=s.cache_mode,
        )
        log = self.log_path(job, attempt)
        with open_log(log) as out:
            try:
                result = await self.builder.build(opts, sinks=[LogFileSink(out)])
            except FarmError as exc:
                out.write(f"\nerror: {exc}\n".encode())
                raise
        apks = [p.path for p in result.packages]
        await self.publisher.publish(apks, s.staging_repo(job.build_id), job.arch)
        await self.publisher.publish(apks, s.published_repo, job.arch)
        return RunOutcome(log_path=str(log), output_path=str(out_dir))
