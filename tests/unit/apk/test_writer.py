"""write_apk, checked with read_apk and with tarfile, gzip, tar(1), gzip(1) and openssl(1)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest

from melange2.apk import (
    ApkFormatError,
    ApkIntegrityError,
    ApkSignatureError,
    EntryKind,
    IndexRecord,
    Owner,
    PackageInfo,
    Scriptlet,
    read_apk,
    split_streams,
)

from .conftest import SOURCE_DATE_EPOCH, Build, Keys, make_tree

CHECKSUM = "APK-TOOLS.checksum.SHA1"


def lstat_size(root: Path) -> int:
    """melange's installed size: every path's lstat size, the root included."""
    return root.lstat().st_size + sum(p.lstat().st_size for p in root.rglob("*"))


def tar_entries(stream: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(stream)), mode="r:") as archive:
        return archive.getmembers()


def test_three_gzip_streams_with_tar_segments(tree: Path, build: Build, keys: Keys) -> None:
    apk, result = build(tree)
    signature, control, data = split_streams(apk)
    assert signature + control + data == apk

    # every stream is a complete gzip member on its own, with a fixed header
    for stream in (signature, control, data):
        assert stream[:4] == b"\x1f\x8b\x08\x00" and stream[4:8] == b"\0\0\0\0"
        assert zlib.decompressobj(31).decompress(stream)  # one member, no leftovers needed

    sig_tar, control_tar, data_tar = (gzip.decompress(s) for s in (signature, control, data))
    # tar segments: no end-of-archive blocks in signature and control, two in data
    assert len(sig_tar) == 512 + 512  # header + 128-byte signature padded
    assert not sig_tar.endswith(b"\0" * 1024)
    assert control_tar[-512:].strip(b"\0")  # ends in .PKGINFO's data block, not zeros
    assert data_tar.endswith(b"\0" * 1024)

    (sig_entry,) = tar_entries(signature)
    assert sig_entry.name == ".SIGN.RSA256.test.rsa.pub" == result.signature_name
    assert (sig_entry.uid, sig_entry.gid, sig_entry.uname, sig_entry.mode) == (0, 0, "root", 0o644)
    assert [e.name for e in tar_entries(control)] == [".PKGINFO"]

    # ustar magic on every header (apk-tools refuses headers without it)
    assert sig_tar[257:262] == b"ustar" and control_tar[257:262] == b"ustar"

    # .PKGINFO's datahash is the sha256 of the data stream; size is melange's: the lstat
    # sizes of every path, directories and the root included
    assert result.info.datahash == hashlib.sha256(data).hexdigest()
    assert result.info.installed_size == lstat_size(tree)
    assert result.checksum == hashlib.sha1(control).digest()
    assert result.size == len(apk)
    assert result.sha256 == hashlib.sha256(apk).hexdigest()


def test_whole_file_is_one_tar_for_python(tree: Path, build: Build) -> None:
    apk, _ = build(tree)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(apk)), mode="r:") as archive:
        names = archive.getnames()
    assert names == [
        ".SIGN.RSA256.test.rsa.pub",
        ".PKGINFO",
        "etc",
        "etc/hello.conf",
        "usr",
        "usr/bin",
        "usr/bin/hello",
        "usr/bin/hi",
        "usr/share",
        "usr/share/hello",
        "usr/share/hello/greeting.txt",
        "usr/share/hello/link",
    ]


def test_pax_checksums(tree: Path, build: Build) -> None:
    apk, _ = build(tree)
    entries = {e.name: e for e in tar_entries(split_streams(apk)[2])}
    greeting = (tree / "usr/share/hello/greeting.txt").read_bytes()
    assert entries["usr/share/hello/greeting.txt"].pax_headers[CHECKSUM] == (
        hashlib.sha1(greeting).hexdigest()
    )
    assert entries["etc/hello.conf"].pax_headers[CHECKSUM] == hashlib.sha1(b"").hexdigest()
    # symlinks: sha1 of the target, as abuild-tar --hash does
    assert entries["usr/bin/hi"].pax_headers[CHECKSUM] == hashlib.sha1(b"hello").hexdigest()
    assert CHECKSUM not in entries["usr/bin"].pax_headers


def test_round_trip(tree: Path, build: Build, keys: Keys, info: PackageInfo) -> None:
    apk, result = build(tree)
    package = read_apk(io.BytesIO(apk))
    assert package.info == result.info
    assert result.info.evolve(installed_size=0, datahash="", build_date=0) == info
    assert result.info.build_date == SOURCE_DATE_EPOCH
    assert package.verify(keys.trusted).key_name == "test.rsa.pub"
    assert package.checksum == result.checksum
    assert package.size == len(apk)
    by_path = {e.path: e for e in package.entries}
    hello = by_path["usr/bin/hello"]
    assert (hello.kind, hello.mode, hello.size) == (EntryKind.FILE, 0o755, 21)
    assert hello.checksum == hashlib.sha1(b"#!/bin/sh\necho hello\n").hexdigest()
    assert by_path["etc/hello.conf"].mode == 0o600
    assert by_path["usr/bin/hi"].kind is EntryKind.SYMLINK
    assert by_path["usr/bin/hi"].linkname == "hello"
    assert by_path["usr/share/hello/link"].linkname == "/usr/share/hello/greeting.txt"
    assert by_path["usr"].kind is EntryKind.DIRECTORY
    assert {(e.uid, e.gid, e.uname, e.gname) for e in package.entries} == {(0, 0, "root", "root")}
    assert result.index_record() == IndexRecord.from_apk(io.BytesIO(apk))


def test_read_from_path(tree: Path, build: Build, tmp_path: Path) -> None:
    apk, result = build(tree)
    path = tmp_path / result.info.filename
    path.write_bytes(apk)
    assert path.name == "hello-2.12-r3.apk"
    assert read_apk(path).info == result.info


def test_deterministic(tree: Path, build: Build, tmp_path: Path) -> None:
    first, _ = build(tree)
    second, _ = build(tree)
    assert first == second
    # a copy made later (other mtimes, all set to SOURCE_DATE_EPOCH) packs identically
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy, symlinks=True)
    os.utime(copy / "usr/bin/hello", (SOURCE_DATE_EPOCH + 10**6, SOURCE_DATE_EPOCH + 10**6))
    os.utime(copy / "etc/hello.conf", (1, 1))
    third, _ = build(copy)
    assert third == first


def test_every_mtime_is_source_date_epoch(tree: Path, build: Build) -> None:
    # melange's tar writer sets every entry's mtime to SOURCE_DATE_EPOCH
    old = SOURCE_DATE_EPOCH - 86400
    os.utime(tree / "etc/hello.conf", (old, old))
    apk, _ = build(tree)
    assert {e.mtime for e in read_apk(io.BytesIO(apk)).entries} == {SOURCE_DATE_EPOCH}


def test_signature_checks_out_with_openssl(
    tree: Path, build: Build, keys: Keys, tmp_path: Path
) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is part of every Debian install this project targets"
    apk, _ = build(tree)
    signature, control, _ = split_streams(apk)
    (sig_entry,) = tar_entries(signature)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(signature)), mode="r:") as archive:
        extracted = archive.extractfile(sig_entry)
        assert extracted is not None
        (tmp_path / "sig").write_bytes(extracted.read())
    (tmp_path / "control.tar.gz").write_bytes(control)
    run = subprocess.run(
        [
            openssl, "dgst", "-sha256", "-verify", str(keys.pair.public_key),
            "-signature", str(tmp_path / "sig"), str(tmp_path / "control.tar.gz"),
        ],
        capture_output=True,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert b"Verified OK" in run.stdout


def test_gnu_tar_and_gzip_decode_the_concatenation(
    tree: Path, build: Build, tmp_path: Path
) -> None:
    assert shutil.which("tar") and shutil.which("gzip"), "tar and gzip are needed"
    apk, _ = build(tree)
    path = tmp_path / "hello.apk"
    path.write_bytes(apk)
    assert subprocess.run(["gzip", "-t", str(path)], check=False).returncode == 0
    listing = subprocess.run(
        ["tar", "-tzvf", str(path)], capture_output=True, text=True, check=True
    )
    lines = listing.stdout.splitlines()
    assert lines[0].split()[-1] == ".SIGN.RSA256.test.rsa.pub"
    assert lines[1].split()[-1] == ".PKGINFO"
    assert any(line.endswith("usr/bin/hi -> hello") for line in lines)
    assert any(
        line.startswith("-rwxr-xr-x root/root") and "usr/bin/hello" in line for line in lines
    )
    # and GNU tar extracts the tree as it was
    out = tmp_path / "extracted"
    out.mkdir()
    subprocess.run(["tar", "-xzf", str(path), "-C", str(out)], capture_output=True, check=True)
    assert (out / "usr/share/hello/greeting.txt").read_bytes() == (
        tree / "usr/share/hello/greeting.txt"
    ).read_bytes()
    assert os.readlink(out / "usr/bin/hi") == "hello"


def test_wrong_key_fails(tree: Path, build: Build, keys: Keys) -> None:
    apk, _ = build(tree)
    package = read_apk(io.BytesIO(apk))
    with pytest.raises(ApkSignatureError, match="does not verify"):
        package.verify(keys.impostor)
    with pytest.raises(ApkSignatureError, match="untrusted"):
        package.verify({})


def test_tampered_control_fails(tree: Path, build: Build, keys: Keys, info: PackageInfo) -> None:
    apk, result = build(tree)
    signature, control, data = split_streams(apk)
    # a different control stream (e.g. a changed dependency) under the old signature
    evil = result.info.evolve(depends=("evil",)).render()
    header = tarfile.TarInfo(".PKGINFO")
    header.size = len(evil)
    forged_tar = header.tobuf(tarfile.USTAR_FORMAT) + evil + b"\0" * (-len(evil) % 512)
    forged = gzip.compress(forged_tar, mtime=0)
    assert forged != control
    package = read_apk(io.BytesIO(signature + forged + data))
    assert package.info.depends == ("evil",)
    with pytest.raises(ApkSignatureError):
        package.verify(keys.trusted)


def test_tampered_data_fails(tree: Path, build: Build, keys: Keys) -> None:
    apk, _ = build(tree)
    signature, control, data = split_streams(apk)
    plain = gzip.decompress(data)
    marker = b"Hello, world!"
    tampered = gzip.compress(plain.replace(marker, b"Hellx, world!", 1), mtime=0)
    with pytest.raises(ApkIntegrityError, match=r"greeting\.txt"):
        read_apk(io.BytesIO(signature + control + tampered))
    package = read_apk(io.BytesIO(signature + control + tampered), verify_checksums=False)
    with pytest.raises(ApkIntegrityError, match="datahash"):
        package.verify(keys.trusted)


def test_truncated_and_trailing_garbage(tree: Path, build: Build) -> None:
    apk, _ = build(tree)
    with pytest.raises(ApkFormatError):
        read_apk(io.BytesIO(apk[:-10]))
    with pytest.raises(ApkFormatError):
        read_apk(io.BytesIO(apk + b"junk"))
    with pytest.raises(ApkFormatError):
        read_apk(io.BytesIO(b"not a package"))
    with pytest.raises(ApkFormatError):
        read_apk(io.BytesIO(b""))


def test_unsigned(tree: Path, build: Build, keys: Keys) -> None:
    apk, result = build(tree, signer=None)
    assert result.signature_name is None
    assert len(split_streams(apk)) == 2
    package = read_apk(io.BytesIO(apk))
    assert package.signatures == ()
    assert package.info == result.info
    with pytest.raises(ApkSignatureError, match="not signed"):
        package.verify(keys.trusted)


def test_rsa256(tree: Path, build: Build, keys: Keys) -> None:
    from melange2.apk import SignatureAlgorithm, Signer

    signer = Signer.from_files(keys.pair.private_key, algorithm=SignatureAlgorithm.RSA256)
    apk, result = build(tree, signer=signer)
    assert result.signature_name == ".SIGN.RSA256.test.rsa.pub"
    assert read_apk(io.BytesIO(apk)).verify(keys.trusted).algorithm is SignatureAlgorithm.RSA256


def test_owners(tree: Path, build: Build) -> None:
    apk, _ = build(
        tree,
        owners={"etc/hello.conf": Owner(uid=100, gid=101), "usr/bin": Owner(uid=0, gid=50)},
    )
    by_path = {e.path: e for e in read_apk(io.BytesIO(apk)).entries}
    conf = by_path["etc/hello.conf"]
    # apk-tools resolves owners by name first: only root gets a name
    assert (conf.uid, conf.gid, conf.uname, conf.gname) == (100, 101, "", "")
    usr_bin = by_path["usr/bin"]
    assert (usr_bin.uid, usr_bin.gid, usr_bin.uname, usr_bin.gname) == (0, 50, "root", "")
    assert (by_path["usr"].uid, by_path["usr"].gid) == (0, 0)


def test_preserve_owners(tree: Path, build: Build) -> None:
    assert os.geteuid() == 0, "the suite runs as root (BuildKit's OCI worker needs it)"
    os.chown(tree / "usr/share/hello/greeting.txt", 1234, 5678)
    os.lchown(tree / "usr/bin/hi", 42, 43)
    apk, _ = build(tree, preserve_owners=True)
    by_path = {e.path: e for e in read_apk(io.BytesIO(apk)).entries}
    assert (
        by_path["usr/share/hello/greeting.txt"].uid,
        by_path["usr/share/hello/greeting.txt"].gid,
    ) == (
        1234,
        5678,
    )
    assert (by_path["usr/bin/hi"].uid, by_path["usr/bin/hi"].gid) == (42, 43)
    default, _ = build(tree)
    assert {(e.uid, e.gid) for e in read_apk(io.BytesIO(default)).entries} == {(0, 0)}


def test_special_modes_are_kept(tree: Path, build: Build) -> None:
    (tree / "usr/bin/hello").chmod(0o4755)
    (tree / "usr/share").chmod(0o1775)
    apk, _ = build(tree)
    by_path = {e.path: e for e in read_apk(io.BytesIO(apk)).entries}
    assert by_path["usr/bin/hello"].mode == 0o4755
    assert by_path["usr/share"].mode == 0o1775


def test_hardlinks(tree: Path, build: Build) -> None:
    os.link(tree / "usr/bin/hello", tree / "usr/bin/hello2")
    # by default each path is a whole file, as melange writes them
    whole, _ = build(tree)
    copies = {e.path: e for e in read_apk(io.BytesIO(whole)).entries}
    assert copies["usr/bin/hello2"].kind is EntryKind.FILE and copies["usr/bin/hello2"].size == 21
    apk, result = build(tree, keep_hardlinks=True)
    by_path = {e.path: e for e in read_apk(io.BytesIO(apk)).entries}
    assert by_path["usr/bin/hello"].kind is EntryKind.FILE
    link = by_path["usr/bin/hello2"]
    assert (link.kind, link.linkname, link.size) == (EntryKind.HARDLINK, "usr/bin/hello", 0)
    # counted at each path, as melange does
    assert result.info.installed_size == lstat_size(tree)


def test_scriptlets(tree: Path, build: Build, info: PackageInfo) -> None:
    scripts = {
        Scriptlet.POST_INSTALL: b"#!/bin/sh\necho installed\n",
        Scriptlet.TRIGGER: b"#!/bin/sh\nfc-cache\n",
        Scriptlet.PRE_DEINSTALL: b"#!/bin/sh\n",
    }
    package_info = info.evolve(triggers=("/usr/share/fonts/*",))
    apk, _ = build(tree, package=package_info, scripts=scripts)
    control = split_streams(apk)[1]
    members = tar_entries(control)
    # .PKGINFO first, then by name, as melange's control tar
    assert [(m.name, m.mode) for m in members] == [
        (".PKGINFO", 0o644),
        (".post-install", 0o755),
        (".pre-deinstall", 0o755),
        (".trigger", 0o755),
    ]
    package = read_apk(io.BytesIO(apk))
    assert package.scripts == {k.value: v for k, v in scripts.items()}
    assert package.info.triggers == ("/usr/share/fonts/*",)
    with pytest.raises(ApkFormatError, match="trigger"):
        build(tree, scripts={Scriptlet.TRIGGER: b"x"})


def test_empty_tree_and_size(tmp_path: Path, build: Build) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    apk, result = build(empty)
    # the root directory counts, as in melange: never 0 (apk-tools 2 treats 0 as virtual)
    assert result.info.installed_size == empty.lstat().st_size > 0
    assert read_apk(io.BytesIO(apk)).entries == ()


def test_control_files_and_owner_names(tree: Path, build: Build) -> None:
    os.chown(tree / "usr/share/hello/greeting.txt", 1234, 5678)
    apk, _ = build(
        tree,
        control_files={".melange.yaml": b"package: {}\n"},
        user_names={},
        group_names={5678: "staff"},
        preserve_owners=True,
        uid_map={1234: 0},
    )
    assert [m.name for m in tar_entries(split_streams(apk)[1])] == [".PKGINFO", ".melange.yaml"]
    by_path = {e.path: e for e in read_apk(io.BytesIO(apk)).entries}
    greeting = by_path["usr/share/hello/greeting.txt"]
    assert (greeting.uid, greeting.gid, greeting.uname, greeting.gname) == (0, 5678, "", "staff")
    with pytest.raises(ApkFormatError, match="control file"):
        build(tree, control_files={"x/.y": b""})


def test_large_file_is_streamed(tmp_path: Path, build: Build, keys: Keys) -> None:
    root = tmp_path / "big"
    (root / "data").mkdir(parents=True)
    payload = os.urandom(1 << 20) * 3 + b"tail"  # spans several read chunks
    (root / "data/blob").write_bytes(payload)
    apk, result = build(root, compresslevel=1)
    package = read_apk(io.BytesIO(apk))
    package.verify(keys.trusted)
    (blob,) = [e for e in package.entries if e.path == "data/blob"]
    assert blob.size == len(payload)
    assert blob.checksum == hashlib.sha1(payload).hexdigest()
    assert result.info.installed_size == lstat_size(root)


def test_unsupported_file_type(tree: Path, build: Build) -> None:
    os.mkfifo(tree / "etc/fifo")
    with pytest.raises(ApkFormatError, match="unsupported file type"):
        build(tree)


def test_bad_arguments(tmp_path: Path, build: Build) -> None:
    with pytest.raises(ApkFormatError, match="not a directory"):
        build(tmp_path / "missing")
    with pytest.raises(ApkFormatError):
        build(make_tree(tmp_path / "t"), source_date_epoch=-1)


def test_long_and_unicode_names(tmp_path: Path, build: Build) -> None:
    root = tmp_path / "root"
    deep = root / ("d" * 90) / ("e" * 90)
    deep.mkdir(parents=True)
    (deep / "ünïcødé-file.txt").write_bytes(b"x")
    os.symlink("t" * 150, deep / "long-link")
    apk, _ = build(root)
    paths = {e.path: e for e in read_apk(io.BytesIO(apk)).entries}
    name = f"{'d' * 90}/{'e' * 90}/ünïcødé-file.txt"
    assert paths[name].checksum == hashlib.sha1(b"x").hexdigest()
    assert paths[f"{'d' * 90}/{'e' * 90}/long-link"].linkname == "t" * 150


def test_the_data_stream_hashed_without_inflating_or_inflated_once(
    tree: Path, build: Build
) -> None:
    apk, _ = build(tree)
    whole = read_apk(io.BytesIO(apk))
    _, _, data = split_streams(apk)
    head = read_apk(io.BytesIO(apk), inflate_data=False)
    assert head.entries == () and head.size == len(apk) == whole.size
    assert head.data_sha256 == whole.data_sha256 == hashlib.sha256(data).hexdigest()
    assert head.info == whole.info and head.checksum == whole.checksum
    # junk after the data stream is hashed with it: the datahash no longer matches
    junk = read_apk(io.BytesIO(apk + b"junk"), inflate_data=False)
    assert junk.data_sha256 != junk.info.datahash
    # the layer's two views in one pass: compressed as in the file, and its tar
    raw, plain = bytearray(), bytearray()
    again = read_apk(
        io.BytesIO(apk), verify_checksums=False, on_data_raw=raw.extend, on_data_plain=plain.extend
    )
    assert bytes(raw) == data and bytes(plain) == gzip.decompress(data)
    assert again.entries == whole.entries
