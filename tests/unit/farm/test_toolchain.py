"""The Debian -> APK conversion on .deb files made here with ``dpkg-deb --build``: what a
converted package holds (files, emulated alternatives and bundle, busybox's links),
what its metadata says (Wolfi names, mapped dependencies, replaces), the cache by
digest, and a .deb that fails to convert (named, with the reason; nothing published)."""

from __future__ import annotations

import hashlib
import io
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from melange2.apk.index import read_index_tar_gz
from melange2.apk.reader import read_apk
from melange2.apk.signing import Signer, generate_key, load_public_keys
from melange2.apk.writer import finish_info
from melange2.farm.bootstrap import build_bootstrap_repo
from melange2.farm.debian import DebRecord, DebRelation, apk_version
from melange2.farm.toolchain import (
    IGNORED,
    PACKAGES,
    ApkSpec,
    ConversionCache,
    ConversionError,
    Toolchain,
    ToolchainApk,
    closure,
    convert,
    convert_all,
    parse_alternatives,
    plan_packages,
    publish,
)
from melange2.testenv.require import require_real_part

ARCH = "x86_64"


def make_deb(
    tmp: Path, name: str, files: dict[str, bytes], *, postinst: str = "", version: str = "1.0-1"
) -> Path:
    root = tmp / f"src-{name}"
    (root / "DEBIAN").mkdir(parents=True)
    control = (
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n"
        "Maintainer: test <t@example.org>\nDescription: test package\n"
    )
    (root / "DEBIAN" / "control").write_text(control)
    if postinst:
        (root / "DEBIAN" / "postinst").write_text(postinst)
        (root / "DEBIAN" / "postinst").chmod(0o755)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(0o755 if "/bin/" in f"/{rel}" else 0o644)
    out = tmp / f"{name}.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def record(
    name: str,
    deb: Path | None = None,
    *,
    depends: Sequence[Sequence[tuple[str, str | None, str | None]]] = (),
    provides: Sequence[str] = (),
    version: str = "1.0-1",
) -> DebRecord:
    return DebRecord(
        name=name,
        version=version,
        arch="amd64",
        source=name,
        depends=tuple(
            tuple(DebRelation(name=n, op=op, version=v) for n, op, v in group) for group in depends
        ),
        provides=tuple(provides),
        description=f"{name} for tests",
        homepage="https://example.org/",
        sha256=hashlib.sha256(deb.read_bytes()).hexdigest() if deb else "",
        size=deb.stat().st_size if deb else 0,
    )


def test_debian_versions_become_apk_versions() -> None:
    assert apk_version("1:1.2.13.dfsg-1") == ("1.2.13", 1)
    assert apk_version("2.36-9+deb12u4") == ("2.36", 9)
    assert apk_version("4:12.2.0-3") == ("12.2.0", 3)
    assert apk_version("20250419~deb12u2") == ("20250419", 0)
    assert apk_version("3.0.15-1~deb12u1") == ("3.0.15", 1)
    assert apk_version("1.1.1w-0+deb11u1") == ("1.1.1w", 0)


def test_alternatives_are_read_from_postinst_literal_paths_only() -> None:
    postinst = """#!/bin/sh
update-alternatives --quiet \\
    --install /usr/bin/cc cc /usr/bin/gcc 20 \\
    #--slave /usr/share/man/man1/cc.1.gz cc.1.gz /usr/share/man/man1/gcc.1.gz
update-alternatives --install /usr/bin/awk awk /usr/bin/gawk 10 \\
  --slave /usr/bin/nawk nawk /usr/bin/gawk
update-alternatives --install /usr/bin/lzma lzma /usr/bin/xz 20 $(
	slave /usr/bin unlzma unxz)
update-alternatives --install "$dir/x" x "$dir/y" 5
"""
    alts = {a.name: a for a in parse_alternatives(postinst)}
    assert set(alts) == {"cc", "awk", "lzma"}
    assert (alts["cc"].link, alts["cc"].path, alts["cc"].priority) == (
        "/usr/bin/cc",
        "/usr/bin/gcc",
        20,
    )
    assert alts["cc"].slaves == ()  # commented out
    assert alts["awk"].slaves == (("/usr/bin/nawk", "/usr/bin/gawk"),)
    assert alts["lzma"].path == "/usr/bin/xz"


