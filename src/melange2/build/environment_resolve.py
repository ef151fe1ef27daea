"""From ``environment.contents`` to an environment image: load the repositories'
indexes (signatures checked against the keyring), resolve the packages as apk does,
fetch them into the local cache, and compose the image (see :mod:`.environment`)."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from melange2.aio import all_of
from melange2.build.environment import (
    EnvironmentComposer,
    EnvironmentSpec,
    EnvPackage,
    LayerCache,
    environment_key,
)
from melange2.cache import SizedCache
from melange2.errors import RecipeError
from melange2.fsutil import write_atomic
from melange2.oci.image import ImageRef
from melange2.oci.registry import RegistryClient
from melange2.platform import Platform
from melange2.repo.policy import FetchPolicy, is_url
from melange2.repo.repository import (
    IndexCache,
    LoadedIndex,
    Repository,
    load_indexes,
    map_fetch_errors,
)
from melange2.repo.resolve import Resolution, ResolvedPackage, installed_db_entry, resolve


@dataclass(frozen=True, kw_only=True)
class EnvironmentRequest:
    """What an environment must contain and where its packages may come from."""

    arch: str
    packages: Sequence[str]
    #: locations (paths, URLs) or repositories with their own reader (a bucket)
    repositories: Sequence[str | Repository]
    keyring: Sequence[str]  #: public key files (paths or http(s) URLs)
    #: unsigned local outputs (tests of a build)
    untrusted_repositories: Sequence[str | Repository] = ()


@dataclass(frozen=True, kw_only=True)
class ResolvedEnvironment:
    """An environment's packages, before anything is fetched: enough to name its image."""

    resolution: Resolution
    key: str  #: :func:`environment_key`, the image's tag
    repositories: tuple[str, ...]  #: what /etc/apk/repositories lists
    keys: Mapping[str, bytes]


@dataclass(frozen=True, kw_only=True)
class Resolver:
    """Loaded indexes and keys, resolving worlds against them (thread-safe)."""

    arch: str
    indexes: Sequence[LoadedIndex]
    keys: Mapping[str, bytes]
    listed: tuple[str, ...]

    def resolve(self, packages: Sequence[str]) -> ResolvedEnvironment:
        resolution = resolve(packages, self.indexes, self.arch)
        key = environment_key(
            platform=Platform.from_arch(self.arch),
            records=[p.record for p in resolution.packages],
            world=tuple(packages),
            repositories=self.listed,
            keys=self.keys,
        )
        return ResolvedEnvironment(
            resolution=resolution, key=key, repositories=self.listed, keys=self.keys
        )


@dataclass(frozen=True, kw_only=True)
class PreparedEnvironment:
    image: ImageRef
    resolution: Resolution
    key: str = ""  #: the image's key (:func:`environment_key`)


#: packages fetched at once for one environment
FETCHES = 4
#: the largest key file fetched
_MAX_KEY_BYTES = 64 * 1024
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,200}", re.ASCII)


