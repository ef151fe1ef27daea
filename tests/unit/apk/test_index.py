from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import shutil
import string
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from melange2.apk import (
    ApkFormatError,
    ApkSignatureError,
    IndexRecord,
    build_index,
    parse_index,
    read_index_tar_gz,
    split_streams,
    write_index_tar_gz,
)

from .conftest import Build, Keys

DIGEST = hashlib.sha1(b"control").digest()


def record(**changes: object) -> IndexRecord:
    base = IndexRecord(
        checksum=DIGEST,
        name="hello",
        version="2.12-r0",
        arch="x86_64",
        size=12345,
        installed_size=65536,
        description="the GNU hello world program",
        url="https://www.gnu.org/software/hello/",
        license="GPL-3.0-or-later",
        origin="hello",
        maintainer="Jane <jane@example.org>",
        build_time=1700000000,
        commit="abc123",
        provider_priority=100,
        depends=("so:libc.musl-x86_64.so.1", "busybox"),
        provides=("cmd:hello=2.12-r0",),
        install_if=("hello=2.12-r0", "docs"),
    )
    return base.evolve(**changes)


def test_render_in_melange_order() -> None:
    q1 = "Q1" + base64.b64encode(DIGEST).decode()
    assert record().render() == (
        f"C:{q1}\n"
        "P:hello\n"
        "V:2.12-r0\n"
        "A:x86_64\n"
        "S:12345\n"
        "I:65536\n"
        "T:the GNU hello world program\n"
        "U:https://www.gnu.org/software/hello/\n"
        "L:GPL-3.0-or-later\n"
        "o:hello\n"
        "m:Jane <jane@example.org>\n"
        "t:1700000000\n"
        "c:abc123\n"
        "D:so:libc.musl-x86_64.so.1 busybox\n"
        "i:hello=2.12-r0 docs\n"
        "p:cmd:hello=2.12-r0\n"
        "k:100\n"
    )
    # empty fields are left out, except T: and t: (apko writes t:0 for a build date of 0)
    bare = record(url="", license="", origin="", maintainer="", commit="", build_time=0)
    text = bare.render()
    assert "U:" not in text and "L:" not in text and "T:" in text and "t:0\n" in text
    assert record().filename == "hello-2.12-r0.apk"


def test_build_index_sorts_and_separates_records() -> None:
    a = record(name="zlib", version="1.3-r0", depends=(), provides=(), install_if=())
    b = record(name="apk-tools", checksum=hashlib.sha1(b"b").digest())
    text = build_index([a, b])
    assert text.endswith(b"\n\n")
    assert text.count(b"\n\n") == 2
    assert parse_index(text) == (b, a)
    assert build_index([b, a]) == text


def test_parse_real_world_record() -> None:
    text = (
        "C:Q1p78yvTLG7kRBSB+anqyKb+jRPmg=\n"
        "P:musl\n"
        "V:1.2.4-r2\n"
        "A:x86_64\n"
        "S:383152\n"
        "I:622592\n"
        "T:the musl c library (libc) implementation\n"
        "U:https://musl.libc.org/\n"
        "L:MIT\n"
        "o:musl\n"
        "m:Timo Teräs <timo.teras@iki.fi>\n"
        "t:1694447025\n"
        "c:ef3c6a6e7a5c29e7ee1b3b14e02bbe82ea3e6a8c\n"
        "p:so:libc.musl-x86_64.so.1=1\n"
        "F:lib\n"
        "\n"
    )
    (musl,) = parse_index(text)
    assert musl.name == "musl" and musl.version == "1.2.4-r2"
    assert musl.checksum == base64.b64decode("p78yvTLG7kRBSB+anqyKb+jRPmg=")
    assert musl.provides == ("so:libc.musl-x86_64.so.1=1",)
    assert musl.extra == (("F", "lib"),)
    assert musl.depends == ()
    assert musl.render() + "\n" == text


@pytest.mark.parametrize(
    "text",
    [
        "P:x\nV:1\n\n",  # no checksum
        "C:Q1" + base64.b64encode(DIGEST).decode() + "\nV:1\n\n",  # no name
        "C:Q2abcd\nP:x\nV:1\n\n",  # unknown checksum kind
        "C:Q1!!!!\nP:x\nV:1\n\n",
        "C:Q1" + base64.b64encode(DIGEST).decode() + "\nP:x\nV:1\nS:big\n\n",
        "no colon here\n",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ApkFormatError):
        parse_index(text)


words = st.text(
    alphabet=string.ascii_letters + string.digits + "._+-:=<>/@~", min_size=1, max_size=16
)
lines = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\n"), max_size=30
)
# melange's index writer leaves zero sizes, times and priorities out: a round trip reads
# them back as absent, so the property is over values it writes
numbers = st.integers(min_value=1, max_value=2**40)
records = st.builds(
    IndexRecord,
    checksum=st.binary(min_size=20, max_size=20),
    name=words,
    version=words,
    arch=words,
    size=numbers,
    installed_size=numbers,
    description=lines,
    url=lines,
    license=lines,
    origin=lines,
    maintainer=lines,
    build_time=numbers,
    commit=lines,
    provider_priority=st.none() | numbers,
    depends=st.lists(words, max_size=3).map(tuple),
    provides=st.lists(words, max_size=3).map(tuple),
    install_if=st.lists(words, max_size=3).map(tuple),
    extra=st.lists(st.tuples(st.sampled_from("FMRZrqasfjy"), lines), max_size=2).map(tuple),
)


