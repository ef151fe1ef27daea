"""Sources travel through the registry: a source directory becomes a one-layer image
(content-addressed, pushed once) that the build copies into its workspace. No
file-sync session is needed, which is also how remote daemons get them."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from melange2.oci.image import ImageRef, entries_from_directory, make_config, make_layer
from melange2.oci.image import make_manifest as _make_manifest
from melange2.oci.registry import RegistryClient
from melange2.platform import Platform

SOURCES_REPO = "melange2/sources"


async def push_sources(directory: Path, platform: Platform, registry: RegistryClient) -> ImageRef:
    """Push ``directory`` as an image whose root holds its files; return it by digest."""
    layer = await asyncio.to_thread(lambda: make_layer(entries_from_directory(directory)))
    config = make_config(platform, [layer], env=[], cmd=[])
    manifest = _make_manifest(config, [layer])
    key = hashlib.sha256(manifest.data).hexdigest()
    tag = f"src-{key[:48]}"
    await registry.push_blob(SOURCES_REPO, layer.blob)
    await registry.push_blob(SOURCES_REPO, config)
    digest = await registry.push_manifest(SOURCES_REPO, tag, manifest)
    return ImageRef(host=registry.host, repo=SOURCES_REPO, tag=tag, digest=digest)