class EnvironmentBuilder:
    """Resolves and composes environments; one per process, caches shared.

    ``policy`` says which repositories and keys the configs may name (the server's
    ``--fetch-allow``, see :mod:`melange2.repo.policy`); the default allows anything
    (``melange2 build``). Every location is checked before it is read, and every HTTP
    request (redirects included) as it is sent."""

    def __init__(
        self, registry: RegistryClient, cache_dir: Path, policy: FetchPolicy | None = None
    ) -> None:
        self.registry = registry
        self.cache_dir = cache_dir
        self.policy = policy or FetchPolicy.open()
        self.composer = EnvironmentComposer(
            registry, LayerCache(cache_dir / "layers"), installed_db_entry
        )
        self._http: httpx.AsyncClient | None = None
        self.indexes = IndexCache()
        #: downloaded keys: URL -> (file name, sha256 of the content)
        self._key_urls: SizedCache[str, tuple[str, str]] = SizedCache(
            1024 * 1024, lambda entry: 200 + len(entry[0])
        )

    def _client(self) -> httpx.AsyncClient:
        """One HTTP client for every environment (making one builds an SSL context: ~50 ms)."""
        if self._http is None or self._http.is_closed:
            policy = self.policy

            async def check(request: httpx.Request) -> None:
                policy.check_request(str(request.url))

            self._http = httpx.AsyncClient(
                timeout=policy.timeout if not policy.unrestricted else 60.0,
                follow_redirects=True,
                event_hooks={"request": [check]},
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def resolver(
        self,
        arch: str,
        repositories: Sequence[str | Repository],
        keyring: Sequence[str],
        untrusted: Sequence[str | Repository] = (),
    ) -> Resolver:
        """Load the indexes once; the returned resolver resolves any number of worlds
        against them (thousands at a submission, without reading an index again)."""
        for n, repo in enumerate(repositories):
            if isinstance(repo, str):
                self.policy.check(repo, f"repositories[{n}]")
        for n, key in enumerate(keyring):
            self.policy.check(key, f"keyring[{n}]")
        for n, repo in enumerate(untrusted):
            if isinstance(repo, str):
                self.policy.check(repo, f"repositories[{n}]")
        http = self._client()
        keys = await self._keys(keyring, http)
        indexes = await load_indexes(
            repositories, arch, keyring=list(keys.values()), client=http, cache=self.indexes
        )
        if untrusted:
            indexes = [
                *await load_indexes(
                    untrusted,
                    arch,
                    keyring=[],
                    client=http,
                    allow_untrusted=True,
                    cache=self.indexes,
                ),
                *indexes,
            ]
        pems = {name: await asyncio.to_thread(path.read_bytes) for name, path in keys.items()}
        return Resolver(arch=arch, indexes=indexes, keys=pems, listed=tuple(_listed(repositories)))

    async def resolve(self, request: EnvironmentRequest) -> ResolvedEnvironment:
        """The packages ``request`` would install and the key of its image, with no
        package fetched and nothing pushed."""
        resolver = await self.resolver(
            request.arch,
            request.repositories,
            request.keyring,
            request.untrusted_repositories,
        )
        return await asyncio.to_thread(resolver.resolve, request.packages)

    async def prepare(self, request: EnvironmentRequest) -> PreparedEnvironment:
        resolved = await self.resolve(request)
        http = self._client()
        fetching = asyncio.Semaphore(FETCHES)

        async def fetch(package: ResolvedPackage) -> EnvPackage:
            async with fetching:  # a download or copy, then a check, each in a thread
                path = await package.index.fetch(
                    package.record, cache_dir=self.cache_dir / "apks", client=http
                )
            return EnvPackage(record=package.record, apk=path)

        fetched = await all_of(fetch(p) for p in resolved.resolution.packages)
        spec = EnvironmentSpec(
            platform=Platform.from_arch(request.arch),
            packages=fetched,
            world=tuple(request.packages),
            repositories=resolved.repositories,
            keys=resolved.keys,
        )
        image = await self.composer.compose(spec)
        return PreparedEnvironment(image=image, resolution=resolved.resolution, key=resolved.key)

    async def _keys(self, keyring: Sequence[str], http: httpx.AsyncClient) -> dict[str, Path]:
        """Key files by name. A URL is downloaded once and kept by the digest of its
        content (``keys/<sha256>/<name>``), never by its file name alone: a key fetched
        for one config can never stand in for another URL's key of the same name."""
        keys: dict[str, Path] = {}
        for entry in keyring:
            if is_url(entry):
                path = await self._fetch_key(entry, http)
            else:
                path = Path(entry.removeprefix("file://"))
                if not path.is_file():
                    raise RecipeError(f"keyring entry {entry}: no such file")
            held = keys.get(path.name)
            if held is not None and held != path and held.read_bytes() != path.read_bytes():
                raise RecipeError(
                    f"keyring entry {entry}: another entry is also named {path.name} "
                    "but holds a different key"
                )
            keys[path.name] = path
        return keys

    async def _fetch_key(self, url: str, http: httpx.AsyncClient) -> Path:
        name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        if not _KEY_NAME.fullmatch(name) or ".." in name:
            raise RecipeError(f"key {url}: its file name cannot name a key in /etc/apk/keys")
        known = self._key_urls.get(url)
        if known is not None:
            path = self.cache_dir / "keys" / known[1] / known[0]
            if path.is_file():
                return path
        async with map_fetch_errors(f"key {url}", RecipeError), http.stream("GET", url) as resp:
            if resp.status_code != 200:
                raise RecipeError(f"cannot fetch key {url}: HTTP {resp.status_code}")
            data = b""
            async for chunk in resp.aiter_bytes():
                data += chunk
                if len(data) > _MAX_KEY_BYTES:
                    raise RecipeError(f"key {url}: larger than {_MAX_KEY_BYTES} bytes")
        digest = hashlib.sha256(data).hexdigest()
        path = self.cache_dir / "keys" / digest / name
        if not path.is_file():
            await asyncio.to_thread(write_atomic, path, data)
        self._key_urls.put(url, (path.name, digest))
        return path


def _listed(repositories: Sequence[str | Repository]) -> list[str]:
    """What ``/etc/apk/repositories`` lists: the URLs a build could reach. Directories and
    buckets of the machine that resolved the environment mean nothing inside it (and a
    build's staging directory would make every build's environment different)."""
    listed = []
    for repo in repositories:
        location = repo.location if isinstance(repo, Repository) else repo
        if location.startswith(("http://", "https://")):
            listed.append(location)
    return listed
