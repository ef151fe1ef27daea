from __future__ import annotations

import base64
import hashlib
import re

import pytest

from melange2.apk import (
    DataEntry,
    EntryKind,
    IndexRecord,
    parse_index,
)
from melange2.repo import (
    LoadedIndex,
    Repository,
    Resolution,
    ResolutionError,
    installed_db,
    installed_db_entry,
    resolve,
    world_text,
)

ARCH = "x86_64"


def pkg(
    spec: str,
    *depends: str,
    provides: tuple[str, ...] = (),
    priority: int | None = None,
    arch: str = ARCH,
    salt: str = "",
) -> IndexRecord:
    name, version = spec.rsplit("-", 2)[0], "-".join(spec.rsplit("-", 2)[1:])
    return IndexRecord(
        checksum=hashlib.sha1(f"{spec}{salt}".encode()).digest(),
        name=name,
        version=version,
        arch=arch,
        size=100,
        installed_size=1000,
        depends=depends,
        provides=provides,
        provider_priority=priority,
    )


def index(location: str, *records: IndexRecord) -> LoadedIndex:
    return LoadedIndex(
        repository=Repository.parse(location),
        arch=ARCH,
        description="",
        records=records,
        signed_by="test.rsa.pub",
    )


def names(resolution: Resolution) -> list[str]:
    return [str(p) for p in resolution.packages]


def test_picks_the_highest_version_and_follows_depends() -> None:
    repo = index(
        "/repo",
        pkg("app-1.0-r0", "libfoo"),
        pkg("app-1.1-r0", "libfoo>=2", "so:libc.musl-x86_64.so.1"),
        pkg("libfoo-1.9-r0"),
        pkg("libfoo-2.0-r0", "musl"),
        pkg("libfoo-2.0-r1", "musl"),
        pkg("musl-1.2.4-r2", provides=("so:libc.musl-x86_64.so.1=1",)),
    )
    resolution = resolve(["app"], [repo], ARCH)
    assert names(resolution) == ["musl-1.2.4-r2", "libfoo-2.0-r1", "app-1.1-r0"]
    assert all(p.repository.location == "/repo" for p in resolution.packages)
    assert resolution.world == ("app",)


def test_version_constraints_in_the_world() -> None:
    repo = index("/repo", pkg("go-1.21.9-r0"), pkg("go-1.22.1-r0"), pkg("go-1.23.0-r0"))
    assert names(resolve(["go~1.22"], [repo], ARCH)) == ["go-1.22.1-r0"]
    assert names(resolve(["go<1.22"], [repo], ARCH)) == ["go-1.21.9-r0"]
    assert names(resolve(["go=1.23.0-r0"], [repo], ARCH)) == ["go-1.23.0-r0"]


def test_arch_filter_keeps_noarch() -> None:
    repo = index(
        "/repo",
        pkg("tool-2.0-r0", arch="aarch64"),
        pkg("tool-1.0-r0", "data"),
        pkg("data-1-r0", arch="noarch"),
    )
    assert names(resolve(["tool"], [repo], ARCH)) == ["data-1-r0", "tool-1.0-r0"]


def test_so_names_and_versioned_provides() -> None:
    repo = index(
        "/repo",
        pkg("curl-8.5-r0", "so:libcurl.so.4", "so:libz.so.1"),
        pkg("libcurl-8.5-r0", provides=("so:libcurl.so.4=4.8.0",)),
        pkg("zlib-1.3-r0", provides=("so:libz.so.1=1.3", "pc:zlib=1.3")),
        pkg("zlib-1.3.1-r0", provides=("so:libz.so.1=1.3.1", "pc:zlib=1.3.1")),
    )
    assert names(resolve(["curl"], [repo], ARCH)) == [
        "libcurl-8.5-r0",
        "zlib-1.3.1-r0",
        "curl-8.5-r0",
    ]
    assert names(resolve(["pc:zlib<1.3.1"], [repo], ARCH)) == ["zlib-1.3-r0"]


