"""A submission's configs: parse and compile each one, in this process or in workers.

:func:`parse_config` is the one way a submitted config is read: loaded, its build and its
tests compiled (every ``uses:`` resolved), the packages its build and tests install
gathered. A config that is not valid gives a :class:`~melange2.errors.ConfigProblem`
instead of an exception, so a submission can answer with all of them at once.

A dry run needs no more of each config than its node of the dependency graph; those are
small, so :class:`PlanWorkers` computes them in worker processes, one chunk of configs
each, and a distribution's thousands of configs are planned on every core at once. The
workers run :func:`parse_config` too: a dry run and a build refuse the same configs with
the same errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from melange2.errors import ConfigProblem, RecipeError
from melange2.recipe import (
    Config,
    PipelineResolver,
    compile_build,
    compile_tests,
    environment_packages,
    load_config,
)
from melange2.scheduler.graph import PackageNode, node_from_config

__all__ = ["REQUEST_PIPELINES", "ParsedConfig", "PlanWorkers", "bulk_allocation", "parse_config"]

#: How errors name the request's ``pipelines`` (written to a temporary directory).
REQUEST_PIPELINES: Final = "pipelines"
#: Fewer configs than this are planned in this process (workers would cost more).
_PARALLEL_FROM: Final = 256


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


def parse_config(
    text: str, *, index: int, label: str, arch: str, resolver: PipelineResolver
) -> ParsedConfig | ConfigProblem:
    """Load and compile one config (build and tests); what is wrong, if anything."""
    config: Config | None = None
    try:
        config = load_config(text, filename=label, arch=arch)
        compiled = compile_build(config, resolver, steps=False)
        tests = compile_tests(config, resolver, steps=False)
    except RecipeError as exc:
        name = config.package.name if config is not None else ""
        return ConfigProblem(index=index, config=label, package=name, error=f"{label}: {exc}")
    return ParsedConfig(
        text=text,
        config=config,
        needs=compiled.needs_packages,
        world=tuple(environment_packages(config, compiled)),
        test_needs=tuple(dict.fromkeys(p for t in tests for p in t.contents.packages)),
    )


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
    items: Sequence[_Item], arch: str, pipeline_dir: str
) -> list[PackageNode | ConfigProblem]:
    """In a worker: the graph node (or the problem) of each config of a chunk."""
    directory = Path(pipeline_dir)
    resolver = PipelineResolver(
        [directory] if directory.is_dir() else [], labels=[REQUEST_PIPELINES]
    )
    out: list[PackageNode | ConfigProblem] = []
    with bulk_allocation():
        for index, label, text in items:
            parsed = parse_config(text, index=index, label=label, arch=arch, resolver=resolver)
            out.append(parsed if isinstance(parsed, ConfigProblem) else parsed.node())
    return out


class PlanWorkers:
    """Worker processes that compute the graph nodes of a dry run's configs.

    Started on first use (``forkserver``: the workers are forked from a clean process
    that has imported melange2, never from the server with its threads); ``close()``
    stops them. ``workers=1`` plans in the calling thread instead.
    """

    def __init__(self, workers: int = 0) -> None:
        self.workers = workers or os.cpu_count() or 1
        #: how many configs were given to :meth:`nodes` so far
        self.parsed = 0
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["melange2.service.configs"])
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        return self._pool

    async def nodes(
        self, items: Sequence[_Item], arch: str, pipeline_dir: Path
    ) -> list[PackageNode | ConfigProblem]:
        """The node (or the problem) of every config of ``items``, in order."""
        self.parsed += len(items)
        if self.workers <= 1 or len(items) < _PARALLEL_FROM:
            return await asyncio.to_thread(_plan_chunk, items, arch, str(pipeline_dir))
        # a few chunks per worker, so that one slow chunk does not hold the others up
        count = self.workers * 4
        size = -(-len(items) // count)
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        loop = asyncio.get_running_loop()
        pool = self._executor()
        results = await asyncio.gather(
            *(
                loop.run_in_executor(pool, _plan_chunk, chunk, arch, str(pipeline_dir))
                for chunk in chunks
            )
        )
        return [node for chunk in results for node in chunk]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
