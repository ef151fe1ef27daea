"""A submission's configs: parse and compile each one, in this process or in workers.

:func:`parse_config` is the one way a submitted config is read: loaded, its build and its
tests compiled (every ``uses:`` resolved), the packages its build and tests install
gathered, and every repository and key it names checked against the server's
``--fetch-allow`` (:class:`~melange2.repo.policy.FetchPolicy`). A config that is not
valid gives a :class:`~melange2.errors.ConfigProblem` instead of an exception, so a
submission can answer with all of them at once.

A dry run needs no more of each config than its node of the dependency graph and what
its package asks (``package.resources``): a :class:`PlannedConfig`; those are small, so
:class:`PlanWorkers` computes them in worker processes (``python -m
melange2.service.configs``, one per core, fed chunks of configs), and a distribution's
thousands of configs are planned on every core at once. The workers run
:func:`parse_config` too: a dry run and a build refuse the same configs with the same
errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import pickle
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from melange2.errors import ConfigProblem, RecipeError
from melange2.recipe import (
    Config,
    PipelineResolver,
    compile_build,
    compile_tests,
    environment_packages,
    load_config,
)
from melange2.recipe._yaml import compose
from melange2.recipe.compile import BUILTIN_PIPELINE_DIR, MELANGE_PIPELINE_DIR
from melange2.repo.policy import FetchPolicy
from melange2.resources import cpu_millis, memory_bytes
from melange2.scheduler.graph import PackageNode, node_from_config
from melange2.scheduler.placement import NOTHING, Request

__all__ = [
    "REQUEST_PIPELINES",
    "ParsedConfig",
    "PlanWorkers",
    "PlannedConfig",
    "WorkerError",
    "bulk_allocation",
    "check_fetches",
    "package_request",
    "parse_config",
    "request_resolver",
]

#: How errors name the request's ``pipelines`` (written to a temporary directory).
REQUEST_PIPELINES: Final = "pipelines"
#: Fewer configs than this are planned in this process (workers would cost more).
_PARALLEL_FROM: Final = 256


def package_request(config: Config) -> Request:
    """What a config's package asks (``package.resources``; the parser checked them)."""
    resources = config.package.resources
    if resources is None:
        return NOTHING
    return Request(
        cpu=cpu_millis(resources.cpu) if resources.cpu else 0,
        memory=memory_bytes(resources.memory) if resources.memory else 0,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class PlannedConfig:
    """What a dry run needs of one config."""

    #: its node of the submission's dependency graph
    node: PackageNode
    #: what its package asks (``package.resources``)
    request: Request = NOTHING


@dataclass(frozen=True, kw_only=True)
class ParsedConfig:
    """One submitted config, loaded and compiled."""

    text: str
    config: Config
    #: what its steps and pipelines need (``needs.packages``)
    needs: tuple[str, ...]
    #: the packages of its build environment
    world: tuple[str, ...]
    #: the packages its tests install (the tests run right after the build)
    test_needs: tuple[str, ...] = ()

    def node(self) -> PackageNode:
        """Its node of the submission's dependency graph."""
        return node_from_config(self.config, self.needs, self.test_needs)

    def planned(self) -> PlannedConfig:
        """What a dry run needs of it."""
        return PlannedConfig(node=self.node(), request=package_request(self.config))


def request_resolver(pipeline_dir: Path) -> PipelineResolver:
    """The resolver of a request's configs: its ``pipelines`` (in ``pipeline_dir``, if
    it brought any), then the built-in ones; errors name none of them by server path."""
    return PipelineResolver(
        [pipeline_dir] if pipeline_dir.is_dir() else [],
        labels={
            pipeline_dir: REQUEST_PIPELINES,
            BUILTIN_PIPELINE_DIR: "<built-in>",
            MELANGE_PIPELINE_DIR: "<melange>",
        },
    )


def parse_config(
    text: str,
    *,
    index: int,
    label: str,
    arch: str,
    resolver: PipelineResolver,
    policy: FetchPolicy | None = None,
) -> ParsedConfig | ConfigProblem:
    """Load and compile one config (build and tests); what is wrong, if anything. With
    ``policy``, each repository and key it names must be one the server may fetch."""
    config: Config | None = None
    try:
        config = load_config(text, filename=label, arch=arch)
        compiled = compile_build(config, resolver, steps=False)
        tests = compile_tests(config, resolver, steps=False)
        if policy is not None:
            check_fetches(config, policy)
    except (RecipeError, RecursionError) as exc:
        name = config.package.name if config is not None else _package_name(text)
        error = f"{exc}" if isinstance(exc, RecipeError) else "nested too deeply to be read"
        return ConfigProblem(index=index, config=label, package=name, error=f"{label}: {error}")
    return ParsedConfig(
        text=text,
        config=config,
        needs=compiled.needs_packages,
        world=tuple(environment_packages(config, compiled)),
        test_needs=tuple(dict.fromkeys(p for t in tests for p in t.contents.packages)),
    )


def check_fetches(config: Config, policy: FetchPolicy) -> None:
    """Every repository and key ``config`` names, its build's and its tests', is one
    ``policy`` allows; a :class:`~melange2.repo.policy.FetchRefused` naming the field
    otherwise."""
    sections = [("environment", config.environment)]
    if config.test is not None:
        sections.append(("test.environment", config.test.environment))
    for n, sp in enumerate(config.subpackages):
        if sp.test is not None:
            sections.append((f"subpackages[{n}].test.environment", sp.test.environment))
    for where, env in sections:
        for field_name in ("repositories", "keyring"):
            for i, entry in enumerate(getattr(env.contents, field_name)):
                policy.check(entry, f"{where}.contents.{field_name}[{i}]")


def _package_name(text: str) -> str:
    """``package.name`` as written in a config that does not load, if it can be read."""
    try:
        _, root = compose(text, "<config>")
        if root is None:
            return ""
        package = root.mapping().get("package")
        name = package.mapping().get("name") if package is not None else None
        return name.text() if name is not None else ""
    except RecipeError:
        return ""


@contextlib.contextmanager
def bulk_allocation() -> Iterator[None]:
    """No cyclic garbage collection while many configs are parsed.

    Parsing thousands of configs allocates millions of small acyclic objects that
    refcounting frees; the collector would scan the growing heap over and over (a
    quarter of a distribution's parse time). It is switched back on afterwards if it
    was on (a concurrent parse may then finish with it on: only slower)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


#: One config for a worker: (index in the request, label, text).
_Item = tuple[int, str, str]


def _plan_chunk(
    items: Sequence[_Item], arch: str, pipeline_dir: str, policy: FetchPolicy | None
) -> list[PlannedConfig | ConfigProblem]:
    """In a worker: what a dry run needs (or the problem) of each config of a chunk."""
    resolver = request_resolver(Path(pipeline_dir))
    out: list[PlannedConfig | ConfigProblem] = []
    with bulk_allocation():
        for index, label, text in items:
            parsed = parse_config(
                text, index=index, label=label, arch=arch, resolver=resolver, policy=policy
            )
            out.append(parsed if isinstance(parsed, ConfigProblem) else parsed.planned())
    return out


class WorkerError(Exception):
    """A worker process failed (not a config: the worker itself)."""


_LENGTH: Final = struct.Struct(">Q")


async def _send(stream: asyncio.StreamWriter, payload: object) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    await stream.drain()


async def _receive(stream: asyncio.StreamReader) -> object:
    (length,) = _LENGTH.unpack(await stream.readexactly(_LENGTH.size))
    return pickle.loads(await stream.readexactly(length))


class _Worker:
    """One ``python -m melange2.service.configs`` process: chunks in, nodes out (pickles
    framed by their length on its stdin and stdout; it imports the recipe code only)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def spawn(cls) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "melange2.service.configs",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        try:  # it says so once it has imported what it runs
            ready = await _receive(process.stdout)
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise WorkerError(f"plan worker {process.pid} did not start: {exc}") from exc
        if ready != "ready":
            raise WorkerError(f"plan worker {process.pid} did not start: {ready!r}")
        return cls(process)

    async def plan(
        self, chunk: Sequence[_Item], arch: str, pipeline_dir: str, policy: FetchPolicy | None
    ) -> list[PlannedConfig | ConfigProblem]:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            await _send(self.process.stdin, (list(chunk), arch, pipeline_dir, policy))
            answer = await _receive(self.process.stdout)
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise WorkerError(f"plan worker {self.process.pid} died: {exc}") from exc
        if isinstance(answer, str):  # the worker's own failure, as text
            raise WorkerError(f"plan worker {self.process.pid} failed: {answer}")
        assert isinstance(answer, list)
        return answer

    async def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), timeout=10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