def test_a_chosen_package_satisfies_later_needs() -> None:
    repo = index(
        "/repo",
        pkg("a-1-r0", "so:libx.so.1"),
        pkg("libx-1-r0", provides=("so:libx.so.1=1",)),
        pkg("libx-compat-2-r0", provides=("so:libx.so.1=2",)),
    )
    # libx is in the world, so it also serves a's so: dependency
    assert names(resolve(["libx", "a"], [repo], ARCH)) == ["libx-1-r0", "a-1-r0"]
    # otherwise the highest provided version wins
    assert names(resolve(["a"], [repo], ARCH)) == ["libx-compat-2-r0", "a-1-r0"]


def test_provider_priority_then_version() -> None:
    repo = index(
        "/repo",
        pkg("openssl-config-3-r0", provides=("openssl-config-provider",), priority=10),
        pkg("openssl-config-fips-9-r0", provides=("openssl-config-provider",), priority=5),
        pkg("jdk-17-r0", provides=("java",), priority=17),
        pkg("jdk-21-r0", provides=("java",), priority=21),
        pkg("jre-11-r0", provides=("java=11",)),
    )
    assert names(resolve(["openssl-config-provider"], [repo], ARCH)) == ["openssl-config-3-r0"]
    assert names(resolve(["java"], [repo], ARCH)) == ["jdk-21-r0"]


def test_unversioned_provides_without_priority_need_an_explicit_choice() -> None:
    repo = index(
        "/repo",
        pkg("app-1-r0", "cmd:sh"),
        pkg("busybox-1.36-r0", provides=("cmd:sh",)),
        pkg("dash-0.5-r0", provides=("cmd:sh",)),
    )
    with pytest.raises(ResolutionError, match=r"cannot resolve \"cmd:sh\" \(needed by app-1-r0\)"):
        resolve(["app"], [repo], ARCH)
    # naming one in the world settles it, wherever it appears in the world
    assert names(resolve(["app", "dash"], [repo], ARCH)) == ["dash-0.5-r0", "app-1-r0"]
    assert names(resolve(["busybox", "app"], [repo], ARCH)) == ["busybox-1.36-r0", "app-1-r0"]


def test_staging_repository_listed_first_wins_ties() -> None:
    staging = index("/staging", pkg("hello-2.12-r0", salt="staging"), pkg("extra-1-r0"))
    published = index(
        "https://packages.example.com/os",
        pkg("hello-2.12-r0", salt="published"),
        pkg("hello-2.11-r0"),
        pkg("extra-2-r0"),
    )
    resolution = resolve(["hello", "extra"], [staging, published], ARCH)
    chosen = resolution.by_name()
    assert chosen["hello"].repository.location == "/staging"
    assert chosen["hello"].record.checksum == hashlib.sha1(b"hello-2.12-r0staging").digest()
    # a higher version still wins over repository order
    assert str(chosen["extra"]) == "extra-2-r0"
    assert chosen["extra"].repository.location == "https://packages.example.com/os"
    reversed_order = resolve(["hello"], [published, staging], ARCH).by_name()
    assert reversed_order["hello"].repository.location == "https://packages.example.com/os"


def test_conflicts_exclude_providers() -> None:
    repo = index(
        "/repo",
        pkg("app-1-r0", "!gnu-tar"),
        pkg("gnu-tar-1.35-r0", provides=("cmd:tar=1.35",)),
        pkg("bsdtar-3.7-r0", provides=("cmd:tar=3.7",)),
    )
    assert names(resolve(["cmd:tar<2"], [repo], ARCH)) == ["gnu-tar-1.35-r0"]
    with pytest.raises(ResolutionError, match=r'conflicts with "!gnu-tar"'):
        resolve(["!gnu-tar", "cmd:tar<2"], [repo], ARCH)
    assert names(resolve(["!gnu-tar", "cmd:tar"], [repo], ARCH)) == ["bsdtar-3.7-r0"]


def test_conflict_met_late_restarts_resolution() -> None:
    repo = index(
        "/repo",
        pkg("tool-2-r0", "lib"),
        pkg("lib-2-r0"),
        pkg("lib-1-r0"),
        pkg("app-1-r0", "!lib>=2"),
    )
    assert names(resolve(["tool", "app"], [repo], ARCH)) == ["app-1-r0", "lib-1-r0", "tool-2-r0"]


