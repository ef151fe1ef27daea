from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from melange2.apk import (
    ApkSignatureError,
    IndexRecord,
    PackageInfo,
    read_apk,
    write_apk,
    write_index_tar_gz,
)
from melange2.repo import (
    PackageVerificationError,
    Repository,
    RepositoryError,
    UntrustedIndexError,
    installed_db,
    load_indexes,
    resolve,
)
from tests.unit.apk.conftest import SOURCE_DATE_EPOCH, Keys, make_tree

ARCH = "x86_64"
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def write_package(root: Path, info: PackageInfo, tree: Path, keys: Keys) -> IndexRecord:
    (root / ARCH).mkdir(parents=True, exist_ok=True)
    with (root / ARCH / info.filename).open("wb") as out:
        result = write_apk(tree, info, keys.signer, out, source_date_epoch=SOURCE_DATE_EPOCH)
    return result.index_record()


def write_index(root: Path, records: list[IndexRecord], keys: Keys | None) -> None:
    with (root / ARCH / "APKINDEX.tar.gz").open("wb") as out:
        write_index_tar_gz(records, keys.signer if keys else None, out, description="test repo")


@dataclass(frozen=True, kw_only=True)
class Repo:
    root: Path
    records: dict[str, IndexRecord]


@pytest.fixture
def repo(tmp_path: Path, keys: Keys) -> Repo:
    root = tmp_path / "repo"
    lib_tree = tmp_path / "lib"
    (lib_tree / "usr/lib").mkdir(parents=True)
    (lib_tree / "usr/lib/libgreet.so.1").write_bytes(b"\x7fELF greet")
    records = [
        write_package(
            root,
            PackageInfo(
                name="hello",
                version="2.12",
                arch=ARCH,
                depends=("so:libgreet.so.1",),
                provides=("cmd:hello=2.12-r0",),
            ),
            make_tree(tmp_path / "hello"),
            keys,
        ),
        write_package(
            root,
            PackageInfo(
                name="libgreet", version="1.0", arch=ARCH, provides=("so:libgreet.so.1=1",)
            ),
            lib_tree,
            keys,
        ),
    ]
    write_index(root, records, keys)
    return Repo(root=root, records={r.name: r for r in records})


@dataclass
class Server:
    url: str
    requests: list[str]


