"""A fake BuildKit for tests of what sits above the daemons (the executor, the runner,
the API, the lifespan): :class:`FakeBuildkit` takes a function that answers each solve
with the files of its result, and does what the daemon's exporters would with them.

It is a :class:`~melange2.buildkit.solver.Connect`: hand it to ``Builder(...,
connect=...)``, ``HealthProber(..., connect=...)`` or ``create_app(..., buildkit=...)``::

    def handler(call: SolveCall) -> dict[str, bytes]:
        # the melange-out tree: a directory per package, their files
        return {f"{name}/usr/share/{name}/marker": b"built\\n" for name in call.packages}

    fake = FakeBuildkit(handler)
    ...
    assert [c.addr for c in fake.solves] == ["tcp://fake:1"]

What the exporters get: a ``local`` exporter's directory receives the files; an
``image`` exporter with ``push`` pushes them as a one-layer image (to the registry its
``name`` names, a real one) and answers ``containerimage.digest``. Every vertex of the
definition is reported started and completed to ``on_progress``. A handler may raise
(:class:`~melange2.errors.SolveFailed`, :class:`~melange2.errors.BuildkitUnavailable`
...) to fail the solve as the daemon would, and may be a coroutine function. Assert on
:attr:`FakeBuildkit.solves` (what was asked), not on calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from types import TracebackType

from melange2.buildkit._proto.solver.pb import ops_pb2
from melange2.buildkit.client import (
    DaemonInfo,
    Exporter,
    LocalTree,
    LogChunk,
    Progress,
    SolveResult,
    VertexUpdate,
    WorkerInfo,
)
from melange2.buildkit.session import Session
from melange2.buildkit.tls import ClientTLS
from melange2.errors import BuildkitError
from melange2.oci.image import ImageRef, entries_from_directory, make_config, make_layer
from melange2.oci.image import make_manifest as _make_manifest
from melange2.oci.registry import RegistryClient
from melange2.platform import Platform

__all__ = ["FakeBuildkit", "SolveCall", "SolveHandler"]

_MKDIR_OUT = re.compile(r"^mkdir melange-out/(?P<name>.+)$")


@dataclass(frozen=True, kw_only=True)
class SolveCall:
    """A solve as the fake daemon at ``addr`` received it."""

    addr: str
    definition: ops_pb2.Definition
    exporters: tuple[Exporter, ...]
    session: Session | None
    #: every vertex's name (``llb.customname``), in the definition's order
    names: tuple[str, ...]
    #: the solve's progress callback (what :meth:`output` writes to)
    on_progress: Callable[[Progress], None] | None = field(default=None, compare=False, repr=False)

    def output(self, data: bytes) -> None:
        """Write ``data`` as the output of the solve's last step, now (a handler that
        takes its time shows a live log)."""
        if self.on_progress is not None:
            digest = _vertexes(self.definition)[-1].digest if self.names else "fake"
            self.on_progress(
                Progress(vertexes=(), logs=(LogChunk(digest=digest, stream=1, data=data),))
            )

    @property
    def packages(self) -> tuple[str, ...]:
        """The packages a melange2 build's solve makes (its ``mkdir melange-out/<name>``)."""
        return tuple(m["name"] for n in self.names if (m := _MKDIR_OUT.match(n)))


#: answers a solve with its result's files: ``{relative path: bytes}`` (a path ending in
#: ``/`` is a directory); may be a coroutine function, may raise to fail the solve
SolveHandler = Callable[[SolveCall], Mapping[str, bytes] | Awaitable[Mapping[str, bytes]]]


class FakeBuildkit:
    """A fake BuildKit daemon for every address (a test kit, not a daemon)."""

    def __init__(
        self,
        handler: SolveHandler,
        *,
        version: str = "v0.0.0-fake",
        platforms: Sequence[str] = ("linux/amd64", "linux/arm64"),
    ) -> None:
        self.handler = handler
        self.version = version
        self.platforms = tuple(Platform.parse(p) for p in platforms)
        #: every solve asked, in order
        self.solves: list[SolveCall] = []
        #: every address a connection was opened to, in order
        self.connections: list[str] = []

    def __call__(
        self, addr: str, *, tls: ClientTLS | None = None, connect_timeout: float = 10.0
    ) -> FakeDaemon:
        return FakeDaemon(self, addr)


