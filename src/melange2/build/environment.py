"""Build environments as OCI images composed from cached per-package layers.

An APK's data stream is already a gzipped tar, so it *is* an OCI layer: each package
becomes one layer, computed once per package checksum and kept in a local cache. An
environment is then those layers in install order plus one small layer of its own
(the installed-packages database, world, repositories, keys, accounts, the
workspace), a config and a manifest. A new combination of packages already seen costs
one small layer and three small uploads; the same combination again costs one
manifest lookup, because the image is tagged by the digest of its inputs.

Example::

    composer = EnvironmentComposer(registry, LayerCache(Path("~/.cache/melange2")))
    ref = await composer.compose(packages, platform=Platform.from_arch("x86_64"), ...)
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from melange2.aio import all_of
from melange2.apk.index import IndexRecord
from melange2.apk.reader import DataEntry, read_apk
from melange2.cache import SizedCache
from melange2.errors import ManifestNotFound
from melange2.fsutil import write_atomic
from melange2.oci.image import (
    LAYER_MEDIA_TYPE,
    Blob,
    BuiltLayer,
    Entry,
    ImageRef,
    Layer,
    make_config,
    make_layer,
    make_manifest,
)
from melange2.oci.registry import RegistryClient
from melange2.platform import Platform

ENV_REPO = "melange2/env"
#: bump when the layout of composed images changes, so old tags are not reused
COMPOSER_VERSION = "3"
#: the build account melange's environments get (apko appends it to the packages' own
#: /etc/passwd and /etc/group, or writes files holding it alone)
BUILD_USER = b"build:x:1000:1000:Account created by apko:/home/build:/bin/sh\n"
BUILD_GROUP = b"build:x:1000:build\n"
#: an environment whose packages ship no account files
PASSWD = BUILD_USER
GROUP = BUILD_GROUP
ENV_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: package layers made at once, and uploaded at once, by one composer
LAYER_WORKERS = max(2, os.cpu_count() or 1)
UPLOADS = 4

#: renders one package's part of /lib/apk/db/installed from its record and file list
DbFragment = Callable[[IndexRecord, Sequence[DataEntry]], str]


def skeleton_entries(passwd: bytes = b"", group: bytes = b"") -> list[Entry]:
    """What every build environment has whatever its packages: accounts, /tmp, the
    workspace (apko makes the same from an image config's accounts and paths).

    ``passwd`` and ``group`` are the packages' own account files (the last package
    shipping one wins, as when installed); the build account is appended, as apko does.
    """
    return [
        Entry(path="etc", kind="dir", mode=0o755),
        Entry(path="etc/passwd", kind="file", data=_append_line(passwd, BUILD_USER)),
        Entry(path="etc/group", kind="file", data=_append_line(group, BUILD_GROUP)),
        Entry(path="tmp", kind="dir", mode=0o1777),
        Entry(path="var", kind="dir", mode=0o755),
        Entry(path="var/tmp", kind="dir", mode=0o1777),
        Entry(path="root", kind="dir", mode=0o700),
        Entry(path="home", kind="dir", mode=0o755),
        Entry(path="home/build", kind="dir", mode=0o755),
    ]


def _append_line(existing: bytes, line: bytes) -> bytes:
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    return existing + line


@dataclass(frozen=True, kw_only=True)
class EnvPackage:
    """A resolved package and the local file it was fetched to."""

    record: IndexRecord
    apk: Path


@dataclass(frozen=True, kw_only=True)
class PackageLayer:
    """A package's layer as the registry knows it, and its installed-db fragment."""

    digest: str
    size: int
    diff_id: str
    db_fragment: str
    #: the package's own /etc/passwd and /etc/group ("" when it ships none)
    passwd: str = ""
    group: str = ""
    #: the packages whose files this one's replace (``.PKGINFO`` ``replaces``)
    replaces: tuple[str, ...] = ()


