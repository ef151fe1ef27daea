"""A build request into stored package jobs, read top to bottom in
:meth:`Submitter.submit`: check the request, parse every config and compile its
pipelines, plan the dependency graph (a dry run stops there, with the plan), find what
an earlier build already made (:mod:`.reuse`), keep the files the build brought, link
the reused packages' artifacts, store the build and hand it to the scheduler.

Every problem with the request is a ``RequestError`` (HTTP 400) naming what is wrong
and where, raised before anything is stored: nothing is half-created. The service
speaks domain values (:class:`Submission` in, :class:`Submitted` or :class:`Planned`
out); the API converts its wire models (:mod:`melange2.wire`) to and from them."""

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
from melange2.build.executor import environment_packages
from melange2.build.inputs import tree_digest
from melange2.cache import SizedCache
from melange2.errors import ConfigError, FarmError, RecipeError, RequestError
from melange2.ids import BuildId, new_build_id
from melange2.jobs import Build, BuildSpec, BuildStatus, PackageJob, PackageStatus
from melange2.names import check_paths, check_relative_path, excerpt
from melange2.platform import Platform
from melange2.recipe import Config, load_config
from melange2.recipe.compile import BUILTIN_PIPELINE_DIR, PipelineResolver, compile_build
from melange2.repo.policy import FetchPolicy
from melange2.resources import cpu_millis, memory_bytes
from melange2.scheduler.graph import (
    Graph,
    GraphError,
    Plan,
    build_graph,
    node_from_config,
    plan,
    priorities,
    typical_duration,
)
from melange2.scheduler.placement import NOTHING, Candidate, Request
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
        parsed, commit = await self._parse_all(submission, pipelines, sources)
        _check_sources_named(sources, parsed)
        with tracing.span("build.plan", {"melange2.packages": len(parsed)}):
            graph = self._graph(parsed, spec)
            names = [p.config.package.name for p in parsed]
            durations = await self.store.durations(names)
            unknown = typical_duration(durations)  # for packages with no past duration
            prio = priorities(graph, durations, unknown)
        if submission.dry_run:
            arch, selector = spec.arch, spec.backend_selector
            slots = max(1, self.pool.capacity(arch, selector))
            asks = {p.config.package.name: package_request(p.config) for p in parsed}
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
    ) -> tuple[list[_Parsed], str]:
        """Every config of the build (sent, or from its git source), parsed and
        compiled against the build's pipelines; and the commit of a git source (else
        ``""``). A git source's ``pipelines/`` and each package's ``./<name>/`` beside
        its config join ``pipelines`` and ``sources``."""
        with tempfile.TemporaryDirectory(prefix="melange2-submit-") as tmp:
            work = Path(tmp)
            texts, checkout = await self._texts(submission.spec, work)
            if checkout is not None:
                _merge_files(pipelines, checkout.pipelines, "pipelines")
            _write_tree(work / "pipelines", pipelines)
            pipelines_digest = tree_digest({str(k): v.encode() for k, v in pipelines.items()})
            parsed = await asyncio.to_thread(
                self._parse,
                texts,
                submission.spec.arch,
                work / "pipelines",
                submission,
                pipelines_digest,
            )
            if checkout is None:
                return parsed, ""
            for one in parsed:  # ./<package-name>/ beside the configs, from the clone
                name = one.config.package.name
                found = await asyncio.to_thread(checkout.sources, name)
                if found:
                    where = f"source_files[{excerpt(name)}]"
                    _merge_files(sources.setdefault(name, {}), found, where)
            return parsed, checkout.commit

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
        submission: Submission,
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

    async def _reusable(
        self,
        spec: BuildSpec,
        parsed: Sequence[_Parsed],
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

    def _graph(self, parsed: Sequence[_Parsed], spec: BuildSpec) -> Graph:
        nodes = [node_from_config(p.config, p.needs) for p in parsed]
        if spec.mode == "flat":
            nodes = [dataclasses.replace(n, needs=()) for n in nodes]
        try:
            return build_graph(nodes, cycle_policy=spec.cycle_policy)
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

    def _build(
        self,
        build_id: BuildId,
        parsed: Sequence[_Parsed],
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


def package_request(config: Config) -> Request:
    """What a config's package asks (``package.resources``; the parser checked them)."""
    resources = config.package.resources
    if resources is None:
        return NOTHING
    return Request(
        cpu=cpu_millis(resources.cpu) if resources.cpu else 0,
        memory=memory_bytes(resources.memory) if resources.memory else 0,
    )


def _checked_tree(files: Mapping[str, _T], where: str) -> dict[PurePosixPath, _T]:
    """``files`` by checked, normalised relative path (a 400 naming ``where`` otherwise)."""
    checked = _relative_paths(files, where)
    return {checked[path]: content for path, content in files.items()}


def _check_sources_named(
    sources: Mapping[str, Mapping[PurePosixPath, bytes]], parsed: Sequence[_Parsed]
) -> None:
    names = {p.config.package.name for p in parsed}
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