def test_plan_names_packages_as_wolfi_and_maps_dependencies() -> None:
    records = [
        record("libc6", depends=[[("libgcc-s1", None, None)]]),
        record("libgcc-s1"),
        record(
            "libc6-dev",
            depends=[[("libc6", "=", "1.0-1")], [("linux-libc-dev", ">=", "5")]],
        ),
        record("linux-libc-dev"),
        record("gcc-12", depends=[[("libc6", ">=", "2.34")], [("dpkg", None, None)]]),
        record("gcc", depends=[[("gcc-12", ">=", "12")]]),
        record("g++", depends=[[("gcc", "=", "1.0-1")], [("c-compiler", None, None)]]),
        record("make", depends=[[("libc6", None, None)]]),
        record("pkgconf"),
        record("binutils", depends=[[("libc6", None, None)]]),
        record("python3.11", depends=[[("python3.11-minimal", "=", "1.0-1")]]),
        record("python3.11-minimal", depends=[[("libc6", None, None)]]),
        record("python3", depends=[[("python3.11", ">=", "3.11")]]),
        record("python3-minimal", depends=[[("python3.11-minimal", None, None)]]),
        record("meson", depends=[[("python3:any", None, None)], [("ninja-build", None, None)]]),
        record("ninja-build", depends=[[("libc6", None, None)]]),
    ]
    specs = [s for s in PACKAGES if all(d in {r.name for r in records} for d in s.debs)]
    planned = {p.info.name: p for p in plan_packages(specs, records, ARCH)}
    assert "libc6" not in planned and "glibc" in planned
    assert planned["glibc"].info.depends == ("libgcc-s1",)
    # an exact Debian version: the APK version of that package; other bounds dropped
    assert planned["glibc-dev"].info.depends == ("glibc=1.0-r0", "linux-libc-dev")
    # dependencies on dpkg's own packages are dropped; virtual names resolved
    assert planned["gcc-12"].info.depends == ("glibc",)
    assert "dpkg" in IGNORED
    assert planned["g++"].info.depends == ("gcc=1.0-r0",)
    # several .debs in one APK, a provide at its version, and names mapped in depends
    assert [r.name for r in planned["python-3.11"].debs] == [
        "python3.11",
        "python3",
        "python3-minimal",
    ]
    assert planned["python-3.11"].info.provides == ("python3=1.0-r0",)
    assert planned["python-3.11"].info.depends == ("python3.11-minimal=1.0-r0",)
    assert planned["meson"].info.depends == ("python-3.11", "samurai")
    assert planned["build-base"].debs == ()
    assert planned["build-base"].info.depends == (
        "binutils",
        "gcc",
        "g++",
        "make",
        "glibc-dev",
        "pkgconf",
    )
    assert planned["glibc"].info.version == "1.0" and planned["glibc"].info.epoch == 0
    assert "(Debian 1.0-1)" in planned["glibc"].info.description


def test_a_debian_name_that_clashes_with_a_wolfi_name_is_refused() -> None:
    records = [record("libc6"), record("glibc")]
    with pytest.raises(ConversionError, match="clashes"):
        plan_packages([ApkSpec(name="glibc", debs=("libc6",))], records, ARCH)


def test_closure_leaves_out_what_only_dpkg_needs() -> None:
    records = [
        record("tar", depends=[[("libc6", None, None)], [("dpkg", None, None)]]),
        record("libc6"),
        record("dpkg", depends=[[("libmd0", None, None)]]),
        record("libmd0"),
        record("awk-user", depends=[[("awk", None, None)]]),
        record("gawk", provides=["awk"]),
    ]
    names = {r.name for r in closure(records, ["tar", "awk-user"])}
    assert names == {"tar", "libc6", "awk-user", "gawk"}