class LayerCache:
    """Per-package layers on local disk, keyed by the package's control checksum."""

    def __init__(self, root: Path) -> None:
        self.root = root
        #: layers made or read this process, by control checksum (bounded by size)
        self._memo: SizedCache[bytes, PackageLayer] = SizedCache(
            64 * 1024 * 1024, lambda layer: 400 + len(layer.db_fragment)
        )

    def _meta(self, record: IndexRecord) -> Path:
        return self.root / "layers" / f"{record.checksum.hex()}.v2.json"

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest.replace(":", "-")

    def get(self, pkg: EnvPackage, fragment: DbFragment) -> PackageLayer:
        """The package's layer, made from its APK the first time only."""
        known = self._memo.get(pkg.record.checksum)
        if known is not None:
            return known
        meta = self._meta(pkg.record)
        if meta.exists():
            doc = json.loads(meta.read_text())
            if "replaces" in doc:  # older entries did not record it: made again
                layer = PackageLayer(**{**doc, "replaces": tuple(doc["replaces"])})
                if self.blob_path(layer.digest).exists():
                    self._memo.put(pkg.record.checksum, layer)
                    return layer
        # one pass: the data stream as it is (the layer), its inflated tar hashed (the
        # layer's diff_id) and listed (the installed-db fragment)
        stream = bytearray()
        diff_id = hashlib.sha256()
        package = read_apk(
            pkg.apk, verify_checksums=False, on_data_raw=stream.extend, on_data_plain=diff_id.update
        )
        entries = package.entries
        digest = f"sha256:{package.data_sha256}"
        accounts = _account_files(bytes(stream), entries)
        layer = PackageLayer(
            digest=digest,
            size=len(stream),
            diff_id=f"sha256:{diff_id.hexdigest()}",
            db_fragment=fragment(pkg.record, entries),
            passwd=accounts.get("etc/passwd", ""),
            group=accounts.get("etc/group", ""),
            replaces=tuple(package.info.replaces),
        )
        write_atomic(self.blob_path(digest), bytes(stream), durable=False)
        write_atomic(meta, json.dumps(layer.__dict__).encode(), durable=False)
        self._memo.put(pkg.record.checksum, layer)
        return layer


@dataclass(frozen=True, kw_only=True)
class EnvironmentSpec:
    """Everything an environment image is made of; its digest names the image."""

    platform: Platform
    packages: Sequence[EnvPackage]
    world: Sequence[str]
    repositories: Sequence[str]
    keys: Mapping[str, bytes]  #: key file name -> PEM, installed in /etc/apk/keys

    def key(self) -> str:
        return environment_key(
            platform=self.platform,
            records=[p.record for p in self.packages],
            world=self.world,
            repositories=self.repositories,
            keys=self.keys,
        )


def environment_key(
    *,
    platform: Platform,
    records: Sequence[IndexRecord],
    world: Sequence[str],
    repositories: Sequence[str],
    keys: Mapping[str, bytes],
) -> str:
    """The digest naming an environment image (its tag): known from the resolution
    alone, before any package is fetched or any layer made."""
    doc = {
        "v": COMPOSER_VERSION,
        "platform": str(platform),
        "packages": [r.checksum.hex() for r in records],
        "world": list(world),
        "repositories": list(repositories),
        "keys": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(keys.items())},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


class EnvironmentComposer:
    """Compose and push environment images; remember what it pushed this process.

    Concurrent builds often need the same environment, or environments sharing package
    layers: each image and each layer is composed and pushed once, the others wait for
    it (pushing the same blob twice at once makes the registry refuse a manifest)."""

    def __init__(self, registry: RegistryClient, cache: LayerCache, fragment: DbFragment) -> None:
        self.registry = registry
        self.cache = cache
        self.fragment = fragment
        #: images known to be in the registry, by key (bounded: one per environment)
        self._known: SizedCache[str, ImageRef] = SizedCache(8 * 1024 * 1024, lambda _: 400)
        self._composing: dict[str, asyncio.Task[ImageRef]] = {}
        self._pushing: dict[str, asyncio.Task[None]] = {}
        #: layers made at once (each in a thread: inflating and hashing release the GIL),
        #: and uploaded at once
        self._making = _LoopSemaphore(LAYER_WORKERS)
        self._uploads = _LoopSemaphore(UPLOADS)

    async def compose(self, spec: EnvironmentSpec) -> ImageRef:
        """The image for ``spec``, pushed if the registry does not have it yet."""
        key = spec.key()
        known = self._known.get(key)
        if known is not None:
            return known
        task = self._composing.get(key)
        if task is None:
            task = asyncio.create_task(self._compose(spec, key), name=f"compose {key[:12]}")
            self._composing[key] = task
            task.add_done_callback(lambda _: self._composing.pop(key, None))
        return await asyncio.shield(task)

    async def _compose(self, spec: EnvironmentSpec, key: str) -> ImageRef:
        tag = f"env-{key[:48]}"
        try:
            existing = await self.registry.get_manifest(ENV_REPO, tag)
        except ManifestNotFound:
            ref = await self._build(spec, tag)
        else:
            ref = ImageRef(host=self.registry.host, repo=ENV_REPO, tag=tag, digest=existing.digest)
        self._known.put(key, ref)
        return ref

    async def _build(self, spec: EnvironmentSpec, tag: str) -> ImageRef:
        async def made(pkg: EnvPackage) -> tuple[str, PackageLayer]:
            async with self._making.get():
                layer = await asyncio.to_thread(self.cache.get, pkg, self.fragment)
            await self._push_layer(layer.digest)  # while the next ones are made
            return pkg.record.name, layer

        layers = layer_order(await all_of(made(pkg) for pkg in spec.packages))
        own = await asyncio.to_thread(_own_layer, spec, layers)
        await self.registry.push_blob(ENV_REPO, own.blob)
        all_layers: list[Layer] = [
            *(Layer(digest=x.digest, size=x.size, diff_id=x.diff_id) for x in layers),
            own,
        ]
        config = make_config(spec.platform, all_layers, env=[ENV_PATH], cmd=["/bin/sh"])
        await self.registry.push_blob(ENV_REPO, config)
        manifest = make_manifest(config, all_layers)
        digest = await self.registry.push_manifest(ENV_REPO, tag, manifest)
        return ImageRef(host=self.registry.host, repo=ENV_REPO, tag=tag, digest=digest)

    async def _push_layer(self, digest: str) -> None:
        task = self._pushing.get(digest)
        if task is None:
            task = asyncio.create_task(self._push_cached(digest), name=f"push {digest[:19]}")
            self._pushing[digest] = task
            task.add_done_callback(lambda _: self._pushing.pop(digest, None))
        await asyncio.shield(task)

    async def _push_cached(self, digest: str) -> None:
        async with self._uploads.get():
            if not await self.registry.has_blob(ENV_REPO, digest):
                data = await asyncio.to_thread(self.cache.blob_path(digest).read_bytes)
                blob = Blob(media_type=LAYER_MEDIA_TYPE, data=data)
                await self.registry.push_blob(ENV_REPO, blob)