def _serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """A worker's loop: one chunk in, its nodes out, until stdin ends."""
    hello = pickle.dumps("ready")
    stdout.write(_LENGTH.pack(len(hello)) + hello)
    stdout.flush()
    while header := stdin.read(_LENGTH.size):
        (length,) = _LENGTH.unpack(header)
        chunk, arch, pipeline_dir, policy = pickle.loads(stdin.read(length))
        answer: object
        try:
            answer = _plan_chunk(chunk, arch, pipeline_dir, policy)
        except Exception as exc:  # reported to the server, which fails the request
            answer = f"{type(exc).__name__}: {exc}"
        data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(_LENGTH.pack(len(data)) + data)
        stdout.flush()


class PlanWorkers:
    """Worker processes that plan a dry run's configs (:class:`PlannedConfig`).

    Each is ``python -m melange2.service.configs``, started on first use (or by
    :meth:`start`) and stopped by :meth:`aclose`; a chunk of configs goes to whichever is
    free. ``workers=1`` plans in a thread of this process instead.
    """

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers or os.cpu_count() or 1
        #: how many configs were given to :meth:`nodes` so far
        self.parsed = 0
        self._running: list[_Worker] = []
        self._lock = asyncio.Lock()

    @property
    def pids(self) -> tuple[int, ...]:
        """The running workers' process ids."""
        return tuple(w.process.pid for w in self._running)

    async def start(self) -> None:
        """Start the worker processes now (else the first large dry run does)."""
        if self.workers <= 1:
            return
        async with self._lock:
            missing = self.workers - len(self._running)
            if missing > 0:
                self._running += await asyncio.gather(*(_Worker.spawn() for _ in range(missing)))

    async def nodes(
        self,
        items: Sequence[_Item],
        arch: str,
        pipeline_dir: Path,
        policy: FetchPolicy | None = None,
    ) -> list[PlannedConfig | ConfigProblem]:
        """The node (or the problem) of every config of ``items``, in order (``policy``:
        see :func:`parse_config`)."""
        self.parsed += len(items)
        if self.workers <= 1 or len(items) < _PARALLEL_FROM:
            return await asyncio.to_thread(_plan_chunk, items, arch, str(pipeline_dir), policy)
        await self.start()
        # a few chunks per worker, so that one slow chunk does not hold the others up
        size = -(-len(items) // (self.workers * 4))
        chunks: asyncio.Queue[tuple[int, Sequence[_Item]]] = asyncio.Queue()
        for n, start in enumerate(range(0, len(items), size)):
            chunks.put_nowait((n, items[start : start + size]))
        results: dict[int, list[PlannedConfig | ConfigProblem]] = {}

        async def drain(worker: _Worker) -> None:
            while not chunks.empty():
                n, chunk = chunks.get_nowait()
                results[n] = await worker.plan(chunk, arch, str(pipeline_dir), policy)

        async with self._lock:  # one dry run at a time on the workers
            try:
                await asyncio.gather(*(drain(w) for w in self._running))
            except WorkerError:
                await self._stop_all()  # started afresh by the next large dry run
                raise
        return [node for n in sorted(results) for node in results[n]]

    async def _stop_all(self) -> None:
        running, self._running = self._running, []
        await asyncio.gather(*(w.stop() for w in running))

    async def aclose(self) -> None:
        """Stop the worker processes."""
        async with self._lock:
            await self._stop_all()


if __name__ == "__main__":
    # run as this module's importable copy, so that what it pickles (PlannedConfig) is
    # named melange2.service.configs.PlannedConfig, not __main__.PlannedConfig
    from melange2.service import configs

    configs._serve(sys.stdin.buffer, sys.stdout.buffer)