def test_conversion_keeps_files_emulates_scripts_and_is_cached(tmp_path: Path) -> None:
    gcc = make_deb(
        tmp_path,
        "gcc",
        {"usr/bin/gcc": b"#!/bin/sh\necho gcc\n", "usr/bin/c89-gcc": b"#!/bin/sh\n"},
        postinst="update-alternatives --install /usr/bin/cc cc /usr/bin/gcc 20\n",
    )
    clang = make_deb(
        tmp_path,
        "clang-ish",
        {"usr/bin/clang": b"#!/bin/sh\n"},
        postinst="update-alternatives --install /usr/bin/cc cc /usr/bin/clang 10\n",
    )
    ca = make_deb(
        tmp_path,
        "ca-certificates",
        {
            "usr/share/ca-certificates/mozilla/B.crt": b"-----B-----\n",
            "usr/share/ca-certificates/mozilla/A.crt": b"-----A-----",
        },
    )
    debs = {"gcc": gcc, "clang-ish": clang, "ca-certificates": ca}
    records = [record(n, p) for n, p in debs.items()]
    from melange2.farm.toolchain import _alternatives

    cache = ConversionCache(tmp_path / "cache")
    alternatives = {n: _alternatives(p, cache) for n, p in debs.items()}
    planned = {
        p.info.name: p
        for p in plan_packages(
            [
                ApkSpec(name="gcc", debs=("gcc",)),
                ApkSpec(name="ca-certificates-bundle", debs=("ca-certificates",)),
            ],
            records,
            ARCH,
            alternatives,
        )
    }
    # the higher priority wins the alternative
    assert planned["gcc"].links == (("/usr/bin/cc", "/usr/bin/gcc"),)
    assert planned["clang-ish"].links == ()
    work = tmp_path / "work"
    work.mkdir()
    first = convert(planned["gcc"], debs, cache, work)
    assert not first.cached
    assert {"usr/bin/gcc", "usr/bin/cc", "usr/bin/c89-gcc"} <= set(first.files)
    bundle = convert(planned["ca-certificates-bundle"], debs, cache, work)
    again = convert(planned["gcc"], debs, cache, work)
    assert again.cached and again.data_path == first.data_path and again.data == first.data

    key = tmp_path / "k.rsa"
    generate_key(key, key_size=1024)
    signer = Signer.from_files(key)
    apks = [
        ToolchainApk(
            info=finish_info(c.planned.info, c.data, source_date_epoch=c.build_date),
            data_path=c.data_path,
            files=c.files,
            cached=c.cached,
        )
        for c in (first, bundle)
    ]
    arch_dir = tmp_path / "repo" / ARCH
    records_out = publish(apks, signer, arch_dir)
    assert [r.name for r in records_out] == ["gcc", "ca-certificates-bundle"]
    keys = load_public_keys([Path(f"{key}.pub")])
    pkg = read_apk(arch_dir / "gcc-1.0-r0.apk")
    pkg.verify(keys)
    cc = next(e for e in pkg.entries if e.path == "usr/bin/cc")
    assert cc.linkname == "/usr/bin/gcc"
    ca_pkg = read_apk(arch_dir / "ca-certificates-bundle-1.0-r0.apk")
    assert any(e.path == "etc/ssl/certs/ca-certificates.crt" for e in ca_pkg.entries)
    # publishing again leaves the files alone
    mtime = (arch_dir / "gcc-1.0-r0.apk").stat().st_mtime_ns
    publish(apks, signer, arch_dir)
    assert (arch_dir / "gcc-1.0-r0.apk").stat().st_mtime_ns == mtime


def test_a_deb_that_fails_to_convert_is_named_with_the_reason(tmp_path: Path) -> None:
    good = make_deb(tmp_path, "good", {"usr/bin/good": b"#!/bin/sh\n"})
    bad = tmp_path / "bad_1.0-1_amd64.deb"
    bad.write_bytes(b"!<arch>\nnot really a deb")
    debs = {"good": good, "bad": bad}
    records = [record("good", good), record("bad", bad)]
    planned = plan_packages([], records, ARCH)
    cache = ConversionCache(tmp_path / "cache")
    with pytest.raises(ConversionError) as info:
        convert_all(planned, debs, cache, ARCH)
    message = str(info.value)
    assert "bad_1.0-1_amd64.deb" in message and "dpkg-deb" in message
    assert "good" not in message.split("\n", 1)[1]


