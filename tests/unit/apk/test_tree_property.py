"""Random trees survive write_apk -> read_apk, and pack deterministically."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melange2.apk import EntryKind, PackageInfo, Signer, read_apk, write_apk

from .conftest import SOURCE_DATE_EPOCH, Keys

names = st.text(
    alphabet=st.characters(
        blacklist_categories=["Cs", "Cc"], blacklist_characters="/\\", max_codepoint=0x2FF
    ),
    min_size=1,
    max_size=12,
).filter(lambda n: n not in {".", ".."} and len(n.encode()) <= 60)

files = st.tuples(st.binary(max_size=3000), st.sampled_from([0o644, 0o755, 0o600, 0o4755]))
links = st.text(alphabet="abcdefgh./_-", min_size=1, max_size=40)

# A tree: name -> bytes/mode (file), str (symlink target) or a nested dict (directory).
trees = st.recursive(
    st.dictionaries(names, st.one_of(files, links), max_size=4),
    lambda children: st.dictionaries(names, st.one_of(files, links, children), max_size=4),
    max_leaves=12,
)


def materialise(root: Path, tree: dict[str, object], prefix: str = "") -> dict[str, object]:
    expected: dict[str, object] = {}
    for name, node in tree.items():
        path = root / name
        rel = prefix + name
        if isinstance(node, dict):
            path.mkdir()
            expected[rel] = "dir"
            expected.update(materialise(path, node, rel + "/"))
        elif isinstance(node, str):
            os.symlink(node, path)
            expected[rel] = ("link", node)
        else:
            assert isinstance(node, tuple)
            data, mode = node
            path.write_bytes(data)
            path.chmod(mode)
            expected[rel] = (data, mode)
    return expected


def pack(root: Path, signer: Signer) -> bytes:
    out = io.BytesIO()
    info = PackageInfo(name="random", version="1", arch="noarch")
    write_apk(root, info, signer, out, source_date_epoch=SOURCE_DATE_EPOCH, compresslevel=1)
    return out.getvalue()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees)
def test_random_trees_round_trip(keys: Keys, tree: dict[str, object]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "root"
        root.mkdir()
        expected = materialise(root, tree)
        apk = pack(root, keys.signer)
        assert pack(root, keys.signer) == apk

        package = read_apk(io.BytesIO(apk))
        package.verify(keys.trusted)
        got = {entry.path: entry for entry in package.entries}
        assert set(got) == set(expected)
        # parents always come before their children
        order = [entry.path for entry in package.entries]
        for index, path in enumerate(order):
            parent = path.rpartition("/")[0]
            assert not parent or order.index(parent) < index
        size = 0
        for path, want in expected.items():
            entry = got[path]
            if want == "dir":
                assert entry.kind is EntryKind.DIRECTORY
            elif isinstance(want, tuple) and want[0] == "link":
                assert entry.kind is EntryKind.SYMLINK
                assert entry.linkname == want[1]
                assert entry.checksum == hashlib.sha1(want[1].encode()).hexdigest()
            else:
                assert isinstance(want, tuple)
                data, mode = want
                assert isinstance(data, bytes)
                assert entry.kind is EntryKind.FILE
                assert (entry.mode, entry.size) == (mode, len(data))
                assert entry.checksum == hashlib.sha1(data).hexdigest()
                size += len(data)
        # melange's installed size: every path's lstat size, the root included
        on_disk = root.lstat().st_size + sum(p.lstat().st_size for p in root.rglob("*"))
        assert size <= package.info.installed_size == on_disk

        # Python's own gzip and tarfile read the concatenation as one archive
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(apk)), mode="r:") as archive:
            names = archive.getnames()
        assert names[:2] == [".SIGN.RSA256.test.rsa.pub", ".PKGINFO"]
        assert names[2:] == order