def test_version_requirement_met_late_restarts_resolution() -> None:
    repo = index(
        "/repo",
        pkg("a-1-r0", "lib"),
        pkg("b-1-r0", "lib<2"),
        pkg("lib-1.5-r0"),
        pkg("lib-2.0-r0"),
    )
    assert names(resolve(["a", "b"], [repo], ARCH)) == ["lib-1.5-r0", "a-1-r0", "b-1-r0"]


def test_incompatible_requirements_fail() -> None:
    repo = index(
        "/repo", pkg("a-1-r0", "lib>=2"), pkg("b-1-r0", "lib<2"), pkg("lib-1-r0"), pkg("lib-2-r0")
    )
    with pytest.raises(ResolutionError) as error:
        resolve(["a", "b"], [repo], ARCH)
    assert str(error.value) == (
        'cannot resolve "lib>=2" (needed by a-1-r0): available lib-2-r0 in /repo'
        ' [excluded by "lib<2" (needed by b-1-r0)], lib-1-r0 in /repo'
    )


def test_one_owner_per_name() -> None:
    repo = index(
        "/repo",
        pkg("a-1-r0", "libssl"),
        pkg("b-1-r0", "libssl-compat"),
        pkg("libssl-3-r0", provides=("so:libssl.so=3",)),
        pkg("libssl-compat-1-r0", provides=("so:libssl.so=1",)),
    )
    # both own so:libssl.so (versioned provides): they cannot be installed together
    with pytest.raises(ResolutionError, match=r"already provides so:libssl.so"):
        resolve(["a", "b"], [repo], ARCH)


def test_dependency_cycles_resolve_in_a_deterministic_order() -> None:
    repo = index(
        "/repo",
        pkg("a-1-r0", "b"),
        pkg("b-1-r0", "a", "c"),
        pkg("c-1-r0"),
        pkg("top-1-r0", "b"),
    )
    first = names(resolve(["top"], [repo], ARCH))
    assert sorted(first) == ["a-1-r0", "b-1-r0", "c-1-r0", "top-1-r0"]
    assert first.index("c-1-r0") < first.index("b-1-r0") < first.index("top-1-r0")
    for world in (["top"], ["a", "top"], ["b", "top", "a"], ["top", "c", "b"]):
        assert names(resolve(world, [repo], ARCH)) == first
    shuffled = index("/repo", *reversed(repo.records))
    assert names(resolve(["top"], [shuffled], ARCH)) == first


def test_nothing_provides() -> None:
    repo = index("/repo", pkg("baz-1.0-r0", "so:libbar.so.1"))
    with pytest.raises(ResolutionError) as error:
        resolve(["baz"], [repo], ARCH)
    assert str(error.value) == 'nothing provides "so:libbar.so.1" (needed by baz-1.0-r0)'
    with pytest.raises(ResolutionError, match=r'^nothing provides "missing"$'):
        resolve(["missing"], [repo], ARCH)


def test_unsatisfiable_version_lists_what_is_available() -> None:
    repo = index("/srv/repo", pkg("foo-1.0-r0"), pkg("foo-0.9-r1"))
    with pytest.raises(ResolutionError) as error:
        resolve(["foo>=2"], [repo], ARCH)
    assert str(error.value) == (
        'cannot resolve "foo>=2": available foo-1.0-r0 in /srv/repo, foo-0.9-r1 in /srv/repo'
    )


def test_bad_world_entries_and_tags() -> None:
    repo = index("/repo", pkg("foo-1-r0"))
    with pytest.raises(ResolutionError, match="invalid"):
        resolve(["foo>="], [repo], ARCH)
    with pytest.raises(ResolutionError, match="repository tags"):
        resolve(["foo@local"], [repo], ARCH)


def test_install_if_is_ignored() -> None:
    repo = index("/repo", pkg("foo-1-r0"), pkg("docs-1-r0"), pkg("foo-doc-1-r0"))
    record = repo.records[2].evolve(install_if=("foo=1-r0", "docs"))
    repo = index("/repo", repo.records[0], repo.records[1], record)
    assert names(resolve(["foo", "docs"], [repo], ARCH)) == ["docs-1-r0", "foo-1-r0"]


# --- installed database --------------------------------------------------------------------


