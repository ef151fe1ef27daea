"""A build request into stored package jobs, read top to bottom in
:meth:`Submitter.submit`: check the request, parse every config and compile its
pipelines, plan the dependency graph (a dry run stops there, with the plan), find what
an earlier build already made (:mod:`.reuse`), keep the files the build brought, link
the reused packages' artifacts, store the build and hand it to the scheduler.

Every problem with the request is a ``RequestError`` (HTTP 400) naming what is wrong
and where, raised before anything is stored: nothing is half-created. The service
speaks domain values (:class:`Submission` in, :class:`Submitted` or :class:`Planned`
out); the API converts its wire models (:mod:`melange2.wire`) to and from them.
Every config is parsed even when some fail: the answer lists each invalid config with
its error (:class:`~melange2.errors.InvalidConfigs`). A dry run's configs are planned in
worker processes (:class:`~melange2.service.configs.PlanWorkers`) when there are many."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Protocol, TypeVar

from melange2 import tracing
from melange2.build.inputs import tree_digest
from melange2.cache import SizedCache
from melange2.errors import (
    ConfigError,
    ConfigProblem,
    FarmError,
    InvalidConfigs,
    RequestError,
)
from melange2.ids import BuildId, new_build_id
from melange2.jobs import Build, BuildSpec, BuildStatus, PackageJob, PackageStatus
from melange2.names import check_paths, check_relative_path, excerpt
from melange2.platform import Platform
from melange2.repo.policy import FetchPolicy
from melange2.scheduler.graph import (
    Graph,
    GraphError,
    PackageNode,
    Plan,
    build_graph,
    plan,
    priorities,
    typical_duration,
)
from melange2.scheduler.placement import Candidate, Request
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
from melange2.service.reuse import Reusable, SubmittedPackage
from melange2.service.settings import ServerSettings
from melange2.storage import StorageError
from melange2.store.base import JobStore

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


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


#: What was made of one config: all of it (a build's), or what a dry run needs of it.
_Made = ParsedConfig | PlannedConfig


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


@dataclass(frozen=True, kw_only=True)
class Submission:
    """A build request as the service takes it (the API makes it from the wire form)."""

    spec: BuildSpec
    #: the files sent for each package, by relative path (placed in its /home/build)
    source_files: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)
    #: plan only: nothing is stored or built
    dry_run: bool = False
    #: the name of the caller's token (recorded on the build; empty: no authentication)
    submitted_by: str = ""


@dataclass(frozen=True, kw_only=True)
class Submitted:
    """A stored build, handed to the scheduler."""

    build_id: BuildId
    #: package names in build order
    order: tuple[str, ...]
    #: with ``cycle_policy: break``: the (dependent, dependency) edges cut
    cut_edges: tuple[tuple[str, str], ...]


@dataclass(frozen=True, kw_only=True)
class Planned:
    """A dry run: what would be built, in what order, and how long it would take."""

    plan: Plan
    #: each package's dependencies in the build
    deps: Mapping[str, tuple[str, ...]]
    #: each package's priority (critical-path weight)
    priorities: Mapping[str, float]
    #: what each package asks (``package.resources``)
    requests: Mapping[str, Request]


class BuildQueue(Protocol):
    """Where a stored build goes (the scheduler)."""

    async def submit(self, build: Build) -> None: ...


class Capacity(Protocol):
    """What the backends offer (the pool), for a dry run's plan."""

    def capacity(self, arch: str, selector: Mapping[str, str]) -> int:
        """Build slots of the backends matching ``arch`` and ``selector``."""
        ...

    def candidates(self, arch: str, selector: Mapping[str, str]) -> list[Candidate]:
        """Those backends as placement sees them (cpu, memory)."""
        ...

    def describe(self, arch: str, selector: Mapping[str, str]) -> str:
        """Those backends, for messages."""
        ...


class ReuseAtSubmission(Protocol):
    """What an earlier build already made (:class:`~melange2.service.reuse.SubmissionReuse`)."""

    async def find(
        self,
        spec: BuildSpec,
        packages: Sequence[SubmittedPackage],
        deps: Mapping[str, Sequence[str]],
        pipelines: Mapping[str, bytes],
    ) -> dict[str, Reusable]: ...

    async def adopt(self, build_id: BuildId, reused: Mapping[str, Reusable]) -> dict[str, str]: ...

    async def forget(self, build_id: BuildId, names: Sequence[str]) -> None: ...