@dataclass
class FakeDaemon:
    """One connection to the fake daemon (a :class:`~melange2.buildkit.solver.Solver`)."""

    fake: FakeBuildkit
    addr: str
    _opened: bool = field(default=False, init=False)

    async def __aenter__(self) -> FakeDaemon:
        if self._opened:
            raise RuntimeError("a connection can be opened only once")
        self._opened = True
        self.fake.connections.append(self.addr)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def info(self) -> DaemonInfo:
        return DaemonInfo(package="fake", version=self.fake.version, revision="")

    async def list_workers(self) -> list[WorkerInfo]:
        return [WorkerInfo(id="fake", platforms=self.fake.platforms, labels={})]

    async def solve(
        self,
        definition: ops_pb2.Definition,
        *,
        exporters: Sequence[Exporter] = (),
        ref: str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        cache_imports: Sequence[Mapping[str, str]] = (),
        cache_exports: Sequence[Mapping[str, str]] = (),
        session: Session | None = None,
    ) -> SolveResult:
        vertexes = _vertexes(definition)
        call = SolveCall(
            addr=self.addr,
            definition=definition,
            exporters=tuple(exporters),
            session=session,
            names=tuple(v.name for v in vertexes),
            on_progress=on_progress,
        )
        self.fake.solves.append(call)
        answer = self.fake.handler(call)
        files = await answer if inspect.isawaitable(answer) else answer
        now = datetime.now(UTC)
        done = tuple(
            VertexUpdate(
                digest=v.digest, name=v.name, started=now, completed=now, cached=False, error=""
            )
            for v in vertexes
        )
        if on_progress is not None:
            on_progress(Progress(vertexes=done, logs=()))
        response: dict[str, str] = {}
        trees: dict[int, LocalTree] = {}
        for i, exporter in enumerate(exporters):
            if exporter.type == "local" and exporter.output_dir is not None:
                trees[i] = await asyncio.to_thread(_write, exporter.output_dir, files)
            else:
                response |= await _export(exporter, files)
        return SolveResult(
            ref=ref or uuid.uuid4().hex,
            exporter_response=response,
            vertexes={v.digest: v for v in done},
            local_trees=trees,
        )


@dataclass(frozen=True)
class _Vertex:
    digest: str
    name: str


def _vertexes(definition: ops_pb2.Definition) -> list[_Vertex]:
    ops = list(getattr(definition, "def"))[:-1]  # the last op only points at the result
    found = []
    for data in ops:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        meta = definition.metadata.get(digest)
        name = meta.description.get("llb.customname", "") if meta is not None else ""
        found.append(_Vertex(digest=digest, name=name))
    return found


def _write(root: Path, files: Mapping[str, bytes]) -> LocalTree:
    """Write the result's files under ``root``, as the ``local`` exporter would: every
    entry (the directories leading to a file too) owned by root, as a build's are."""
    owners: dict[str, tuple[int, int]] = {}
    size = 0
    for rel, data in files.items():
        target = root / rel
        path = PurePosixPath(rel.rstrip("/"))
        for parent in (*reversed(path.parents[:-1]), path):
            owners[str(parent)] = (0, 0)
        if rel.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        size += len(data)
    return LocalTree(dest=root, entries=len(owners), bytes=size, owners=owners)


async def _export(exporter: Exporter, files: Mapping[str, bytes]) -> dict[str, str]:
    if exporter.type == "image" and exporter.attrs.get("push") == "true":
        ref = ImageRef.parse(exporter.attrs["name"])
        with tempfile.TemporaryDirectory(prefix="melange2-fake-bk-") as tmp:
            await asyncio.to_thread(_write, Path(tmp), files)
            layer = await asyncio.to_thread(lambda: make_layer(entries_from_directory(Path(tmp))))
        config = make_config(Platform.from_arch("x86_64"), [layer], env=[], cmd=[])
        manifest = _make_manifest(config, [layer])
        async with RegistryClient(ref.host) as registry:
            await registry.push_blob(ref.repo, layer.blob)
            await registry.push_blob(ref.repo, config)
            digest = await registry.push_manifest(ref.repo, ref.reference, manifest)
        return {"containerimage.digest": digest}
    raise BuildkitError(f"the fake daemon cannot export {exporter.type} {dict(exporter.attrs)}")
