"""Reuse: packages an earlier build made from the same inputs are not built again.

A successful build writes ``cache/<arch>/<digest>.json`` (see :mod:`.layout`) naming
where its packages are kept, with their index records (so reuse reads no APK), and
``cache/<arch>/quick/<quick digest>.json``, the same record under the digest of what
a farm knows before building anything (:func:`~melange2.build.inputs.quick_digest`).

* **At submission** (:class:`SubmissionReuse`): each package's environment is resolved
  now, its quick digest looked up; a record whose packages are all still stored and
  published, for a package nothing rebuilt in the same build could change
  (:func:`settle_reuse`), is reused without a backend's slot: its artifacts are linked
  into the new build (:meth:`SubmissionReuse.adopt`).
* **In an attempt** (the runner): once the build is planned, its input digest is looked
  up (:meth:`ReuseIndex.find`); a hit is reused instead of solving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Protocol

from melange2.apk.errors import ApkFormatError
from melange2.apk.index import IndexRecord, build_index, parse_index
from melange2.apk.signing import Signer
from melange2.build.environment_resolve import ResolvedEnvironment, Resolver
from melange2.build.inputs import quick_digest
from melange2.ids import BuildId
from melange2.jobs import BuildSpec, PackageJob, StepOptions
from melange2.recipe import Config
from melange2.repo.repository import Repository
from melange2.service.layout import Layout, Locations
from melange2.service.publish import Publication
from melange2.service.secrets import build_secrets
from melange2.service.settings import ServerSettings
from melange2.storage import Storage, StorageError, StorageNotFound

_log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ReuseRecord:
    input_digest: str
    arch: str
    build_id: str
    package: str
    #: storage prefix of the producing build's artifacts (``<prefix>/<arch>/<file>``)
    artifacts: str
    #: the packages' index records, in file order
    records: tuple[IndexRecord, ...]

    def files(self) -> list[str]:
        return [f"{self.arch}/{r.filename}" for r in self.records]

    def encode(self) -> bytes:
        return json.dumps(
            {
                "input_digest": self.input_digest,
                "arch": self.arch,
                "build_id": self.build_id,
                "package": self.package,
                "artifacts": self.artifacts,
                "index": build_index(self.records).decode(),
            },
            indent=1,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> ReuseRecord:
        raw = json.loads(data)
        return cls(
            input_digest=raw["input_digest"],
            arch=raw["arch"],
            build_id=raw["build_id"],
            package=raw["package"],
            artifacts=raw["artifacts"],
            records=parse_index(raw["index"]),
        )


class ReuseIndex:
    """The reuse records in the farm's storage, by input digest and by quick digest."""

    def __init__(self, storage: Storage, layout: Layout, signer: Signer | None = None) -> None:
        self.storage = storage
        self.layout = layout
        #: the farm's signing key: its public half is an input of every digest
        self.signer = signer

    def quick(
        self,
        *,
        arch: str,
        options: StepOptions,
        secrets: Iterable[str],
        text: str,
        pipelines: Mapping[str, bytes],
        sources: Mapping[str, bytes],
        environment_key: str,
    ) -> str:
        """A package's quick digest (the same at submission and in its attempt);
        ``secrets``: the names of the secrets its steps get (the server's and the
        build's), which are in the LLB (their values are not: a new value is no new
        build, a new name is)."""
        return quick_digest(
            arch=arch,
            config_text=text,
            pipelines=pipelines,
            sources=sources,
            environment_key=environment_key,
            options={**options.digest_fields(), "secrets": sorted(secrets)},
            signer=self.signer,
        )

    async def note(self, job: PackageJob) -> bytes:
        """The log of a package reused at submission (it never ran anywhere)."""
        lines = [f"input digest {job.input_digest}"]
        record = await self.find(job.arch, job.input_digest) if job.input_digest else None
        since = f" since {record.build_id}/{record.package}" if record else ""
        lines.append(
            f"inputs unchanged{since}: its packages were reused when the build was "
            "submitted, nothing was built"
        )
        return ("\n".join(lines) + "\n").encode()

    async def find(self, arch: str, digest: str) -> ReuseRecord | None:
        """The record for ``digest`` if every package it names is still stored."""
        return await self._read(self.layout.reuse_record(arch, digest))

    async def find_quick(self, arch: str, quick: str) -> ReuseRecord | None:
        """The record a quick digest led to, if every package it names is still stored."""
        return await self._read(self.layout.quick_record(arch, quick))

    async def remember_quick(self, quick: str, record: ReuseRecord) -> None:
        await self.storage.put_bytes(self.layout.quick_record(record.arch, quick), record.encode())

    @staticmethod
    def decode(data: bytes | None) -> ReuseRecord | None:
        """A stored record; ``None`` if missing or unreadable (the package is then built
        again, and its build rewrites the record)."""
        if data is None:
            return None
        try:
            return ReuseRecord.decode(data)
        except (ValueError, KeyError, ApkFormatError):
            return None

    async def _read(self, key: str) -> ReuseRecord | None:
        try:
            data = await self.storage.read_bytes(key)
        except StorageNotFound:
            return None
        record = self.decode(data)
        if record is None:
            return None
        for name in record.files():
            if not await self.storage.exists(f"{record.artifacts}/{name}"):
                return None
        return record

    async def remember(
        self,
        *,
        arch: str,
        digest: str,
        build_id: str,
        package: str,
        artifacts: str,
        records: Sequence[IndexRecord],
    ) -> ReuseRecord:
        record = ReuseRecord(
            input_digest=digest,
            arch=arch,
            build_id=build_id,
            package=package,
            artifacts=artifacts,
            records=tuple(records),
        )
        await self.storage.put_bytes(self.layout.reuse_record(arch, digest), record.encode())
        return record