class Submitter:
    def __init__(
        self,
        settings: ServerSettings,
        store: JobStore,
        scheduler: BuildQueue,
        pool: Capacity,
        reuse: ReuseAtSubmission | None = None,
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
        self.reuse = reuse
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

    async def submit(self, submission: Submission) -> Submitted | Planned:
        spec = submission.spec
        _check_arch(spec.arch)
        cap = self.settings.package_timeout
        if spec.timeout_s is not None and cap and spec.timeout_s > cap:
            raise RequestError(
                f"timeout_s: {spec.timeout_s:g} is more than this server allows "
                f"(--package-timeout {cap:g})"
            )
        pipelines = _checked_tree(spec.pipelines, "pipelines")
        sources = {
            pkg: _checked_tree(files, f"source_files[{excerpt(pkg)}]")
            for pkg, files in submission.source_files.items()
        }
        if spec.git_source is not None:
            self.git.check(spec.git_source.repository)  # before any work
        parsed, planned, commit = await self._parse_all(submission, pipelines, sources)
        nodes = [p.node for p in planned]
        names = [n.name for n in nodes]
        _check_sources_named(sources, names)
        with tracing.span("build.plan", {"melange2.packages": len(nodes)}):
            graph = self._graph(nodes, spec)
            durations = await self.store.durations(names)
            unknown = typical_duration(durations)  # for packages with no past duration
            prio = priorities(graph, durations, unknown)
        if submission.dry_run:
            arch, selector = spec.arch, spec.backend_selector
            slots = max(1, self.pool.capacity(arch, selector))
            asks = {p.node.name: p.request for p in planned}
            return Planned(
                plan=plan(
                    graph,
                    durations,
                    slots=slots,
                    default=unknown,
                    backends=[c.capacity for c in self.pool.candidates(arch, selector)],
                    requests=asks,
                    where=self.pool.describe(arch, selector),
                ),
                deps=graph.deps,
                priorities=prio,
                requests=asks,
            )
        reusable = await self._reusable(spec, parsed, graph, pipelines, sources)
        build_id = new_build_id()
        build_dir = self.settings.build_dir(build_id)
        try:
            await asyncio.to_thread(self._keep_files, build_dir, parsed, pipelines, sources)
            adopted = await self._adopt(build_id, reusable)
            build = self._build(build_id, parsed, graph, prio, spec, reusable, adopted)
            build = build.evolve(submitted_by=submission.submitted_by, source_commit=commit)
            await self.store.create_build(build)
        except BaseException:
            shutil.rmtree(build_dir, ignore_errors=True)
            if reusable and self.reuse is not None:
                await self.reuse.forget(build_id, list(reusable))
            raise
        await self.scheduler.submit(build)
        return Submitted(build_id=build_id, order=graph.order, cut_edges=graph.cut_edges)

    async def _parse_all(
        self,
        submission: Submission,
        pipelines: dict[PurePosixPath, str],
        sources: dict[str, dict[PurePosixPath, bytes]],
    ) -> tuple[list[ParsedConfig], list[PlannedConfig], str]:
        """Every config of the build (sent, or from its git source), parsed and
        compiled against the build's pipelines (a dry run: only planned, in the
        workers); what the plan needs of each; and the commit of a git source (else
        ``""``). A git source's ``pipelines/`` and each package's ``./<name>/`` beside
        its config join ``pipelines`` and ``sources``."""
        arch = submission.spec.arch
        with tempfile.TemporaryDirectory(prefix="melange2-submit-") as tmp:
            work = Path(tmp)
            texts, checkout = await self._texts(submission.spec, work)
            if checkout is not None:
                _merge_files(pipelines, checkout.pipelines, "pipelines")
            _write_tree(work / "pipelines", pipelines)
            pipelines_digest = tree_digest({str(k): v.encode() for k, v in pipelines.items()})
            parsed: list[ParsedConfig] = []
            if submission.dry_run:
                planned = await self._planned(texts, arch, work / "pipelines", pipelines_digest)
            else:
                parsed = await asyncio.to_thread(
                    self._parse, texts, arch, work / "pipelines", submission, pipelines_digest
                )
                planned = [p.planned() for p in parsed]
            if checkout is None:
                return parsed, planned, ""
            for one in planned:  # ./<package-name>/ beside the configs, from the clone
                name = one.node.name
                found = await asyncio.to_thread(checkout.sources, name)
                if found:
                    where = f"source_files[{excerpt(name)}]"
                    _merge_files(sources.setdefault(name, {}), found, where)
            return parsed, planned, checkout.commit

    async def _texts(
        self, spec: BuildSpec, work: Path
    ) -> tuple[list[tuple[str, str]], GitCheckout | None]:
        """The configs to parse, each with the name errors call it by; and the clone
        they came from, for a ``git_source``."""
        if spec.config_yaml is not None:
            return [("config_yaml", spec.config_yaml)], None
        if spec.configs is not None:
            return [(f"configs[{i}]", text) for i, text in enumerate(spec.configs)], None
        src = spec.git_source
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
        submission: Submission | None,
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

    async def _reusable(
        self,
        spec: BuildSpec,
        parsed: Sequence[ParsedConfig],
        graph: Graph,
        pipelines: Mapping[PurePosixPath, str],
        sources: Mapping[str, Mapping[PurePosixPath, bytes]],
    ) -> dict[str, Reusable]:
        """The packages an earlier build made from the same inputs, that no package
        rebuilt in this build could change: reused now, without a backend's slot. An
        optimisation: if deciding fails, the packages are built."""
        if self.reuse is None or spec.force:
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
            return await self.reuse.find(
                spec, submitted, graph.deps, {str(k): v.encode() for k, v in pipelines.items()}
            )
        except (FarmError, StorageError):  # an optimisation: the packages are built instead
            _log.warning("reuse at submission skipped", exc_info=True)
            return {}

    async def _adopt(self, build_id: BuildId, reusable: Mapping[str, Reusable]) -> dict[str, str]:
        """Link the reused packages' artifacts into this build; ``{}`` (build them all
        instead) if the storage fails meanwhile, e.g. an artifact was just deleted."""
        if not reusable or self.reuse is None:
            return {}
        try:
            return await self.reuse.adopt(build_id, reusable)
        except StorageError:
            _log.warning("reuse at submission dropped: cannot copy artifacts", exc_info=True)
            await self.reuse.forget(build_id, list(reusable))
            return {}

    def _graph(self, nodes: Sequence[PackageNode], spec: BuildSpec) -> Graph:
        if spec.mode == "flat":
            nodes = [dataclasses.replace(n, needs=()) for n in nodes]
        try:
            return build_graph(nodes, cycle_policy=spec.cycle_policy)
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

    def _build(
        self,
        build_id: BuildId,
        parsed: Sequence[ParsedConfig],
        graph: Graph,
        prio: Mapping[str, float],
        spec: BuildSpec,
        reusable: Mapping[str, Reusable],
        adopted: Mapping[str, str],
    ) -> Build:
        """The build to store: a package reused at submission (its artifacts adopted)
        has succeeded already; the others wait for their dependencies or a slot."""
        reused = {n: r for n, r in reusable.items() if n in adopted}
        now = datetime.now(UTC)
        seq = {p.config.package.name: i for i, p in enumerate(parsed)}
        by_name = {p.config.package.name: p for p in parsed}
        jobs = []
        for name in graph.order:
            deps = tuple(graph.deps.get(name, ()))
            hit = reused.get(name)
            waits = any(d not in reused for d in deps)
            asks = package_request(by_name[name].config)
            job = PackageJob(
                build_id=build_id,
                name=name,
                seq=seq[name],
                status=PackageStatus.BLOCKED if waits else PackageStatus.PENDING,
                config_yaml=by_name[name].text,
                arch=spec.arch,
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
            started_at=now if reused else None,
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


def _checked_tree(files: Mapping[str, _T], where: str) -> dict[PurePosixPath, _T]:
    """``files`` by checked, normalised relative path (a 400 naming ``where`` otherwise)."""
    checked = _relative_paths(files, where)
    return {checked[path]: content for path, content in files.items()}


def _check_sources_named(
    sources: Mapping[str, Mapping[PurePosixPath, bytes]], names: Sequence[str]
) -> None:
    for pkg in sources:
        if pkg not in names:
            raise RequestError(
                f"source_files[{excerpt(pkg)}]: no config in this build has that package name"
            )


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
