"""Concurrent builds needing the same environment, or environments sharing a package's
layer, compose and push each image and each layer once (two pushes of one blob at once
made the registry refuse a manifest in the wolfi replay)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from melange2.apk.index import IndexRecord
from melange2.apk.pkginfo import PackageInfo
from melange2.apk.writer import write_apk
from melange2.build.environment import EnvironmentComposer, EnvironmentSpec, EnvPackage, LayerCache
from melange2.errors import ManifestNotFound
from melange2.oci.image import Blob
from melange2.platform import Platform
from melange2.repo.resolve import installed_db_entry

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeRegistry:
    """A named fake: records pushes; blobs appear only when their (slow) push ends."""

    host = "registry.test"

    def __init__(self) -> None:
        self.blobs: set[str] = set()
        self.pushes: Counter[str] = Counter()
        self.manifests: Counter[str] = Counter()

    async def has_blob(self, repo: str, digest: str) -> bool:
        return digest in self.blobs

    async def push_blob(self, repo: str, blob: Blob) -> str:
        self.pushes[blob.digest] += 1
        await asyncio.sleep(0.01)
        self.blobs.add(blob.digest)
        return blob.digest

    async def get_manifest(self, repo: str, reference: str) -> Any:
        raise ManifestNotFound(reference)

    async def push_manifest(self, repo: str, reference: str, manifest: Blob) -> str:
        self.manifests[reference] += 1
        return manifest.digest


def _package(root: Path, name: str) -> EnvPackage:
    tree = root / name
    (tree / "usr" / "share" / name).mkdir(parents=True)
    (tree / "usr" / "share" / name / "f").write_text(name)
    info = PackageInfo(name=name, version="1.0", epoch=0, arch="x86_64")
    apk = root / info.filename
    with apk.open("wb") as out:
        write_apk(tree, info, None, out, source_date_epoch=0)
    return EnvPackage(record=IndexRecord.from_apk(apk), apk=apk)


def _spec(packages: list[EnvPackage]) -> EnvironmentSpec:
    return EnvironmentSpec(
        platform=Platform.from_arch("x86_64"),
        packages=packages,
        world=[p.record.name for p in packages],
        repositories=(),
        keys={},
    )


async def test_same_environment_at_once_is_composed_once(tmp_path: Path) -> None:
    registry = FakeRegistry()
    composer = EnvironmentComposer(
        registry,  # type: ignore[arg-type]
        LayerCache(tmp_path / "layers"),
        installed_db_entry,
    )
    base, lib, app = (_package(tmp_path, n) for n in ("base", "lib", "app"))
    refs = await asyncio.gather(
        *(composer.compose(_spec([base, lib])) for _ in range(5)),
        composer.compose(_spec([base, app])),
    )
    assert len({str(r) for r in refs[:5]}) == 1 and str(refs[5]) != str(refs[0])
    assert sorted(registry.manifests.values()) == [1, 1]  # one per environment
    assert max(registry.pushes.values()) == 1  # the shared base layer pushed once
