"""OCI image pieces: references, blobs, deterministic layers, configs, manifests."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import stat
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from melange2.errors import ConfigError
from melange2.platform import Platform

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

_REF = re.compile(
    r"^(?P<host>[a-zA-Z0-9.-]+(?::[0-9]+)?)/(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


@dataclass(frozen=True, kw_only=True)
class ImageRef:
    """``host[:port]/repo[:tag][@sha256:...]``."""

    host: str
    repo: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        m = _REF.match(text)
        if m is None:
            raise ConfigError(
                f"invalid image reference {text!r}: expected host/repo[:tag][@digest]"
            )
        return cls(host=m["host"], repo=m["repo"], tag=m["tag"], digest=m["digest"])

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest if known, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> ImageRef:
        return ImageRef(host=self.host, repo=self.repo, tag=self.tag, digest=digest)

    def __str__(self) -> str:
        text = f"{self.host}/{self.repo}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True, kw_only=True)
class Blob:
    """Content with its media type and digest."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
            **extra,
        }


@dataclass(frozen=True, kw_only=True)
class Layer:
    """A gzipped tar layer as a manifest names it, and the digest of its uncompressed
    tar (the diff id) as a config names it. Its bytes may live elsewhere."""

    digest: str
    size: int
    diff_id: str

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": LAYER_MEDIA_TYPE, "digest": self.digest, "size": self.size}


@dataclass(frozen=True, kw_only=True)
class BuiltLayer(Layer):
    """A layer made here, with its bytes."""

    blob: Blob


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One file, directory or symlink of a layer."""

    path: str
    kind: str  # "file" | "dir" | "symlink"
    mode: int = 0o644
    data: bytes = b""
    target: str = ""


def make_layer(entries: Iterable[Entry], *, mtime: int = 0) -> BuiltLayer:
    """A deterministic layer: entries sorted by path, owned by root, fixed times."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(e.path.lstrip("/"))
            info.mtime = mtime
            info.mode = e.mode
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = e.target
                tar.addfile(info)
            else:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
    tar_bytes = raw.getvalue()
    compressed = gzip.compress(tar_bytes, mtime=0)
    blob = Blob(media_type=LAYER_MEDIA_TYPE, data=compressed)
    return BuiltLayer(
        digest=blob.digest,
        size=len(compressed),
        diff_id="sha256:" + hashlib.sha256(tar_bytes).hexdigest(),
        blob=blob,
    )


def entries_from_directory(root: Path, *, prefix: str = "") -> list[Entry]:
    """Every file, directory and symlink under ``root`` as layer entries under ``prefix``,
    modes kept, owners and times dropped (the layer is then deterministic)."""
    entries: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in [*dirnames, *sorted(filenames)]:
            path = base / name
            rel = f"{prefix.strip('/')}/{path.relative_to(root)}".lstrip("/")
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                entries.append(
                    Entry(path=rel, kind="symlink", mode=0o777, target=os.readlink(path))
                )
            elif stat.S_ISDIR(st.st_mode):
                entries.append(Entry(path=rel, kind="dir", mode=mode))
            elif stat.S_ISREG(st.st_mode):
                entries.append(Entry(path=rel, kind="file", mode=mode, data=path.read_bytes()))
    return entries


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def make_config(
    platform: Platform, layers: Sequence[Layer], *, env: Sequence[str], cmd: Sequence[str]
) -> Blob:
    config: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {"Env": list(env), "Cmd": list(cmd), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "created": "1970-01-01T00:00:00Z",
    }
    if platform.variant:
        config["variant"] = platform.variant
    return Blob(media_type=CONFIG_MEDIA_TYPE, data=_json(config))


def make_manifest(config: Blob, layers: Sequence[Layer]) -> Blob:
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    return Blob(media_type=MANIFEST_MEDIA_TYPE, data=_json(manifest))


def make_index(manifests: Sequence[tuple[Platform, Blob]]) -> Blob:
    entries = []
    for platform, manifest in manifests:
        plat = {"architecture": platform.architecture, "os": platform.os}
        if platform.variant:
            plat["variant"] = platform.variant
        entries.append(manifest.descriptor(platform=plat))
    index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": entries}
    return Blob(media_type=INDEX_MEDIA_TYPE, data=_json(index))
