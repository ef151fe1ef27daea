"""OCI image pieces: references parse strictly, layers are deterministic tars."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest

from melange2.errors import ConfigError
from melange2.oci.image import (
    INDEX_MEDIA_TYPE,
    Entry,
    ImageRef,
    make_config,
    make_index,
    make_layer,
    make_manifest,
)
from melange2.platform import Platform

DIGEST = "sha256:" + "b" * 64


def test_image_ref_parse_and_render() -> None:
    ref = ImageRef.parse(f"127.0.0.1:5000/melange2/base:busybox@{DIGEST}")
    assert (ref.host, ref.repo, ref.tag, ref.digest) == (
        "127.0.0.1:5000",
        "melange2/base",
        "busybox",
        DIGEST,
    )
    assert ref.reference == DIGEST
    assert str(ref) == f"127.0.0.1:5000/melange2/base:busybox@{DIGEST}"
    assert ImageRef.parse("localhost:5000/x").reference == "latest"


@pytest.mark.parametrize("bad", ["", "noslash", "host/UPPER", "host/repo:", "host/repo@sha256:12"])
def test_image_ref_rejects_garbage(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid image reference"):
        ImageRef.parse(bad)


def test_layer_is_deterministic_and_sorted() -> None:
    entries = [
        Entry(path="b/file", kind="file", mode=0o600, data=b"x"),
        Entry(path="b", kind="dir", mode=0o755),
        Entry(path="a", kind="symlink", target="/b/file"),
    ]
    one, two = make_layer(entries), make_layer(list(reversed(entries)))
    assert one == two
    raw = gzip.decompress(one.blob.data)
    assert one.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["a", "b", "b/file"]
    assert members[0].issym() and members[0].linkname == "/b/file"
    assert members[2].mode == 0o600 and members[2].uid == 0 and members[2].mtime == 0


def test_index_lists_each_platform() -> None:
    layer = make_layer([Entry(path="f", kind="file", data=b"1")])
    manifests = []
    for arch in ("x86_64", "aarch64"):
        platform = Platform.from_arch(arch)
        config = make_config(platform, [layer], env=["PATH=/bin"], cmd=["/bin/sh"])
        assert json.loads(config.data)["rootfs"]["diff_ids"] == [layer.diff_id]
        manifests.append((platform, make_manifest(config, [layer])))
    index = make_index(manifests)
    doc = json.loads(index.data)
    assert index.media_type == INDEX_MEDIA_TYPE
    assert [m["platform"]["architecture"] for m in doc["manifests"]] == ["amd64", "arm64"]
    assert doc["manifests"][0]["digest"] == manifests[0][1].digest