def test_a_failed_toolchain_leaves_the_repository_as_it_was(tmp_path: Path) -> None:
    busybox = Path(__file__).resolve().parents[3] / ".tools" / "debs" / "busybox-static_amd64.deb"
    if not busybox.exists():
        require_real_part("build a bootstrap repository", [f"{busybox} (make setup)"])
    root = tmp_path / "bootstrap"
    build_bootstrap_repo(root, {"amd64": busybox}, key_size=1024)
    index = root / "repo" / ARCH / "APKINDEX.tar.gz"
    before = {p.name: p.read_bytes() for p in (root / "repo" / ARCH).iterdir()}

    def failing_toolchain(deb_arch: str, cache: ConversionCache) -> Toolchain:
        """A fake toolchain maker: conversion fails as a corrupt .deb makes it fail."""
        raise ConversionError("1 Debian package(s) failed to convert: broken.deb: bad")

    with pytest.raises(ConversionError, match=r"broken\.deb"):
        build_bootstrap_repo(
            root,
            {"amd64": busybox},
            key_size=1024,
            toolchain_cache=tmp_path / "cache",
            make=failing_toolchain,
        )
    after = {p.name: p.read_bytes() for p in (root / "repo" / ARCH).iterdir()}
    assert after == before
    keys = load_public_keys([root / "keys" / "melange2-bootstrap.rsa.pub"])
    assert [
        r.name for r in read_index_tar_gz(io.BytesIO(index.read_bytes()), keys=keys).records
    ] == ["busybox"]


def test_converted_packages_carry_the_scas_provides_and_depends(tmp_path: Path) -> None:
    """The host's own ELF files in Debian's multiarch layout: libraries there are in a
    library directory, .pc files in usr/lib/<triplet>/pkgconfig provide pc: names."""
    libz = Path("/lib/x86_64-linux-gnu/libz.so.1.2.13")
    if not libz.is_file():
        require_real_part("read the host's zlib", [f"{libz} (Debian's zlib1g)"])
    pc = b"prefix=/usr\nName: zlib\nDescription: z\nVersion: 1.2.13\nRequires: libfoo\nLibs: -lz\n"
    zlib = make_deb(
        tmp_path,
        "zlib1g",
        {
            "lib/x86_64-linux-gnu/libz.so.1.2.13": libz.read_bytes(),
            "usr/lib/x86_64-linux-gnu/pkgconfig/zlib.pc": pc,
            "usr/bin/true-ish": Path("/usr/bin/true").read_bytes(),
            "usr/bin/tool": b"#!/usr/bin/perl\nprint 1;\n",
            "usr/lib/other/pkgconfig/vendored.pc": pc.replace(b"zlib", b"vendored"),
        },
        version="1:1.2.13.dfsg-1",
    )
    planned = plan_packages(
        [ApkSpec(name="zlib", debs=("zlib1g",))],
        [record("zlib1g", zlib, version="1:1.2.13.dfsg-1")],
        ARCH,
    )
    work = tmp_path / "work"
    work.mkdir()
    cache = ConversionCache(tmp_path / "cache")
    converted = convert(planned[0], {"zlib1g": zlib}, cache, work)
    assert set(converted.sca_provides) == {
        "so:libz.so.1=1",
        "so-ver:libz.so.1=1.2.13-r0",
        "pc:zlib=1.2.13-r0",
        "cmd:true-ish=1.2.13-r0",
        "cmd:tool=1.2.13-r0",
    }
    assert set(converted.sca_depends) == {
        "so:libc.so.6",
        "so:ld-linux-x86-64.so.2",
        "pc:libfoo",
        "cmd:perl",
    }
    # what was found is cached with the data stream
    again = convert(planned[0], {"zlib1g": zlib}, cache, work)
    assert again.cached and again.sca_provides == converted.sca_provides
