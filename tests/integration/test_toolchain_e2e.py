"""Real software on the farm, offline: the toolchain repository converted from Debian,
the source cache (uploads, and a fetch of an unreachable URL), examples/ (zlib, GNU
hello, minizip) built from their upstream tarballs with their tests running the
programs, apko installing them, GNU hello for aarch64 under qemu (``slow``: ``make
test-slow``). Upstream melange builds the same examples from the same repository and
source cache in the differential suite (``tests/differential``).

One build of the three examples serves most tests (module fixture): compiling them is
what costs here."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

from melange2.apk.index import read_index_tar_gz
from melange2.apk.reader import read_apk
from melange2.apk.signing import load_public_keys
from melange2.farm.local import FarmEnv
from melange2.farm.toolchain import C_TOOLCHAIN, PACKAGES
from melange2.repo.repository import load_indexes
from melange2.repo.resolve import resolve
from tests.conftest import ROOT, TOOLS
from tests.integration.test_server_e2e import Server, by_name, submit, wait

pytestmark = pytest.mark.e2e

EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def server(farm: FarmEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose first daemon builds x86_64 and second aarch64 (through qemu), with
    the farm's source cache, and a source upload limit of 8 MiB."""
    srv = Server(farm, tmp_path_factory.mktemp("toolchain"), ["--max-source-bytes", str(8 << 20)])
    arches = ("x86_64", "aarch64")
    srv.backends.write_text(
        "backends:\n"
        + "".join(
            f"  - addr: {a}\n    arch: {arches[n % 2]}\n    maxJobs: 4\n"
            for n, a in enumerate(farm.buildkit_addrs)
        )
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _configs(*names: str) -> list[str]:
    return [(EXAMPLES / n / f"{n}.yaml").read_text() for n in names]


CC_AARCH64 = """\
package:
  name: cc-aarch64
  version: 1.0.0
  epoch: 0
  description: a one-file C program, compiled by gcc on the emulated aarch64 daemon
  target-architecture: [aarch64]
environment:
  contents:
    packages: [build-base, busybox]
pipeline:
  - runs: |
      printf '%s\\n' '#include <stdio.h>' \\
        'int main(void) { printf("compiled for %s\\n", "aarch64"); return 0; }' > hi.c
      gcc -O2 -o hi hi.c
      mkdir -p ${{targets.destdir}}/usr/bin
      cp hi ${{targets.destdir}}/usr/bin/hi
test:
  environment:
    contents:
      packages: [busybox]
  pipeline:
    - runs: |
        echo "machine: $(uname -m)"
        hi | tee out.txt
        grep -qx "compiled for aarch64" out.txt
"""


@pytest.fixture(scope="module")
def cc_aarch64(server: Server) -> str:
    """The aarch64 C check, submitted (not awaited): it compiles under qemu on the second
    daemon while the examples build on the first."""
    with server.client() as client:
        return submit(client, config_yaml=CC_AARCH64, arch="aarch64", with_test=True)


@pytest.fixture(scope="module")
def examples(server: Server, cc_aarch64: str) -> dict[str, Any]:
    """zlib, gnu-hello and minizip submitted together (DAG, with tests), after the
    aarch64 check (so both daemons work at once)."""
    with server.client() as client:
        build_id = submit(
            client, configs=_configs("zlib", "gnu-hello", "minizip"), mode="dag", with_test=True
        )
        return wait(client, build_id, timeout=1200)


def _log(server: Server, build: dict[str, Any], name: str) -> str:
    with server.client() as client:
        resp = client.get(f"/api/v1/builds/{build['id']}/packages/{name}/logs")
        assert resp.status_code == 200
        return resp.text


def _repo_apk(server: Server, filename: str, arch: str = "x86_64") -> bytes:
    with server.client() as client:
        resp = client.get(f"/repo/{arch}/{filename}")
        assert resp.status_code == 200, f"{filename} is not in the farm's repository"
        return resp.content


def _entries(apk: bytes) -> dict[str, bytes | str]:
    """Path -> content (files) or ``-> target`` (symlinks), of an APK's data."""
    out: dict[str, bytes | str] = {}
    pos = 0
    members = []
    while pos < len(apk):  # the gzip streams, one after another
        d = zlib.decompressobj(31)
        members.append(d.decompress(apk[pos:]))
        pos = len(apk) - len(d.unused_data)
    with tarfile.open(fileobj=io.BytesIO(members[-1])) as tar:
        for m in tar:
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                out[m.name] = f.read()
            elif m.issym():
                out[m.name] = f"-> {m.linkname}"
    return out


def test_the_toolchain_repository_resolves_real_environments(farm: FarmEnv) -> None:
    repo = Path(farm.extra["BOOTSTRAP_REPO"])
    keys = load_public_keys([Path(farm.extra["BOOTSTRAP_KEY"])])
    for arch, wanted in (("x86_64", [s.name for s in PACKAGES]), ("aarch64", list(C_TOOLCHAIN))):
        index = read_index_tar_gz(repo / arch / "APKINDEX.tar.gz", keys=keys)
        names = {r.name for r in index.records}
        assert set(wanted) <= names, sorted(set(wanted) - names)
    indexes = asyncio.run(
        load_indexes([str(repo)], "x86_64", keyring=[Path(farm.extra["BOOTSTRAP_KEY"])])
    )
    world = ["build-base", "busybox", "autoconf", "automake", "libtool", "cmake", "meson"]
    world += ["samurai", "python3", "perl", "wget", "ca-certificates-bundle", "pkgconf"]
    chosen = {p.name: p for p in resolve(world, indexes, "x86_64").packages}
    assert chosen["python-3.11"].record.name == "python-3.11"  # python3 is its provide
    assert {"gcc", "g++", "binutils", "make", "glibc-dev", "glibc", "libgmp10"} <= set(chosen)
    # busybox's applets give way where a real tool ships the same path
    binutils = read_apk(repo / "x86_64" / chosen["binutils"].record.filename)
    assert binutils.info.replaces == ("busybox",)
    # the SCA's provides and depends, as real configs and apko name them
    for arch, loader in (("x86_64", "ld-linux-x86-64.so.2"), ("aarch64", "ld-linux-aarch64.so.1")):
        indexes = asyncio.run(
            load_indexes([str(repo)], arch, keyring=[Path(farm.extra["BOOTSTRAP_KEY"])])
        )
        world = [f"so:{loader}", "so:libc.so.6", "so:libz.so.1", "pc:zlib", "cmd:make"]
        chosen = {p.name: p for p in resolve(world, indexes, arch).packages}
        assert {"glibc", "zlib", "zlib-dev", "make"} <= set(chosen), sorted(chosen)
        make = chosen["make"].record
        assert f"so:{loader}" in make.depends and "so:libc.so.6" in make.depends
        assert "cmd:make=4.3-r0" in make.provides
        assert "so:libz.so.1=1" in chosen["zlib"].record.provides
        assert "pc:zlib=1.2.13-r0" in chosen["zlib-dev"].record.provides


def test_sources_are_uploaded_checked_and_refused(server: Server, tmp_path: Path) -> None:
    data = b"an upstream tarball, in spirit\n" * 512
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with server.client() as client:
        assert client.head(f"/api/v1/sources/{digest}").status_code == 404
        put = client.put(f"/api/v1/sources/{digest}", content=data)
        assert put.status_code == 201 and put.json() == {
            "digest": digest,
            "size": len(data),
            "created": True,
        }
        assert client.put(f"/api/v1/sources/{digest}", content=data).status_code == 200
        assert client.get(f"/api/v1/sources/{digest}").content == data
        other = "sha256:" + "0" * 64
        wrong = client.put(f"/api/v1/sources/{other}", content=data)
        assert wrong.status_code == 400 and digest in wrong.json()["error"]
        assert client.head(f"/api/v1/sources/{other}").status_code == 404
        bad = client.put("/api/v1/sources/md5:abc", content=data)
        assert bad.status_code == 400 and "not a source digest" in bad.json()["error"]
        big = client.put(f"/api/v1/sources/{other}", content=b"x" * (9 << 20))
        assert big.status_code == 413, big.text

        def stream() -> Iterator[bytes]:  # no content-length: counted as it streams
            for _ in range(9):
                yield b"y" * (1 << 20)

        streamed = client.put(f"/api/v1/sources/{other}", content=stream())
        assert streamed.status_code == 413 and "limit" in streamed.json()["error"]
    cached = Path(server.farm.extra["SOURCE_CACHE"])
    assert (cached / digest).read_bytes() == data
    assert not (cached / other).exists()

    # uploads need the submit role, reading the cache the read role (never anonymous)
    third = "sha256:" + hashlib.sha256(b"third").hexdigest()
    reader = server.make_token("sources-reader", "read")
    with server.client(token=None) as anonymous, server.client(token=reader) as client:
        for resp in (
            anonymous.head(f"/api/v1/sources/{digest}"),
            anonymous.get(f"/api/v1/sources/{digest}"),
            anonymous.put(f"/api/v1/sources/{third}", content=b"third"),
        ):
            assert resp.status_code == 401, resp.text
        assert client.head(f"/api/v1/sources/{digest}").status_code == 200
        assert client.get(f"/api/v1/sources/{digest}").content == data
        refused = client.put(f"/api/v1/sources/{third}", content=b"third")
        assert refused.status_code == 403 and "submit" in refused.json()["error"], refused.text
    assert not (cached / third).exists()

    # the CLI: uploads what is missing, skips what is there (its token from MELANGE_TOKEN)
    new = tmp_path / "pkg-1.0.tar.gz"
    new.write_bytes(b"another tarball\n")
    cli = [str(ROOT / ".venv" / "bin" / "melange2"), "remote", "sources", "add", "--server"]
    env = {**os.environ, "MELANGE_TOKEN": server.make_token("sources-submitter", "submit")}
    anonymous_cli = subprocess.run(
        [*cli, server.url, str(new)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in env.items() if k != "MELANGE_TOKEN"},
    )
    assert anonymous_cli.returncode == 2, anonymous_cli
    assert "authentication required" in anonymous_cli.stderr + anonymous_cli.stdout
    out = subprocess.run(
        [*cli, server.url, str(new)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    ).stdout
    # one line per file, whatever the path's length (no wrapping)
    line = f"sha256:{hashlib.sha256(new.read_bytes()).hexdigest()}  {new}: added (16 bytes)"
    assert out.splitlines() == [line]
    again = subprocess.run(
        [*cli, server.url, str(new)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    ).stdout
    assert again.splitlines() == [line.replace("added (16 bytes)", "already in the source cache")]


FETCH = """\
package:
  name: {name}
  version: 1.0.0
  description: fetches from an address nobody answers on
environment:
  contents:
    packages: [busybox, wget]
pipeline:
  - uses: fetch
    with:
      uri: http://127.0.0.1:9/{name}-1.0.0.tar.gz
      expected-sha256: {sha}
      retry-limit: "1"
  - runs: |
      mkdir -p ${{{{targets.destdir}}}}/usr/share/{name}
      cp README ${{{{targets.destdir}}}}/usr/share/{name}/
"""


def test_a_fetch_of_an_unreachable_url_uses_the_source_cache(server: Server) -> None:
    raw = io.BytesIO()
    # uncompressed: melange's fetch runs a plain `tar -x`, and busybox's tar (this
    # environment's) does not detect gzip itself
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("offline-1.0.0/README")
        body = b"from the source cache\n"
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    data = raw.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    missing = hashlib.sha256(b"nobody has this").hexdigest()
    with server.client() as client:
        assert client.put(f"/api/v1/sources/sha256:{sha}", content=data).status_code == 201
        ok = submit(client, config_yaml=FETCH.format(name="offline", sha=sha))
        gone = submit(client, config_yaml=FETCH.format(name="offline-missing", sha=missing))
        built, failed = wait(client, ok), wait(client, gone)
    assert built["status"] == "success", _log(server, built, "offline")[-3000:]
    log = _log(server, failed, "offline-missing")
    assert failed["status"] == "failed", log[-3000:]
    assert "http://127.0.0.1:9/offline-missing-1.0.0.tar.gz" in log
    assert f"sha256:{missing}" in log


def test_zlib_and_gnu_hello_build_from_upstream_tarballs_and_run(
    server: Server, examples: dict[str, Any]
) -> None:
    packages = by_name(examples)
    for name in ("zlib", "gnu-hello"):
        assert packages[name]["status"] == "success", (name, _log(server, examples, name)[-3000:])
    zlib = _entries(_repo_apk(server, "zlib-1.2.13-r1.apk"))
    dev = _entries(_repo_apk(server, "zlib-dev-1.2.13-r1.apk"))
    assert "usr/lib/libz.so.1.2.13" in zlib and "usr/include/zlib.h" not in zlib
    assert {"usr/include/zlib.h", "usr/lib/libz.a", "usr/lib/pkgconfig/zlib.pc"} <= set(dev)
    hello = _entries(_repo_apk(server, "gnu-hello-2.10-r0.apk"))
    elf = ELFFile(io.BytesIO(hello["usr/bin/hello"]))  # type: ignore[arg-type]
    assert elf["e_machine"] == "EM_X86_64"
    assert elf.get_section_by_name(".debug_info") is None  # stripped
    lang = _entries(_repo_apk(server, "gnu-hello-lang-2.10-r0.apk"))
    assert any(p.endswith("/LC_MESSAGES/hello.mo") for p in lang)
    doc = _entries(_repo_apk(server, "gnu-hello-doc-2.10-r0.apk"))
    assert any(p.startswith("usr/share/man/man1/hello.1") for p in doc)
    for name, line in (
        ("zlib", "zlib 1.2.13: melange2 builds zlib"),
        ("gnu-hello", "Hello, world!"),
    ):
        log = _log(server, examples, name)
        assert "fetch: found /var/cache/melange/sha256:" in log  # melange's fetch, from the cache
        assert line in log  # the test ran the program
    # minizip's environment installs zlib-dev from the build's staging repository
    minizip = _log(server, examples, "minizip")
    staged = next(line for line in minizip.splitlines() if "zlib-dev-1.2.13-r1" in line)
    assert f"staging/{examples['id']}" in staged


def test_minizip_links_the_staged_zlib_and_its_test_runs(
    server: Server, examples: dict[str, Any]
) -> None:
    packages = by_name(examples)
    assert packages["minizip"]["status"] == "success", _log(server, examples, "minizip")[-3000:]
    keys = [server.root / "data" / "melange2.rsa.pub"]
    zlib = read_apk(io.BytesIO(_repo_apk(server, "zlib-1.2.13-r1.apk")))
    minizip = read_apk(io.BytesIO(_repo_apk(server, "minizip-1.2.13-r0.apk")))
    zlib.verify(load_public_keys(keys))
    assert any(p.startswith("so:libz.so.1=") for p in zlib.info.provides)
    assert "so:libz.so.1" in minizip.info.depends


def test_apko_installs_hello_and_minizip_with_their_libraries(
    server: Server, examples: dict[str, Any], tmp_path: Path
) -> None:
    assert all(p["status"] == "success" for p in examples["packages"]), examples
    with server.client() as client:
        key = tmp_path / "melange2.rsa.pub"
        key.write_bytes(client.get("/repo/keys/melange2.rsa.pub").content)
    (tmp_path / "apko.yaml").write_text(
        "contents:\n"
        f"  repositories:\n    - {server.url}/repo\n    - {server.farm.extra['BOOTSTRAP_REPO']}\n"
        f"  keyring:\n    - {key}\n    - {server.farm.extra['BOOTSTRAP_KEY']}\n"
        "  packages:\n    - gnu-hello\n    - minizip\n"
    )
    result = subprocess.run(
        [str(TOOLS / "bin" / "apko"), "build-minirootfs", "apko.yaml", "rootfs.tar"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with tarfile.open(tmp_path / "rootfs.tar") as tar:
        names = set(tar.getnames())
    # the programs, and what their so: dependencies brought: libc, the loader, libz
    assert {"usr/bin/hello", "usr/bin/minizip", "usr/bin/miniunz"} <= names
    assert "usr/lib/libz.so.1" in names, sorted(n for n in names if "libz" in n)
    assert "lib/x86_64-linux-gnu/libc.so.6" in names and "lib64/ld-linux-x86-64.so.2" in names


def test_gcc_compiles_for_aarch64_and_the_program_runs_under_qemu(
    server: Server, cc_aarch64: str
) -> None:
    """The C toolchain on the emulated daemon, cheaply: GNU hello's aarch64 build (below)
    takes a quarter of an hour under qemu, a one-file program a minute or two."""
    with server.client() as client:
        build = wait(client, cc_aarch64, timeout=900)
    package = by_name(build)["cc-aarch64"]
    log = _log(server, build, "cc-aarch64")
    assert package["status"] == "success", log[-3000:]
    assert package["backend"]["arch"] == "aarch64"
    apk = _repo_apk(server, "cc-aarch64-1.0.0-r0.apk", arch="aarch64")
    elf = ELFFile(io.BytesIO(_entries(apk)["usr/bin/hi"]))  # type: ignore[arg-type]
    assert elf["e_machine"] == "EM_AARCH64"
    # the SCA read the aarch64 binary: the aarch64 loader and libc
    depends = read_apk(io.BytesIO(apk)).info.depends
    assert {"so:ld-linux-aarch64.so.1", "so:libc.so.6"} <= set(depends), depends
    assert "machine: aarch64" in log and "compiled for aarch64" in log  # the test ran it


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_gnu_hello_for_aarch64_is_an_aarch64_binary_tested_under_qemu(server: Server) -> None:
    with server.client() as client:
        build = wait(
            client,
            submit(client, configs=_configs("gnu-hello"), arch="aarch64", with_test=True),
            timeout=2400,
        )
    hello = by_name(build)["gnu-hello"]
    assert hello["status"] == "success", _log(server, build, "gnu-hello")[-3000:]
    assert hello["backend"]["arch"] == "aarch64"
    apk = _entries(_repo_apk(server, "gnu-hello-2.10-r0.apk", arch="aarch64"))
    elf = ELFFile(io.BytesIO(apk["usr/bin/hello"]))  # type: ignore[arg-type]
    assert elf["e_machine"] == "EM_AARCH64"
    assert "Hello, world!" in _log(server, build, "gnu-hello")  # the test ran it (qemu)