@given(st.lists(records, max_size=5))
def test_index_round_trip(items: list[IndexRecord]) -> None:
    text = build_index(items)
    parsed = parse_index(text)
    assert sorted(parsed, key=repr) == sorted(items, key=repr)
    assert build_index(parsed) == text


@given(st.binary(max_size=300))
def test_parse_index_never_crashes_unexpectedly(data: bytes) -> None:
    with contextlib.suppress(ApkFormatError):
        parse_index(data)


def test_signed_index_tar_gz(keys: Keys, tmp_path: Path) -> None:
    items = [record(), record(name="other", checksum=hashlib.sha1(b"o").digest())]
    out = io.BytesIO()
    written = write_index_tar_gz(items, keys.signer, out, description="main v1")
    blob = out.getvalue()
    assert written == len(blob)

    signature, index_stream = split_streams(blob)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(signature)), mode="r:") as archive:
        assert archive.getnames() == [".SIGN.RSA256.test.rsa.pub"]
    plain = gzip.decompress(index_stream)
    assert plain.endswith(b"\0" * 1024)  # a complete tar archive
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as archive:
        assert archive.getnames() == ["APKINDEX", "DESCRIPTION"]  # as melange writes it
        apkindex = archive.extractfile("APKINDEX")
        assert apkindex is not None
        assert apkindex.read() == build_index(items)
        assert all((m.uid, m.gid, m.mode) == (0, 0, 0o644) for m in archive.getmembers())

    index = read_index_tar_gz(io.BytesIO(blob), keys=keys.trusted)
    assert index.description == "main v1"
    assert index.records == parse_index(build_index(items))
    assert [s.key_name for s in index.signatures] == ["test.rsa.pub"]

    with pytest.raises(ApkSignatureError):
        read_index_tar_gz(io.BytesIO(blob), keys=keys.impostor)
    forged = gzip.compress(plain.replace(b"P:other", b"P:evila"), mtime=0)
    with pytest.raises(ApkSignatureError):
        read_index_tar_gz(io.BytesIO(signature + forged), keys=keys.trusted)
    assert read_index_tar_gz(io.BytesIO(signature + forged)).records[1].name == "evila"

    again = io.BytesIO()
    write_index_tar_gz(list(reversed(items)), keys.signer, again, description="main v1")
    assert again.getvalue() == blob  # deterministic

    path = tmp_path / "APKINDEX.tar.gz"
    path.write_bytes(blob)
    assert read_index_tar_gz(path).records == index.records
    if shutil.which("tar"):
        listing = subprocess.run(
            ["tar", "-tzf", str(path)], capture_output=True, text=True, check=True
        ).stdout.split()
        assert listing == [".SIGN.RSA256.test.rsa.pub", "APKINDEX", "DESCRIPTION"]


def test_unsigned_index(keys: Keys) -> None:
    out = io.BytesIO()
    write_index_tar_gz([record()], None, out)
    assert len(split_streams(out.getvalue())) == 1
    index = read_index_tar_gz(io.BytesIO(out.getvalue()))
    assert (index.description, index.signatures, index.records) == ("", (), (record(),))
    with pytest.raises(ApkSignatureError, match="not signed"):
        read_index_tar_gz(io.BytesIO(out.getvalue()), keys=keys.trusted)


def test_record_from_apk(tree: Path, build: Build, tmp_path: Path) -> None:
    apk, result = build(tree)
    path = tmp_path / result.info.filename
    path.write_bytes(apk)
    from_file = IndexRecord.from_apk(path)
    assert from_file == result.index_record()
    assert from_file.checksum == hashlib.sha1(split_streams(apk)[1]).digest()
    assert from_file.size == len(apk)
    assert from_file.installed_size == result.info.installed_size
    assert from_file.version == "2.12-r3"
    assert from_file.depends == ("so:libc.musl-x86_64.so.1",)
    assert from_file.build_time == result.info.build_date


def test_invalid_records() -> None:
    with pytest.raises(ApkFormatError):
        record(checksum=b"short")
    with pytest.raises(ApkFormatError):
        record(description="two\nlines")
    with pytest.raises(ApkFormatError):
        record(depends=("a b",))
    with pytest.raises(ApkFormatError):
        record(extra=(("P", "dup"),))