class _LoopSemaphore:
    """A semaphore for whichever event loop runs (a composer may outlive one loop, as
    in ``melange2 build`` runs and tests calling :func:`asyncio.run` more than once)."""

    def __init__(self, value: int) -> None:
        self.value = value
        self._held: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None

    def get(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._held is None or self._held[0] is not loop:
            self._held = (loop, asyncio.Semaphore(self.value))
        return self._held[1]


def layer_order(layers: Sequence[tuple[str, PackageLayer]]) -> list[PackageLayer]:
    """Layers in install order, except that a package another one ``replaces`` goes
    below it: where both ship a path (busybox's ``/usr/bin/ar`` applet and binutils'
    ``ar``), the replacing package's file is the one installed, as apk does."""
    replaced = {name for _, layer in layers for name in layer.replaces}
    below = [layer for name, layer in layers if name in replaced]
    above = [layer for name, layer in layers if name not in replaced]
    return [*below, *above]


def _account_files(stream: bytes, entries: Sequence[DataEntry]) -> dict[str, str]:
    """The package's /etc/passwd and /etc/group, when it ships them (``stream``: its
    data stream, inflated again only then)."""
    wanted = {"etc/passwd", "etc/group"}
    if not any(e.path in wanted and e.kind == "file" for e in entries):
        return {}
    found: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(stream)), mode="r:") as archive:
        for member in archive:
            if member.name in wanted and member.isreg():
                extracted = archive.extractfile(member)
                if extracted is not None:
                    found[member.name] = extracted.read().decode(errors="replace")
    return found


def _own_layer(spec: EnvironmentSpec, layers: Sequence[PackageLayer]) -> BuiltLayer:
    installed = "".join(layer.db_fragment for layer in layers).encode()
    passwd = next((x.passwd for x in reversed(layers) if x.passwd), "")
    group = next((x.group for x in reversed(layers) if x.group), "")
    entries = [
        *skeleton_entries(passwd.encode(), group.encode()),
        Entry(path="etc/apk", kind="dir", mode=0o755),
        Entry(path="etc/apk/keys", kind="dir", mode=0o755),
        Entry(
            path="etc/apk/world", kind="file", data="".join(f"{w}\n" for w in spec.world).encode()
        ),
        Entry(
            path="etc/apk/repositories",
            kind="file",
            data="".join(f"{r}\n" for r in spec.repositories).encode(),
        ),
        Entry(path="lib", kind="dir", mode=0o755),
        Entry(path="lib/apk", kind="dir", mode=0o755),
        Entry(path="lib/apk/db", kind="dir", mode=0o755),
        Entry(path="lib/apk/db/installed", kind="file", data=installed),
        *(
            Entry(path=f"etc/apk/keys/{name}", kind="file", data=pem)
            for name, pem in sorted(spec.keys.items())
        ),
    ]
    return make_layer(entries)
