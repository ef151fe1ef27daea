"""A build request into stored package jobs: validate, parse every config, compile its
pipelines, plan the dependency graph, keep the files the build brought, and hand the
build to the scheduler. Every problem with the request is a ``RequestError`` (HTTP 400)
naming what is wrong and where, raised before anything is stored: nothing is
half-created."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from melange2.wire import (
    CreateBuildRequest,
    CreateBuildResponse,
    PlannedPackage,
    PlanOut,
    content_bytes,
)
from melange2.build.executor import environment_packages
from melange2.build.inputs import tree_digest
from melange2.cache import SizedCache
from melange2.errors import ConfigError, FarmError, RecipeError, RequestError
from melange2.ids import BuildId, new_build_id
from melange2.jobs import (
    Build,
    BuildSpec,
    BuildStatus,
    GitSpec,
    PackageJob,
    PackageStatus,
    StepOptions,
)
from melange2.names import check_paths, check_relative_path, excerpt
from melange2.platform import Platform
from melange2.pool.pool import BackendPool
from melange2.recipe import Config, load_config
from melange2.recipe.compile import BUILTIN_PIPELINE_DIR, PipelineResolver, compile_build
from melange2.repo.policy import FetchPolicy
from melange2.scheduler.graph import (
    Graph,
    GraphError,
    build_graph,
    node_from_config,
    plan,
    priorities,
    typical_duration,
)
from melange2.scheduler.loop import Scheduler
from melange2.service.gitsource import GitFetcher
from melange2.service.reuse import settle_reuse
from melange2.service.runner import BuildkitRunner, Reusable, SubmittedPackage
from melange2.service.settings import ServerSettings
from melange2.storage import StorageError
from melange2.store.base import JobStore

_log = logging.getLogger(__name__)


def _relative_paths(files: Mapping[str, object], where: str) -> dict[str, PurePosixPath]:
    """Each given path, checked and normalised; a 400 for a path that climbs out, two
    that name the same file, or one that is a file and a directory at once."""
    try:
        checked = {
            given: check_relative_path(given, f"{where}[{excerpt(given)}]") for given in files
        }
        check_paths(checked.items(), where)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return checked


@dataclass(frozen=True, kw_only=True)
class _Parsed:
    text: str
    config: Config
    needs: tuple[str, ...]
    world: tuple[str, ...]  #: the packages of its build environment


def _parsed_size(parsed: _Parsed) -> int:
    """A parsed config's estimated memory: its text and about ten times that for the
    model (measured over examples/ with tracemalloc)."""
    return 12 * len(parsed.text) + 2048


def _check_arch(arch: str) -> None:
    try:
        Platform.from_arch(arch)
    except ConfigError as exc:
        raise RequestError(f"arch: {exc}") from exc


class Submitter:
    def __init__(
        self,
        settings: ServerSettings,
        store: JobStore,
        scheduler: Scheduler,
        pool: BackendPool,
        runner: BuildkitRunner | None = None,
        *,
        git: GitFetcher | None = None,
        policy: FetchPolicy | None = None,
        parse_cache_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.settings = settings
        self.store = store
        self.scheduler = scheduler
        self.pool = pool
        #: decides at submission which packages an earlier build already made
        self.runner = runner
        self.git = git or GitFetcher()
        #: which repositories and keys configs may name (``--fetch-allow``)
        self.policy = policy or FetchPolicy()
        #: parsed and compiled configs by (text, arch, pipelines): a farm is sent the
        #: same thousands of configs again and again, and parsing is most of a
        #: submission's time; configs are immutable, so one parse serves every build
        #: that sends the same text. Bounded by estimated size (``--parse-cache-bytes``).
        self._parsed: SizedCache[tuple[str, str, str], _Parsed] = SizedCache(
            parse_cache_bytes, _parsed_size
        )

    async def submit(self, request: CreateBuildRequest) -> CreateBuildResponse | PlanOut:
        arch = request.arch or self.settings.default_arch
        _check_arch(arch)
        checked = _relative_paths(request.pipelines, "pipelines")
        pipelines = {checked[path]: text for path, text in request.pipelines.items()}
        sources = {}
        for pkg, files in request.source_files.items():
            where = f"source_files[{excerpt(pkg)}]"
            checked = _relative_paths(files, where)
            sources[pkg] = {checked[path]: content_bytes(c) for path, c in files.items()}
        if request.git_source is not None:
            self.git.check(request.git_source.repository)  # before any work
        with tempfile.TemporaryDirectory(prefix="melange2-submit-") as tmp:
            work = Path(tmp)
            texts = await self._texts(request, work)
            _write_tree(work / "pipelines", pipelines)
            pipelines_digest = tree_digest({str(k): v.encode() for k, v in pipelines.items()})
            parsed = await asyncio.to_thread(
                self._parse, texts, arch, work / "pipelines", request, pipelines_digest
            )
        names = [p.config.package.name for p in parsed]
        for pkg in sources:
            if pkg not in names:
                raise RequestError(
                    f"source_files[{excerpt(pkg)}]: no config in this build has that package name"
                )
        graph = self._graph(parsed, request)
        durations = await self.store.durations(names)
        unknown = typical_duration(durations)  # for packages with no past duration
        prio = priorities(graph, durations, unknown)
        if request.dry_run:
            slots = max(1, self.pool.capacity(arch, request.backend_selector))
            p = plan(graph, durations, slots=slots, default=unknown)
            return PlanOut(
                packages=[
                    PlannedPackage(
                        name=n, dependencies=list(graph.deps.get(n, ())), priority=prio[n]
                    )
                    for n in p.order
                ],
                cut_edges=list(p.cut_edges),
                critical_path=list(p.critical_path),
                critical_path_s=p.critical_path_s,
                total_work_s=p.total_work_s,
                lower_bound_s=p.lower_bound_s,
                estimated_makespan_s=p.estimated_makespan_s,
                slots=slots,
            )
        spec = self._spec(arch, request)
        reusable = await self._reusable(arch, spec, parsed, graph, pipelines, sources)
        build_id = new_build_id()
        build_dir = self.settings.build_dir(build_id)
        adopted: dict[str, str] = {}
        try:
            await asyncio.to_thread(self._keep_files, build_dir, parsed, pipelines, sources)
            if reusable:
                adopted = await self._adopt(build_id, reusable)
                if not adopted:
                    reusable = {}
            build = self._build(build_id, parsed, graph, prio, spec, request, reusable, adopted)
            await self.store.create_build(build)
        except BaseException:
            shutil.rmtree(build_dir, ignore_errors=True)
            if reusable and self.runner is not None:
                await self.runner.forget_artifacts(build_id, list(reusable))
            raise
        await self.scheduler.submit(build)
        return CreateBuildResponse(
            id=build_id,
            packages=list(graph.order),
            cut_edges=[(a, b) for a, b in graph.cut_edges],
        )

    async def _texts(self, request: CreateBuildRequest, work: Path) -> list[tuple[str, str]]:
        """The configs to parse, each with the name errors call it by."""
        if request.config_yaml is not None:
            return [("config_yaml", request.config_yaml)]
        if request.configs is not None:
            return [(f"configs[{i}]", text) for i, text in enumerate(request.configs)]
        src = request.git_source
        assert src is not None
        found = await self.git.configs(
            src.repository, ref=src.ref, path=src.path, pattern=src.pattern, workdir=work
        )
        return [(f"git_source:{f.path}", f.text) for f in found]

    def _parse(
        self,
        texts: Sequence[tuple[str, str]],
        arch: str,
        pipeline_dir: Path,
        request: CreateBuildRequest,
        pipelines_digest: str,
    ) -> list[_Parsed]:
        resolver = PipelineResolver(
            [pipeline_dir] if pipeline_dir.is_dir() else [],
            labels={pipeline_dir: "pipelines", BUILTIN_PIPELINE_DIR: "<built-in>"},
        )
        parsed = []
        seen: dict[str, str] = {}
        for label, text in texts:
            key = (hashlib.sha256(text.encode()).hexdigest(), arch, pipelines_digest)
            one = self._parsed.get(key)
            if one is None:
                try:
                    config = load_config(text, filename=label, arch=arch)
                    compiled = compile_build(config, resolver)
                except RecipeError as exc:
                    raise RequestError(f"{label}: {exc}") from exc
                except RecursionError:
                    raise RequestError(f"{label}: nested too deeply to be read") from None
                self._check_locations(config, label)
                one = _Parsed(
                    text=text,
                    config=config,
                    needs=compiled.needs_packages,
                    world=tuple(environment_packages(config, compiled)),
                )
                self._parsed.put(key, one)
            name = one.config.package.name
            if name in seen:
                raise RequestError(
                    f"{label}: duplicate package name {name!r} (also in {seen[name]})"
                )
            seen[name] = label
            parsed.append(one)
        return parsed

    def _check_locations(self, config: Config, label: str) -> None:
        """Every repository and key the config names, the build's and its tests', is one
        this server may fetch (``--fetch-allow``); a 400 naming it otherwise."""
        sections = [("environment", config.environment)]
        if config.test is not None:
            sections.append(("test.environment", config.test.environment))
        for n, sp in enumerate(config.subpackages):
            if sp.test is not None:
                sections.append((f"subpackages[{n}].test.environment", sp.test.environment))
        for where, env in sections:
            for field_name in ("repositories", "keyring"):
                for i, entry in enumerate(getattr(env.contents, field_name)):
                    try:
                        self.policy.check(entry, f"{where}.contents.{field_name}[{i}]")
                    except RecipeError as exc:
                        raise RequestError(f"{label}: {exc}") from exc

    async def _adopt(self, build_id: BuildId, reusable: Mapping[str, Reusable]) -> dict[str, str]:
        """Link the reused packages' artifacts into this build; ``{}`` (build them all
        instead) if the storage fails meanwhile, e.g. an artifact was just deleted."""
        assert self.runner is not None
        try:
            return await self.runner.adopt(build_id, {n: r.record for n, r in reusable.items()})
        except StorageError:
            _log.warning("reuse at submission dropped: cannot copy artifacts", exc_info=True)
            await self.runner.forget_artifacts(build_id, list(reusable))
            return {}

    async def _reusable(
        self,
        arch: str,
        spec: BuildSpec,
        parsed: Sequence[_Parsed],
        graph: Graph,
        pipelines: Mapping[PurePosixPath, str],
        sources: Mapping[str, Mapping[PurePosixPath, bytes]],
    ) -> dict[str, Reusable]:
        """The packages an earlier build made from the same inputs, that no package
        rebuilt in this build could change: reused now, without a backend's slot."""
        if self.runner is None or spec.force:
            return {}
        submitted = [
            SubmittedPackage(
                name=p.config.package.name,
                text=p.text,
                config=p.config,
                world=p.world,
                sources={str(k): v for k, v in sources.get(p.config.package.name, {}).items()},
            )
            for p in parsed
        ]
        try:
            found = await self.runner.reusable(
                arch, spec, submitted, {str(k): v.encode() for k, v in pipelines.items()}
            )
        except (FarmError, StorageError):  # an optimisation: the packages are built instead
            _log.warning("reuse at submission skipped", exc_info=True)
            return {}
        if not found:
            return {}
        kept = settle_reuse(
            found,
            packages=[p.name for p in submitted],
            deps=graph.deps,
            installs={n: r.installs for n, r in found.items()},
            outputs={
                p.config.package.name: {
                    p.config.package.name,
                    *(sub.name for sub in p.config.subpackages),
                }
                for p in parsed
            },
        )
        return {n: found[n] for n in kept}

    def _graph(self, parsed: Sequence[_Parsed], request: CreateBuildRequest) -> Graph:
        nodes = [node_from_config(p.config, p.needs) for p in parsed]
        if request.mode == "flat":
            nodes = [dataclasses.replace(n, needs=()) for n in nodes]
        try:
            return build_graph(nodes, cycle_policy=request.cycle_policy)
        except GraphError as exc:
            raise RequestError(str(exc)) from exc

    def _keep_files(
        self,
        build_dir: Path,
        parsed: Sequence[_Parsed],
        pipelines: Mapping[PurePosixPath, str],
        sources: Mapping[str, Mapping[PurePosixPath, bytes]],
    ) -> None:
        build_dir.mkdir(parents=True)
        for p in parsed:
            (build_dir / f"{p.config.package.name}.yaml").write_text(p.text)
        _write_tree(build_dir / "pipelines", pipelines)
        for pkg, files in sources.items():
            _write_tree(build_dir / "src" / pkg, files)

    def _spec(self, arch: str, request: CreateBuildRequest) -> BuildSpec:
        git = request.git_source
        return BuildSpec(
            config_yaml=request.config_yaml,
            configs=tuple(request.configs) if request.configs is not None else None,
            git_source=None
            if git is None
            else GitSpec(
                repository=git.repository, ref=git.ref, pattern=git.pattern, path=git.path
            ),
            pipelines=request.pipelines,
            arch=arch,
            backend_selector=request.backend_selector,
            mode=request.mode,
            options=StepOptions(env=request.env, with_test=request.with_test, debug=request.debug),
            cycle_policy=request.cycle_policy,
            schedule=request.schedule or self.settings.schedule,
            force=request.force,
            publish=request.publish,
            replace=request.replace,
            source_files={pkg: tuple(sorted(files)) for pkg, files in request.source_files.items()},
        )

    def _build(
        self,
        build_id: BuildId,
        parsed: Sequence[_Parsed],
        graph: Graph,
        prio: Mapping[str, float],
        spec: BuildSpec,
        request: CreateBuildRequest,
        reusable: Mapping[str, Reusable],
        adopted: Mapping[str, str],
    ) -> Build:
        arch = spec.arch
        now = datetime.now(UTC)
        seq = {p.config.package.name: i for i, p in enumerate(parsed)}
        by_name = {p.config.package.name: p for p in parsed}
        jobs = []
        for name in graph.order:
            deps = tuple(graph.deps.get(name, ()))
            hit = reusable.get(name)
            waits = any(d not in reusable for d in deps)
            job = PackageJob(
                build_id=build_id,
                name=name,
                seq=seq[name],
                status=PackageStatus.BLOCKED if waits else PackageStatus.PENDING,
                config_yaml=by_name[name].text,
                arch=arch,
                dependencies=deps,
                priority=prio.get(name, 1.0),
            )
            if hit is not None:
                job = job.evolve(
                    status=PackageStatus.SUCCESS,
                    cached=True,
                    input_digest=hit.record.input_digest,
                    output_path=adopted[name],
                    started_at=now,
                    finished_at=now,
                )
            jobs.append(job)
        return Build(
            id=build_id,
            status=BuildStatus.PENDING,
            spec=spec,
            created_at=now,
            started_at=now if reusable else None,
            packages=tuple(sorted(jobs, key=lambda j: j.seq)),
        )


def _write_tree(root: Path, files: Mapping[PurePosixPath, str | bytes]) -> None:
    for rel, content in files.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            dest.write_text(content)
        else:
            dest.write_bytes(content)