def entry(
    path: str, kind: EntryKind, mode: int, data: bytes | None = None, **kw: object
) -> DataEntry:
    checksum = hashlib.sha1(data).hexdigest() if data is not None else None
    values: dict[str, object] = dict(
        path=path, kind=kind, mode=mode, uid=0, gid=0, uname="root", gname="root", mtime=0,
        size=len(data or b""), checksum=checksum,
    )  # fmt: skip
    values.update(kw)
    return DataEntry(**values)  # type: ignore[arg-type]


def test_installed_db_and_world() -> None:
    repo = index(
        "/repo",
        pkg("hello-2.12-r0", "so:libc.musl-x86_64.so.1", provides=("cmd:hello=2.12-r0",)),
        pkg("musl-1.2.4-r2", provides=("so:libc.musl-x86_64.so.1=1",)),
    )
    resolution = resolve(["hello"], [repo], ARCH)
    files = {
        "hello": [
            entry("usr", EntryKind.DIRECTORY, 0o755),
            entry("usr/bin", EntryKind.DIRECTORY, 0o755),
            entry("usr/bin/hello", EntryKind.FILE, 0o755, b"#!/bin/sh\n"),
            entry("usr/bin/hi", EntryKind.SYMLINK, 0o777, b"hello", linkname="hello"),
            entry("var/lib/hello", EntryKind.DIRECTORY, 0o700, uid=100, gid=101),
            entry("var/lib/hello/state", EntryKind.FILE, 0o644, b"", uid=100, gid=101),
        ],
        "musl": [entry("lib", EntryKind.DIRECTORY, 0o755),
                 entry("lib/ld-musl-x86_64.so.1", EntryKind.FILE, 0o755, b"ELF")],
    }  # fmt: skip
    text = installed_db(resolution, files)

    def q1(data: bytes) -> str:
        return "Q1" + base64.b64encode(hashlib.sha1(data).digest()).decode()

    hello, musl = (p.record for p in reversed(resolution.packages))
    assert text == (
        musl.render()
        + "F:lib\n"
        + "R:ld-musl-x86_64.so.1\na:0:0:755\n" + f"Z:{q1(b'ELF')}\n"
        + "\n"
        + hello.render()
        + "F:usr\nF:usr/bin\n"
        + "R:hello\na:0:0:755\n" + f"Z:{q1(b'#!/bin/sh' + bytes([10]))}\n"
        + "R:hi\na:0:0:777\n" + f"Z:{q1(b'hello')}\n"
        + "F:var/lib/hello\nM:100:101:700\n"
        + "R:state\na:100:101:644\n" + f"Z:{q1(b'')}\n"
        + "\n"
    )  # fmt: skip
    # apk's database is APKINDEX records plus file lines: the index fields read back
    records = parse_index(re.sub(r"(?m)^[FRaMZ]:.*\n", "", text))
    assert [r.name for r in records] == ["musl", "hello"]
    assert records[1].provides == ("cmd:hello=2.12-r0",)

    with pytest.raises(ResolutionError, match="no file list for musl"):
        installed_db(resolution, {"hello": files["hello"]})
    assert (
        installed_db_entry(musl, files["musl"]) + installed_db_entry(hello, files["hello"]) == text
    )

    assert resolution.world_text() == "hello\n"
    assert world_text(["zlib", "busybox>=1.36", "!foo", "busybox>=1.36", "so:libc.so"]) == (
        "busybox>=1.36\n!foo\nso:libc.so\nzlib\n"
    )


def test_installed_db_hardlinks_take_their_target_checksum() -> None:
    repo = index("/repo", pkg("a-1-r0"))
    resolution = resolve(["a"], [repo], ARCH)
    files = {
        "a": [
            entry("bin", EntryKind.DIRECTORY, 0o755),
            entry("bin/x", EntryKind.FILE, 0o644, b"x"),
            entry("bin/y", EntryKind.HARDLINK, 0o644, None, linkname="bin/x"),
            entry("top", EntryKind.FILE, 0o644, b"t"),
        ]
    }
    lines = installed_db(resolution, files).splitlines()
    z = "Z:Q1" + base64.b64encode(hashlib.sha1(b"x").digest()).decode()
    assert lines[lines.index("R:y") + 1] == z
    assert lines[-4:] == [
        "F:",
        "R:top",
        "Z:Q1" + base64.b64encode(hashlib.sha1(b"t").digest()).decode(),
        "",
    ]