def settle_reuse(
    candidates: Iterable[str],
    *,
    packages: Iterable[str],
    deps: Mapping[str, Sequence[str]],
    installs: Mapping[str, Set[str]],
    outputs: Mapping[str, Set[str]],
) -> set[str]:
    """Which of a build's ``candidates`` (packages whose inputs, resolved at submission,
    match an earlier build's) can really be reused without building.

    A candidate is reused only if every dependency of it in the build is reused too,
    and if nothing it installs (``installs``: the names and origins of its resolved
    environment) is made by a package of the build that will be built again
    (``outputs``: each package's own and subpackages' names): that package's new
    output could change the environment it would get at build time."""
    cached = set(candidates)
    every = set(packages)
    while True:
        rebuilt = every - cached
        made_again = set().union(*(outputs.get(p, set()) for p in rebuilt))
        keep = {
            p
            for p in cached
            if all(d in cached for d in deps.get(p, ()) if d in every)
            and installs.get(p, set()).isdisjoint(made_again)
        }
        if keep == cached:
            return cached
        cached = keep


@dataclass(frozen=True, kw_only=True)
class SubmittedPackage:
    """A package of a build being submitted, as the reuse check at submission sees it."""

    name: str
    text: str  #: the config as submitted
    config: Config
    world: tuple[str, ...]  #: its environment's packages (empty: a ``--base-image``)
    sources: Mapping[str, bytes]  #: its source files


@dataclass(frozen=True, kw_only=True)
class Reusable:
    """A package whose inputs, resolved at submission, match an earlier build's."""

    record: ReuseRecord
    #: names and origins of the packages its environment installs
    installs: frozenset[str]


class Resolvers(Protocol):
    """Where environments are resolved (the builder's
    :class:`~melange2.build.environment_resolve.EnvironmentBuilder`)."""

    async def resolver(
        self, arch: str, repositories: Sequence[str | Repository], keyring: Sequence[str]
    ) -> Resolver: ...


