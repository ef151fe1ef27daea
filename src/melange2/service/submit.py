"""A build request into stored package jobs: validate, parse every config, compile its
pipelines and tests, plan the dependency graph, keep the files the build brought, and hand
the build to the scheduler. Every problem with the request is a ``RequestError`` (HTTP 400)
naming what is wrong and where, raised before anything is stored: nothing is
half-created. Every config is parsed even when some fail: the answer lists each invalid
config with its error (:class:`~melange2.errors.InvalidConfigs`)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TypeVar

from melange2 import tracing
from melange2.api.schemas import (
    CreateBuildRequest,
    CreateBuildResponse,
    PlannedPackage,
    PlanOut,
    content_bytes,
    resources_out,
)
from melange2.build.inputs import tree_digest
from melange2.buildkit.llb.platform import Platform
from melange2.cache import SizedCache
from melange2.errors import (
    ConfigError,
    ConfigProblem,
    FarmError,
    InvalidConfigs,
    RequestError,
)
from melange2.ids import BuildId, new_build_id
from melange2.jobs import Build, BuildStatus, JSONValue, PackageJob, PackageStatus
from melange2.names import check_paths, check_relative_path, excerpt
from melange2.pool.pool import BackendPool
from melange2.repo.policy import FetchPolicy
from melange2.scheduler.graph import (
    Graph,
    GraphError,
    PackageNode,
    build_graph,
    plan,
    priorities,
    typical_duration,
)
from melange2.scheduler.loop import Scheduler
from melange2.service.configs import (
    ParsedConfig,
    PlannedConfig,
    PlanWorkers,
    bulk_allocation,
    package_request,
    parse_config,
    request_resolver,
)
from melange2.service.gitsource import GitCheckout, GitFetcher
from melange2.service.reuse import settle_reuse
from melange2.service.runner import BuildkitRunner, Reusable, SubmittedPackage
from melange2.service.settings import ServerSettings
from melange2.storage import StorageError
from melange2.store.base import JobStore

_log = logging.getLogger(__name__)

#: What was made of one config: all of it (a build's), or what a dry run needs of it.
_Made = ParsedConfig | PlannedConfig


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


def _made_size(made: _Made) -> int:
    """The estimated memory of what the parse cache keeps for one config: a parsed
    config's text and about ten times that for the model (measured over examples/ with
    tracemalloc); a graph node's names."""
    if isinstance(made, PlannedConfig):
        node = made.node
        return 250 + sum(60 + len(s) for s in (node.name, *node.provides, *node.needs))
    return 12 * len(made.text) + 2048


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
        workers: PlanWorkers | None = None,
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
        #: where a dry run's configs are parsed (worker processes for large ones)
        self.workers = workers or PlanWorkers(settings.plan_workers if settings else 0)
        self.git = git or GitFetcher()
        #: which repositories and keys configs may name (``--fetch-allow``)
        self.policy = policy or FetchPolicy()
        #: what was made of configs by (text, arch, pipelines): a farm is sent the same
        #: thousands of configs again and again, and parsing is most of a submission's
        #: time; configs are immutable, so one parse serves every build that sends the
        #: same text. A build keeps the parsed config, a dry run the graph node its
        #: workers sent back (a parsed config replaces it). Bounded by estimated size
        #: (``--parse-cache-bytes``).
        self._parsed: SizedCache[tuple[str, str, str], _Made] = SizedCache(
            parse_cache_bytes, _made_size
        )

    async def aclose(self) -> None:
        """Stop the worker processes, if any were started."""
        await self.workers.aclose()

    async def submit(
        self, request: CreateBuildRequest, *, submitted_by: str = ""
    ) -> CreateBuildResponse | PlanOut:
        """``submitted_by``: the name of the caller's token (recorded on the build)."""
        arch = request.arch or self.settings.default_arch
        _check_arch(arch)
        cap = self.settings.package_timeout
        if request.timeout_s is not None and cap and request.timeout_s > cap:
            raise RequestError(
                f"timeout_s: {request.timeout_s:g} is more than this server allows "
                f"(--package-timeout {cap:g})"
            )
        checked = _relative_paths(request.pipelines, "pipelines")
        pipelines = {checked[path]: text for path, text in request.pipelines.items()}
        sources = {}
        for pkg, files in request.source_files.items():
            where = f"source_files[{excerpt(pkg)}]"
            checked = _relative_paths(files, where)
            sources[pkg] = {checked[path]: content_bytes(c) for path, c in files.items()}
        if request.git_source is not None:
            self.git.check(request.git_source.repository)  # before any work
        checkout: GitCheckout | None = None
        with tempfile.TemporaryDirectory(prefix="melange2-submit-") as tmp:
            work = Path(tmp)
            texts, checkout = await self._texts(request, work)
            if checkout is not None:
                _merge_files(pipelines, checkout.pipelines, "pipelines")
            _write_tree(work / "pipelines", pipelines)
            pipelines_digest = tree_digest({str(k): v.encode() for k, v in pipelines.items()})
            parsed: list[ParsedConfig] = []
            if request.dry_run:
                planned = await self._planned(texts, arch, work / "pipelines", pipelines_digest)
            else:
                parsed = await asyncio.to_thread(
                    self._parse, texts, arch, work / "pipelines", request, pipelines_digest
                )
                planned = [p.planned() for p in parsed]
            names = [p.node.name for p in planned]
            if checkout is not None:  # ./<package-name>/ beside the configs, from the clone
                for name in names:
                    found = await asyncio.to_thread(checkout.sources, name)
                    if found:
                        where = f"source_files[{excerpt(name)}]"
                        _merge_files(sources.setdefault(name, {}), found, where)
        nodes = [p.node for p in planned]
        for pkg in sources:
            if pkg not in names:
                raise RequestError(
                    f"source_files[{excerpt(pkg)}]: no config in this build has that package name"
                )
        with tracing.span("build.plan", {"melange2.packages": len(nodes)}):
            graph = self._graph(nodes, request)
            durations = await self.store.durations(names)
            unknown = typical_duration(durations)  # for packages with no past duration
            prio = priorities(graph, durations, unknown)
        if request.dry_run:
            slots = max(1, self.pool.capacity(arch, request.backend_selector))
            asks = {p.node.name: p.request for p in planned}
            p = plan(
                graph,
                durations,
                slots=slots,
                default=unknown,
                backends=[c.capacity for c in self.pool.candidates(arch, request.backend_selector)],
                requests=asks,
                where=self.pool.describe(arch, request.backend_selector),
            )
            return PlanOut(
                packages=[
                    PlannedPackage(
                        name=n,
                        dependencies=list(graph.deps.get(n, ())),
                        priority=prio[n],
                        resources=resources_out(asks[n]),
                    )
                    for n in p.order
                ],
                unplaceable=dict(p.unplaceable),
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
            build = build.evolve(
                submitted_by=submitted_by,
                source_commit=checkout.commit if checkout is not None else "",
            )
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

    async def _texts(
        self, request: CreateBuildRequest, work: Path
    ) -> tuple[list[tuple[str, str]], GitCheckout | None]:
        """The configs to parse, each with the name errors call it by; and the clone
        they came from, for a ``git_source``."""
        if request.config_yaml is not None:
            return [("config_yaml", request.config_yaml)], None
        if request.configs is not None:
            return [(f"configs[{i}]", text) for i, text in enumerate(request.configs)], None
        src = request.git_source
        assert src is not None
        found = await self.git.checkout(
            src.repository, ref=src.ref, path=src.path, pattern=src.pattern, workdir=work
        )
        return [(f"git_source:{f.path}", f.text) for f in found.configs], found

    def _parse(
        self,
        texts: Sequence[tuple[str, str]],
        arch: str,
        pipeline_dir: Path,
        request: CreateBuildRequest | None,
        pipelines_digest: str,
    ) -> list[ParsedConfig]:
        """Every config parsed and compiled (build and tests); all the invalid ones are
        reported together, in one :class:`InvalidConfigs`."""
        resolver = request_resolver(pipeline_dir)
        results: list[ParsedConfig | ConfigProblem] = []
        with bulk_allocation():
            for i, (label, text) in enumerate(texts):
                key = _cache_key(text, arch, pipelines_digest)
                one = self._parsed.get(key)
                if isinstance(one, ParsedConfig):
                    results.append(one)
                    continue
                found = parse_config(
                    text, index=i, label=label, arch=arch, resolver=resolver, policy=self.policy
                )
                if isinstance(found, ParsedConfig):
                    self._parsed.put(key, found)
                results.append(found)
        names = [r.config.package.name if isinstance(r, ParsedConfig) else None for r in results]
        _refuse_invalid([label for label, _ in texts], results, names)
        return [r for r in results if isinstance(r, ParsedConfig)]

    async def _planned(
        self,
        texts: Sequence[tuple[str, str]],
        arch: str,
        pipeline_dir: Path,
        pipelines_digest: str,
    ) -> list[PlannedConfig]:
        """What a dry run needs of each config: from configs parsed or planned before,
        else from the workers."""
        results: list[PlannedConfig | ConfigProblem | None] = []
        todo: list[tuple[int, str, str]] = []
        keys = [_cache_key(text, arch, pipelines_digest) for _, text in texts]
        for i, ((label, text), key) in enumerate(zip(texts, keys, strict=True)):
            one = self._parsed.get(key)
            known = one.planned() if isinstance(one, ParsedConfig) else one
            results.append(known)
            if known is None:
                todo.append((i, label, text))
        answers = await self.workers.nodes(todo, arch, pipeline_dir, self.policy)
        for (i, _, _), answer in zip(todo, answers, strict=True):
            results[i] = answer
            if isinstance(answer, PlannedConfig):
                self._parsed.put(keys[i], answer)
        found = [r for r in results if r is not None]
        _refuse_invalid(
            [label for label, _ in texts],
            found,
            [r.node.name if isinstance(r, PlannedConfig) else None for r in found],
        )
        return [r for r in found if isinstance(r, PlannedConfig)]

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
        spec: Mapping[str, JSONValue],
        parsed: Sequence[ParsedConfig],
        graph: Graph,
        pipelines: Mapping[PurePosixPath, str],
        sources: Mapping[str, Mapping[PurePosixPath, bytes]],
    ) -> dict[str, Reusable]:
        """The packages an earlier build made from the same inputs, that no package
        rebuilt in this build could change: reused now, without a backend's slot."""
        if self.runner is None or spec.get("force"):
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

    def _graph(self, nodes: Sequence[PackageNode], request: CreateBuildRequest) -> Graph:
        if request.mode == "flat":
            nodes = [dataclasses.replace(n, needs=()) for n in nodes]
        try:
            return build_graph(nodes, cycle_policy=request.cycle_policy)
        except GraphError as exc:
            raise RequestError(str(exc)) from exc

    def _keep_files(
        self,
        build_dir: Path,
        parsed: Sequence[ParsedConfig],
        pipelines: Mapping[PurePosixPath, str],
        sources: Mapping[str, Mapping[PurePosixPath, bytes]],
    ) -> None:
        build_dir.mkdir(parents=True)
        for p in parsed:
            (build_dir / f"{p.config.package.name}.yaml").write_text(p.text)
        _write_tree(build_dir / "pipelines", pipelines)
        for pkg, files in sources.items():
            _write_tree(build_dir / "src" / pkg, files)

    def _spec(self, arch: str, request: CreateBuildRequest) -> dict[str, JSONValue]:
        spec: dict[str, JSONValue] = request.model_dump(
            mode="json", exclude={"source_files", "dry_run"}
        )
        spec["arch"] = arch
        spec["source_files"] = {
            pkg: list[JSONValue](sorted(files)) for pkg, files in request.source_files.items()
        }
        if request.schedule is None:
            spec["schedule"] = self.settings.schedule
        return spec

    def _build(
        self,
        build_id: BuildId,
        parsed: Sequence[ParsedConfig],
        graph: Graph,
        prio: Mapping[str, float],
        spec: dict[str, JSONValue],
        request: CreateBuildRequest,
        reusable: Mapping[str, Reusable],
        adopted: Mapping[str, str],
    ) -> Build:
        arch = str(spec["arch"])
        now = datetime.now(UTC)
        seq = {p.config.package.name: i for i, p in enumerate(parsed)}
        by_name = {p.config.package.name: p for p in parsed}
        jobs = []
        for name in graph.order:
            deps = tuple(graph.deps.get(name, ()))
            hit = reusable.get(name)
            waits = any(d not in reusable for d in deps)
            asks = package_request(by_name[name].config)
            job = PackageJob(
                build_id=build_id,
                name=name,
                seq=seq[name],
                status=PackageStatus.BLOCKED if waits else PackageStatus.PENDING,
                config_yaml=by_name[name].text,
                arch=arch,
                dependencies=deps,
                priority=prio.get(name, 1.0),
                cpu_millis=asks.cpu,
                memory_bytes=asks.memory,
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


def _cache_key(text: str, arch: str, pipelines_digest: str) -> tuple[str, str, str]:
    return (hashlib.sha256(text.encode()).hexdigest(), arch, pipelines_digest)


def _refuse_invalid(
    labels: Sequence[str],
    results: Sequence[object],
    names: Sequence[str | None],
) -> None:
    """Raise one :class:`InvalidConfigs` naming every problem of ``results`` (parse
    errors, and package names given twice) in submission order; ``labels``: how the
    request names each config."""
    problems: list[ConfigProblem] = []
    seen: dict[str, int] = {}
    for i, (result, name) in enumerate(zip(results, names, strict=True)):
        if isinstance(result, ConfigProblem):
            problems.append(result)
            continue
        assert name is not None
        if name in seen:
            label = labels[i]
            problems.append(
                ConfigProblem(
                    index=i,
                    config=label,
                    package=name,
                    error=f"{label}: duplicate package name {name!r} "
                    f"(also in {labels[seen[name]]})",
                )
            )
            continue
        seen[name] = i
    if problems:
        raise InvalidConfigs(problems, total=len(results))


_Content = TypeVar("_Content", str, bytes)


def _merge_files(
    into: dict[PurePosixPath, _Content], found: Mapping[str, _Content], where: str
) -> None:
    """Add the files a ``git_source`` brought to those the request sent: the same path
    with other content in both is a 400 (neither is taken silently)."""
    checked = _relative_paths(found, f"git_source {where}")
    for given, content in found.items():
        path = checked[given]
        if into.get(path, content) != content:
            raise RequestError(
                f"{where}[{excerpt(str(path))}]: the request and the git_source repository "
                "both give this file, with different content"
            )
        into[path] = content
    _relative_paths({str(p): None for p in into}, where)


def _write_tree(root: Path, files: Mapping[PurePosixPath, str | bytes]) -> None:
    for rel, content in files.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            dest.write_text(content)
        else:
            dest.write_bytes(content)
