from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from melange2.apk import (
    ApkResult,
    KeyPair,
    PackageInfo,
    PublicKeys,
    Signer,
    generate_key,
    load_public_keys,
    write_apk,
)

SOURCE_DATE_EPOCH = 1_700_000_000
TEST_KEY_SIZE = 1024


@dataclass(frozen=True, kw_only=True)
class Keys:
    pair: KeyPair
    signer: Signer
    trusted: PublicKeys
    #: a different key filed under the same name
    impostor: PublicKeys


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    root = tmp_path_factory.mktemp("keys")
    pair = generate_key(root / "test.rsa", key_size=TEST_KEY_SIZE)
    other_dir = root / "other"
    other_dir.mkdir()
    other = generate_key(other_dir / "test.rsa", key_size=TEST_KEY_SIZE)
    return Keys(
        pair=pair,
        signer=Signer.from_files(pair.private_key),
        trusted=load_public_keys([pair.public_key]),
        impostor=load_public_keys([other.public_key]),
    )


@pytest.fixture
def info() -> PackageInfo:
    return PackageInfo(
        name="hello",
        version="2.12",
        epoch=3,
        arch="x86_64",
        description="the GNU hello world program",
        url="https://www.gnu.org/software/hello/",
        license="GPL-3.0-or-later",
        origin="hello",
        commit="0123456789abcdef",
        depends=("so:libc.musl-x86_64.so.1",),
        provides=("cmd:hello=2.12-r3",),
    )


def make_tree(root: Path) -> Path:
    """A small tree: nested dirs, an executable, a data file, an empty file, symlinks."""
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/share/hello").mkdir(parents=True)
    (root / "etc").mkdir()
    hello = root / "usr/bin/hello"
    hello.write_bytes(b"#!/bin/sh\necho hello\n")
    hello.chmod(0o755)
    (root / "usr/share/hello/greeting.txt").write_bytes(b"Hello, world!\n" * 100)
    (root / "etc/hello.conf").write_bytes(b"")
    (root / "etc/hello.conf").chmod(0o600)
    os.symlink("hello", root / "usr/bin/hi")
    os.symlink("/usr/share/hello/greeting.txt", root / "usr/share/hello/link")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree")


Build = Callable[..., tuple[bytes, ApkResult]]


@pytest.fixture
def build(keys: Keys, info: PackageInfo) -> Build:
    """Package a tree in memory: ``build(tree, **overrides) -> (apk bytes, result)``."""

    def run(
        root: Path,
        *,
        package: PackageInfo | None = None,
        signer: Signer | bool | None = True,
        **kwargs: object,
    ) -> tuple[bytes, ApkResult]:
        out = io.BytesIO()
        chosen = keys.signer if signer is True else (signer or None)
        kwargs.setdefault("source_date_epoch", SOURCE_DATE_EPOCH)
        result = write_apk(root, package or info, chosen, out, **kwargs)  # type: ignore[arg-type]
        return out.getvalue(), result

    return run