class SubmissionReuse:
    """Reuse decided when a build is submitted (see the module's docstring)."""

    def __init__(
        self,
        settings: ServerSettings,
        index: ReuseIndex,
        environments: Resolvers,
        publication: Publication,
        locations: Locations,
    ) -> None:
        self.settings = settings
        self.index = index
        self.environments = environments
        self.publication = publication
        self.locations = locations
        self.storage = index.storage

    async def find(
        self,
        spec: BuildSpec,
        packages: Sequence[SubmittedPackage],
        deps: Mapping[str, Sequence[str]],
        pipelines: Mapping[str, bytes],
    ) -> dict[str, Reusable]:
        """The packages of a build being submitted that an earlier build already made
        from the same inputs, resolved now against the farm's repository: for each, the
        reuse record its quick digest led to, when every package that record names is
        still stored and already published; and among those, the ones no package the
        build rebuilds could change (:func:`settle_reuse`: ``deps`` are the build's).

        Thousands of packages are checked in a few batched calls, not one call each: a
        no-op resubmission of a distribution is this and nothing else."""
        if spec.force:
            return {}
        found = await self._candidates(spec, packages, pipelines)
        if not found:
            return {}
        kept = settle_reuse(
            found,
            packages=[p.name for p in packages],
            deps=deps,
            installs={n: r.installs for n, r in found.items()},
            outputs={
                p.name: {p.name, *(sub.name for sub in p.config.subpackages)} for p in packages
            },
        )
        return {n: found[n] for n in kept}

    async def _candidates(
        self,
        spec: BuildSpec,
        packages: Sequence[SubmittedPackage],
        pipelines: Mapping[str, bytes],
    ) -> dict[str, Reusable]:
        arch = spec.arch
        try:
            # an optimisation: a slow repository host never holds a submission longer
            async with asyncio.timeout(self.settings.fetch_timeout):
                resolved = await self._resolve_all(arch, packages)
        except Exception:  # the build reports it when the package runs
            _log.warning("reuse at submission skipped: cannot resolve", exc_info=True)
            return {}
        candidates = [(pkg, env) for pkg, env in zip(packages, resolved, strict=True) if env]
        secrets = build_secrets(self.settings.secret_env, spec.secrets)

        def quick_keys() -> list[str]:
            return [
                self.index.layout.quick_record(
                    arch,
                    self.index.quick(
                        arch=arch,
                        options=spec.options,
                        secrets=secrets,
                        text=pkg.text,
                        pipelines=pipelines,
                        sources=pkg.sources,
                        environment_key=env.key,
                    ),
                )
                for pkg, env in candidates
            ]

        keys = await asyncio.to_thread(quick_keys)
        found = await self.storage.read_many(keys)
        records = await asyncio.to_thread(lambda: [self.index.decode(d) for d in found])
        published = await self.publication.published.fresh(arch)
        hits: dict[str, tuple[ReuseRecord, ResolvedEnvironment]] = {}
        for (pkg, env), record in zip(candidates, records, strict=True):
            if record is not None and all(
                (now := published.get(r.filename)) is not None and now.checksum == r.checksum
                for r in record.records
            ):
                hits[pkg.name] = (record, env)
        files = [f"{r.artifacts}/{f}" for r, _ in hits.values() for f in r.files()]
        present = dict(zip(files, await self.storage.exists_many(files), strict=True))
        return {
            name: Reusable(
                record=record,
                installs=frozenset(
                    n
                    for p in env.resolution.packages
                    for n in (p.record.name, p.record.origin)
                    if n
                ),
            )
            for name, (record, env) in hits.items()
            if all(present[f"{record.artifacts}/{f}"] for f in record.files())
        }

    async def _resolve_all(
        self, arch: str, packages: Sequence[SubmittedPackage]
    ) -> list[ResolvedEnvironment | None]:
        """Each package's environment as its build would resolve it now (the build's
        staging repository is empty yet); ``None`` where there is none or it fails."""
        s = self.settings
        resolvers: dict[tuple[tuple[str, ...], tuple[str, ...]], Resolver] = {}
        for pkg in packages:
            contents = pkg.config.environment.contents
            group = (tuple(contents.repositories), tuple(contents.keyring))
            if pkg.world and group not in resolvers:
                resolvers[group] = await self.environments.resolver(
                    arch,
                    [
                        *contents.repositories,
                        self.publication.published_repository(),
                        *s.repositories,
                    ],
                    [*contents.keyring, str(s.key_path) + ".pub", *s.keyrings],
                )

        def resolve_all() -> list[ResolvedEnvironment | None]:
            out: list[ResolvedEnvironment | None] = []
            for pkg in packages:
                contents = pkg.config.environment.contents
                resolver = resolvers.get((tuple(contents.repositories), tuple(contents.keyring)))
                try:
                    out.append(resolver.resolve(pkg.world) if resolver and pkg.world else None)
                except Exception:  # the build reports it when the package runs
                    out.append(None)
            return out

        return await asyncio.to_thread(resolve_all)

    async def adopt(self, build_id: BuildId, reused: Mapping[str, Reusable]) -> dict[str, str]:
        """Give each package reused at submission its own copy of the earlier artifacts
        (hard links locally, server-side copies in a bucket); returns their locations."""
        pairs = []
        where = {}
        for name, reusable in reused.items():
            record = reusable.record
            artifacts = self.locations.layout.artifacts(build_id, name)
            pairs += [(f"{record.artifacts}/{f}", f"{artifacts}/{f}") for f in record.files()]
            where[name] = self.storage.url(artifacts)
        await self.storage.copy_many(pairs)
        return where

    async def forget(self, build_id: BuildId, names: Sequence[str]) -> None:
        """Undo :meth:`adopt` for a submission that failed after it (best effort)."""
        for name in names:
            prefix = self.locations.layout.artifacts(build_id, name)
            with contextlib.suppress(StorageError):
                for obj in await self.storage.list(prefix):
                    await self.storage.delete(obj.key)
