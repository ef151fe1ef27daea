"""The BuildKit seam: what the farm asks of a daemon, and how it reaches one.

A :class:`Solver` is one open connection to a daemon: solve a definition, say what the
daemon is and what it runs. A :class:`Connect` opens one for an address; the real one
is :class:`~melange2.buildkit.client.BuildkitClient` itself (its constructor and
``async with``). The build executor (:class:`~melange2.build.executor.Builder`) and
the health probes (:class:`~melange2.pool.health.HealthProber`) take a ``Connect``, so
a test plugs a fake daemon in there; ``melange2.testenv.buildkit.FakeBuildkit(handler)``
answers every solve with a function::

    def handler(call: SolveCall) -> dict[str, bytes]:
        return {"hello/usr/share/hello/marker": b"hi\\n"}  # the result's files

    builder = Builder(registry, cache_dir, connect=FakeBuildkit(handler))

    async with connect("tcp://127.0.0.1:1234", tls=None) as daemon:
        result = await daemon.solve(definition, exporters=[local_export(out)])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from melange2.buildkit._proto.solver.pb.ops_pb2 import Definition
from melange2.buildkit.client import DaemonInfo, Exporter, Progress, SolveResult, WorkerInfo
from melange2.buildkit.session import Session
from melange2.buildkit.tls import ClientTLS

__all__ = ["Connect", "Solver"]


class Solver(Protocol):
    """One connection to a BuildKit daemon."""

    async def solve(
        self,
        definition: Definition,
        *,
        exporters: Sequence[Exporter] = (),
        ref: str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        cache_imports: Sequence[Mapping[str, str]] = (),
        cache_exports: Sequence[Mapping[str, str]] = (),
        session: Session | None = None,
    ) -> SolveResult:
        """Solve ``definition`` and run its exporters; progress goes to ``on_progress``.
        Raises :class:`~melange2.errors.SolveFailed` for the build's own failure,
        :class:`~melange2.errors.BuildkitUnavailable` when the daemon is the problem."""
        ...

    async def info(self) -> DaemonInfo:
        """The daemon's BuildKit version."""
        ...

    async def list_workers(self) -> list[WorkerInfo]:
        """The daemon's workers and the platforms they run."""
        ...


class Connect(Protocol):
    """Opens a :class:`Solver` for the daemon at ``addr`` (``tcp://host:port``,
    ``unix:///path``), over TLS with ``tls``; use it once, with ``async with``."""

    def __call__(
        self, addr: str, *, tls: ClientTLS | None = None, connect_timeout: float = 10.0
    ) -> AbstractAsyncContextManager[Solver]: ...