@pytest.fixture
def server(repo: Repo) -> Iterator[Server]:
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(repo.root), **kwargs)

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(url=f"http://127.0.0.1:{httpd.server_address[1]}/", requests=requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_repository_locations(tmp_path: Path) -> None:
    assert Repository.parse(tmp_path).local_path == tmp_path
    assert Repository.parse(f"file://{tmp_path}/x%20y").local_path == tmp_path / "x y"
    remote = Repository.parse("https://packages.example.com/os/")
    assert remote.local_path is None
    assert remote.url(ARCH, "APKINDEX.tar.gz") == (
        "https://packages.example.com/os/x86_64/APKINDEX.tar.gz"
    )
    with pytest.raises(RepositoryError, match="unsupported"):
        Repository.parse("ftp://example.com/repo")


async def test_load_index_from_a_directory(repo: Repo, keys: Keys, tmp_path: Path) -> None:
    index = await Repository.parse(repo.root).load_index(ARCH, keyring=keys.trusted)
    assert {r.name for r in index.records} == {"hello", "libgreet"}
    assert index.signed_by == "test.rsa.pub"
    assert index.description == "test repo"
    assert index.arch == ARCH
    # a keyring can be key files or directories of them; file:// URLs are directories
    by_file = await Repository.parse(f"file://{repo.root}").load_index(
        ARCH, keyring=[keys.pair.public_key]
    )
    assert by_file.records == index.records
    keydir = tmp_path / "keys"
    keydir.mkdir()
    shutil.copy(keys.pair.public_key, keydir)
    by_dir = await Repository.parse(repo.root).load_index(ARCH, keyring=[keydir])
    assert by_dir.signed_by == "test.rsa.pub"


async def test_load_index_over_http(repo: Repo, keys: Keys, server: Server) -> None:
    async with httpx.AsyncClient() as client:
        index = await Repository.parse(server.url).load_index(
            ARCH, keyring=keys.trusted, client=client
        )
    assert {r.name for r in index.records} == {"hello", "libgreet"}
    # without a client, one is made and closed
    again = await Repository.parse(server.url.rstrip("/")).load_index(ARCH, keyring=keys.trusted)
    assert again.records == index.records
    assert server.requests == ["/x86_64/APKINDEX.tar.gz"] * 2


async def test_index_signed_by_an_untrusted_key(repo: Repo, keys: Keys, server: Server) -> None:
    for location in (str(repo.root), server.url):
        with pytest.raises(UntrustedIndexError) as error:
            await Repository.parse(location).load_index(ARCH, keyring=keys.impostor)
        message = str(error.value)
        assert f"repository {location}" in message
        assert "signed with test.rsa.pub" in message
        assert isinstance(error.value, ApkSignatureError)
    with pytest.raises(UntrustedIndexError, match=r"signed with test\.rsa\.pub"):
        await Repository.parse(repo.root).load_index(ARCH, keyring={})
    lenient = await Repository.parse(repo.root).load_index(
        ARCH, keyring=keys.impostor, allow_untrusted=True
    )
    assert lenient.signed_by is None


async def test_unsigned_index(repo: Repo, keys: Keys) -> None:
    write_index(repo.root, list(repo.records.values()), None)
    with pytest.raises(UntrustedIndexError, match="is not signed"):
        await Repository.parse(repo.root).load_index(ARCH, keyring=keys.trusted)


async def test_missing_index(tmp_path: Path, keys: Keys, server: Server) -> None:
    with pytest.raises(RepositoryError, match="cannot read"):
        await Repository.parse(tmp_path).load_index(ARCH, keyring=keys.trusted)
    with pytest.raises(RepositoryError, match="HTTP 404"):
        await Repository.parse(server.url).load_index("aarch64", keyring=keys.trusted)


async def test_fetch_verifies_and_caches(
    repo: Repo, keys: Keys, server: Server, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    index = await Repository.parse(server.url).load_index(ARCH, keyring=keys.trusted)
    record = next(r for r in index.records if r.name == "hello")
    path = await index.fetch(record, cache_dir=cache)
    assert path.parent == cache
    assert record.checksum.hex() in path.name
    assert read_apk(path).checksum == record.checksum
    assert path.read_bytes() == (repo.root / ARCH / record.filename).read_bytes()
    downloads = [p for p in server.requests if p.endswith(".apk")]
    assert downloads == [f"/{ARCH}/hello-2.12-r0.apk"]

    # cached: no second download, even from another repository object
    again = await Repository.parse(server.url).fetch(record, arch=ARCH, cache_dir=cache)
    assert again == path
    assert [p for p in server.requests if p.endswith(".apk")] == downloads
    assert sorted(p.name for p in cache.iterdir()) == [path.name]


async def test_fetch_from_a_directory(repo: Repo, keys: Keys, tmp_path: Path) -> None:
    index = await Repository.parse(repo.root).load_index(ARCH, keyring=keys.trusted)
    record = next(r for r in index.records if r.name == "libgreet")
    path = await index.fetch(record, cache_dir=tmp_path / "cache")
    assert read_apk(path).info.name == "libgreet"


async def test_tampered_package_is_rejected(
    repo: Repo, keys: Keys, server: Server, tmp_path: Path
) -> None:
    index = await Repository.parse(server.url).load_index(ARCH, keyring=keys.trusted)
    record = next(r for r in index.records if r.name == "libgreet")
    # a different build under the same file name
    other = tmp_path / "other"
    (other / "usr/lib").mkdir(parents=True)
    (other / "usr/lib/libgreet.so.1").write_bytes(b"\x7fELF evil")
    write_package(
        repo.root,
        PackageInfo(name="libgreet", version="1.0", arch=ARCH, provides=("so:libgreet.so.1=1",)),
        other,
        keys,
    )
    cache = tmp_path / "cache"
    for location in (server.url, str(repo.root)):
        with pytest.raises(PackageVerificationError, match="does not match the index"):
            await Repository.parse(location).fetch(record, arch=ARCH, cache_dir=cache)
    assert list(cache.iterdir()) == []

    # flipped bytes in the data stream: the control checksum holds, the data does not
    hello = repo.records["hello"]
    apk = repo.root / ARCH / hello.filename
    data = bytearray(apk.read_bytes())
    data[-40] ^= 0xFF
    apk.write_bytes(bytes(data))
    with pytest.raises(PackageVerificationError):
        await Repository.parse(repo.root).fetch(hello, arch=ARCH, cache_dir=cache)
    assert list(cache.iterdir()) == []
    # bytes after the data stream (read without inflating it)
    data[-40] ^= 0xFF
    apk.write_bytes(bytes(data) + b"junk")
    with pytest.raises(PackageVerificationError, match="the index says"):
        await Repository.parse(repo.root).fetch(hello, arch=ARCH, cache_dir=cache)
    assert list(cache.iterdir()) == []


async def test_resolve_fetch_and_install_database(
    repo: Repo, keys: Keys, server: Server, tmp_path: Path
) -> None:
    # the same packages published over HTTP and staged locally: staging (first) wins
    indexes = await load_indexes([repo.root, server.url], ARCH, keyring=[keys.pair.public_key])
    assert [i.repository.location for i in indexes] == [str(repo.root), server.url]
    resolution = resolve(["hello"], indexes, ARCH)
    assert [str(p) for p in resolution.packages] == ["libgreet-1.0-r0", "hello-2.12-r0"]
    assert {p.repository.location for p in resolution.packages} == {str(repo.root)}

    cache = tmp_path / "cache"
    paths = [await p.index.fetch(p.record, cache_dir=cache) for p in resolution.packages]
    file_lists = {
        p.name: read_apk(path).entries for p, path in zip(resolution.packages, paths, strict=True)
    }
    db = installed_db(resolution, file_lists)
    assert "P:libgreet\n" in db
    assert "F:usr/lib\nR:libgreet.so.1\nZ:Q1" in db
    assert "F:usr/bin\nR:hello\na:0:0:755\nZ:Q1" in db
    assert db.endswith("\n\n")
    assert not [p for p in server.requests if p.endswith(".apk")]
