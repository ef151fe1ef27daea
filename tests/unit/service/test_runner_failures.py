"""The runner never leaves a package running: whatever step of an attempt fails, the
package ends ``failed`` with the reason (no server path in it), the scheduler goes on
dispatching, and cancel wins. The real BuildkitRunner and Scheduler on the memory store;
the builder (no BuildKit here) and a storage that fails on demand are fakes, named as
such (unit test only); the real path runs end to end in tests/integration."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import fsspec  # type: ignore[import-untyped]
import pytest

from melange2.apk.signing import Signer, generate_key
from melange2.apk.writer import write_apk
from melange2.build.executor import (
    Builder,
    BuildOptions,
    BuildResult,
    BuiltPackage,
    PlannedBuild,
    package_infos,
)
from melange2.buildkit._proto.solver.pb.ops_pb2 import Definition
from melange2.errors import RecipeError, SolveFailed
from melange2.ids import BuildId
from melange2.jobs import Build, BuildSpec, BuildStatus, PackageJob, PackageStatus
from melange2.pool.config import BackendSpec, PoolConfig
from melange2.pool.pool import BackendPool
from melange2.recipe import load_config
from melange2.scheduler.loop import Scheduler
from melange2.service.layout import Locations
from melange2.service.publish import Publication
from melange2.service.reuse import ReuseIndex
from melange2.service.runner import BuildkitRunner
from melange2.service.settings import ServerSettings
from melange2.storage import Storage, StorageError, StorageSpec
from melange2.store.memory import MemoryStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Fault = Callable[[str, str], bool]  # (operation, key) -> fail?


class FaultyStorage(Storage):
    """Memory storage that fails the operations ``fault`` picks (a fake, unit test only)."""

    def __init__(self) -> None:
        root = f"/faulty-{secrets.token_hex(6)}"
        fs = fsspec.filesystem("memory", skip_instance_cache=True)
        super().__init__(fs, root, kind="memory", url_base=f"memory://{root}", retry_attempts=1)
        self.fault: Fault = lambda op, key: False

    def _check(self, op: str, key: str) -> None:
        if self.fault(op, key):
            raise StorageError(f"storage refused {op} {key}")

    async def put_file(self, local: Path, key: str) -> None:
        self._check("put", key)
        await super().put_file(local, key)

    async def put_bytes(self, key: str, data: bytes) -> None:
        self._check("put", key)
        await super().put_bytes(key, data)

    async def read_bytes(self, key: str) -> bytes:
        self._check("read", key)
        return await super().read_bytes(key)


@dataclass
class FakeBuilder:
    """Plans and 'builds' without BuildKit by writing the config's APKs itself, and
    fails at the step it is told to (a fake, unit test only)."""

    signer: Signer
    fail: str = ""
    gate: asyncio.Event | None = None
    ran: list[str] = field(default_factory=list)

    async def plan(self, opts: BuildOptions) -> PlannedBuild:
        if self.fail == "plan":
            raise RecipeError(f"{opts.config}: cannot plan")
        if self.fail == "plan-bug":
            raise RuntimeError(f"a bug while planning {opts.config}")
        config = load_config(opts.config, arch=opts.arch)
        digest = hashlib.sha256(opts.config.read_bytes() + opts.config.name.encode()).hexdigest()
        return PlannedBuild(
            opts=opts,
            config=config,
            signer=self.signer,
            definition=Definition(),
            input_digest=f"sha256:{digest}",
        )

    async def run(
        self, planned: PlannedBuild, sinks: Sequence[Any] = (), timer: Any = None
    ) -> BuildResult:
        self.ran.append(planned.config.package.name)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail == "solve":
            raise SolveFailed("step 'build' exited with exit code 2")
        if self.fail == "solve-bug":
            raise KeyError("containerimage.digest")
        opts = planned.opts
        arch_dir = opts.out_dir / opts.arch
        arch_dir.mkdir(parents=True, exist_ok=True)
        built = []
        for name, info in package_infos(planned.config, opts.arch).items():
            target = arch_dir / info.filename
            if self.fail == "garbage":
                target.write_bytes(b"not an apk")
            else:
                tree = opts.out_dir.parent / "tree" / name
                tree.mkdir(parents=True, exist_ok=True)
                (tree / "marker").write_text(name + self.fail)
                with target.open("wb") as out:
                    write_apk(tree, info, self.signer, out, source_date_epoch=0)
            built.append(BuiltPackage(name=name, path=target))
        return BuildResult(
            config=planned.config, packages=tuple(built), index=arch_dir / "APKINDEX.tar.gz"
        )


@dataclass
class Farm:
    settings: ServerSettings
    store: MemoryStore
    storage: FaultyStorage
    builder: FakeBuilder
    runner: BuildkitRunner
    scheduler: Scheduler
    builds: int = 0

    async def build(self, *names: str, spec: BuildSpec | None = None) -> Build:
        """Submit one build of ``names`` (independent packages) and wait for its end."""
        self.builds += 1
        build_id = BuildId(f"bld-{self.builds:016x}")
        workdir = self.settings.build_dir(build_id)
        workdir.mkdir(parents=True)
        jobs = []
        for seq, name in enumerate(names):
            text = f"package: {{name: {name}, version: 1.0.0}}\n"
            (workdir / f"{name}.yaml").write_text(text)
            jobs.append(
                PackageJob(
                    build_id=build_id,
                    name=name,
                    seq=seq,
                    status=PackageStatus.PENDING,
                    config_yaml=text,
                    arch="x86_64",
                )
            )
        build = Build(
            id=build_id,
            status=BuildStatus.PENDING,
            spec=spec or BuildSpec(),
            created_at=datetime.now(UTC),
            packages=tuple(jobs),
        )
        await self.store.create_build(build)
        await self.scheduler.submit(build)
        return await self.wait(build_id)

    async def wait(self, build_id: BuildId) -> Build:
        async with asyncio.timeout(20):
            while True:
                build = await self.store.get_build(build_id)
                if build.status not in (BuildStatus.PENDING, BuildStatus.RUNNING):
                    return build
                await asyncio.sleep(0.01)


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[Farm]:
    settings = ServerSettings(
        data_dir=tmp_path / "data",
        output_dir=tmp_path / "out",
        storage=StorageSpec(kind="memory"),
        lease_ttl=0.6,
    )
    settings.data_dir.mkdir(parents=True)
    generate_key(settings.key_path, key_size=2048)
    signer = Signer.from_files(settings.key_path)
    store = MemoryStore()
    storage = FaultyStorage()
    builder = FakeBuilder(signer)
    locations = Locations(storage, settings)
    publication = Publication(settings, storage, signer, locations)
    reuse = ReuseIndex(storage, locations.layout, signer)
    runner = BuildkitRunner(settings, cast(Builder, builder), locations, publication, reuse)
    pool = BackendPool.from_config(
        PoolConfig(backends=(BackendSpec(addr="tcp://fake:1", arch="x86_64", max_jobs=4),))
    )
    scheduler = Scheduler(
        store,
        pool,
        runner,
        owner="test",
        lease_ttl=settings.lease_ttl,
        retry_backoff=0.0,
        before_build_end=publication.build_ending,
    )
    task = asyncio.create_task(scheduler.run())
    try:
        yield Farm(settings, store, storage, builder, runner, scheduler)
    finally:
        await scheduler.shutdown()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _bucket_log_dir(farm: Farm, build: str, name: str) -> Path:
    return farm.settings.work_dir(build, name) / "logs" / "build.log"


@pytest.mark.parametrize(
    ("step", "needle"),
    [
        ("plan", "cannot plan"),
        ("plan-bug", "internal error: RuntimeError: a bug while planning"),
        ("solve", "exit code 2"),
        ("solve-bug", "internal error: KeyError"),
        ("garbage", "not a gzip stream"),  # the APK cannot be read back
        ("reuse", "storage refused read cache/"),
        ("upload", "storage refused put bld-"),
        ("publish", "storage refused put repo/"),
        ("remember", "storage refused put cache/"),
        ("keep log", "cannot store the log"),
    ],
)
async def test_a_failure_at_any_step_fails_the_package_with_the_reason(
    farm: Farm, step: str, needle: str
) -> None:
    faults: dict[str, Fault] = {
        "reuse": lambda op, key: op == "read" and key.startswith("cache/"),
        "upload": lambda op, key: op == "put" and key.startswith("bld-") and ".apk" in key,
        "publish": lambda op, key: op == "put" and key.startswith("repo/"),
        "remember": lambda op, key: op == "put" and key.startswith("cache/"),
        "keep log": lambda op, key: op == "put" and "/logs/" in key,
    }
    if step in faults:
        farm.storage.fault = faults[step]
    else:
        farm.builder.fail = step
    build = await farm.build("victim")
    (job,) = build.packages
    assert job.status is PackageStatus.FAILED, job
    assert needle in job.error, job.error
    assert str(farm.settings.data_dir) not in job.error  # server paths redacted
    assert job.lease_owner == "" and job.finished_at is not None
    # and the scheduler goes on: the next build, with nothing failing, succeeds
    farm.storage.fault = lambda op, key: False
    farm.builder.fail = ""
    after = await farm.build("next")
    assert after.status is BuildStatus.SUCCESS, after.packages[0].error


async def test_a_log_that_cannot_be_opened_fails_the_package(farm: Farm) -> None:
    # the attempt's log path is taken by a directory: nothing can be written
    _bucket_log_dir(farm, f"bld-{1:016x}", "nolog").mkdir(parents=True)
    build = await farm.build("nolog")
    (job,) = build.packages
    assert job.status is PackageStatus.FAILED
    assert "cannot write the log" in job.error and "IsADirectoryError" in job.error
    assert (await farm.build("fine")).status is BuildStatus.SUCCESS


async def test_cancel_wins_over_a_running_attempt(farm: Farm) -> None:
    farm.builder.gate = asyncio.Event()  # the solve never ends by itself
    waiting = asyncio.create_task(farm.build("sleeper"))
    build_id = BuildId(f"bld-{1:016x}")
    async with asyncio.timeout(10):
        while True:
            if farm.builder.ran == ["sleeper"]:
                break
            await asyncio.sleep(0.01)
    await farm.scheduler.cancel(build_id)
    build = await waiting
    assert build.status is BuildStatus.CANCELLED
    assert build.packages[0].status is PackageStatus.CANCELLED
    log = farm.storage.read_bytes(farm.runner.locations.log_key(build.packages[0], 1))
    assert (await log).endswith(b"cancelled\n")
