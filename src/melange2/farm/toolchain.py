"""The toolchain repository: Debian bookworm's compilers and tools as APKs named as Wolfi
names them, so real configs' ``environment`` resolves offline.

Which packages: the names in :data:`PACKAGES` (``build-base``, ``gcc``, ``glibc-dev``,
``python-3.11`` ...), each made of one Debian package (renamed where Wolfi's name
differs: ``libc6`` is ``glibc``, ``xz-utils`` is ``xz``), several (``python-3.11`` holds
``python3.11``, ``python3`` and ``python3-minimal``) or none (``build-base`` is a meta
package), plus everything their Debian ``Depends`` pull in, under Debian's own names
(``libgmp10``, ``cpp-12``). apt picks the closure (:mod:`.debian`); packages that only
serve dpkg itself (:data:`IGNORED`: dpkg, debconf, usrmerge ...) are left out, with the
dependencies on them.

How a ``.deb`` becomes an APK:

* its files as Debian ships them (``dpkg-deb --extract``). Bookworm's packages are not
  usr-merged (``/bin/bash``, ``/lib/x86_64-linux-gnu/libc.so.6``, ``/lib64/ld-linux-x86-64.so.2``)
  and are consistent among themselves, so paths are kept: ``/bin``, ``/lib`` and
  ``/lib64`` are directories, as in the busybox base. Multiarch directories need no
  ``ld.so.cache``: Debian's loader searches ``/lib/<triplet>``, ``/usr/lib/<triplet>``,
  ``/lib`` and ``/usr/lib`` by default, and gcc and ld look there too.
* maintainer scripts are not run. What they do that a build needs is emulated:
  ``update-alternatives --install`` becomes the symlink itself (``/usr/bin/cc`` ->
  ``/usr/bin/gcc``; the highest priority wins when several packages offer one name),
  and ca-certificates' bundle (``/etc/ssl/certs/ca-certificates.crt``) is assembled
  from its certificates as ``update-ca-certificates`` does. The rest (ldconfig,
  byte-compiling Python, debconf, systemd units, info dir) is not needed.
* ``depend`` entries: Debian's Pre-Depends and Depends, each group's first alternative
  that is in the set, under its APK name; an exact ``=`` version becomes the APK
  version of that package (other version bounds always hold within one release, and
  are dropped). Plus the automatic ``so:``/``cmd:``/``pc:`` provides and depends of the
  SCA (:func:`automatic_relations`).
* ``replaces = busybox`` where a package ships a path busybox's applets take
  (``/bin/ls``), as apk needs to let both be installed.
* the version: Debian's upstream version's leading dotted number, and ``-r0``
  (``1:1.2.13.dfsg-1`` is ``1.2.13-r0``), Debian's own version in the description. A
  package the farm builds at the same version should take epoch 1 or higher
  (``examples/zlib``): melange2's resolver would prefer it anyway (the farm's
  repositories are listed before the bootstrap one), but apko, offered two packages of
  one name and version, takes the one of the index it loaded first, in an order of its
  own.

Conversion is cached by the ``.deb``'s sha256 (:class:`ConversionCache`): the data
stream (the part of an APK that is the package's files) and what was learnt from the
tree are kept; a farm that starts again writes only control streams and signatures.
A ``.deb`` that fails to convert raises :class:`ConversionError` naming it and why,
before anything is written to the repository.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from melange2.apk.index import IndexRecord
from melange2.apk.pkginfo import PackageInfo
from melange2.apk.signing import Signer, signature_stream
from melange2.apk.writer import DataStream, control_stream, finish_info, write_data
from melange2.errors import FarmProcessError
from melange2.farm.debian import (
    DEB_ARCHES,
    AptArchive,
    DebRecord,
    DebRelation,
    apk_version,
    control_files,
    extract,
    file_sha256,
)
from melange2.sca import analyze
from melange2.sca.pkgconfig import PcParseError, parse_pc

_log = logging.getLogger(__name__)

#: bump when the conversion of a tree changes (invalidates every cached data stream)
CONVERTER_VERSION = "4"
#: gzip level of converted data streams: they are environment layers, made once
COMPRESS_LEVEL = 6


class ConversionError(FarmProcessError):
    """A Debian package could not be converted to an APK."""

    code = "conversion_error"


@dataclass(frozen=True, kw_only=True)
class ApkSpec:
    """One APK of the toolchain repository, by its Wolfi name."""

    name: str
    #: the Debian packages whose files it holds (empty: a meta package)
    debs: tuple[str, ...]
    #: dependencies besides Debian's (APK names)
    depends: tuple[str, ...] = ()
    #: names it provides besides its own, at its version (``python3``)
    provides: tuple[str, ...] = ()
    description: str = ""
    version: str = ""  #: meta packages only


def _spec(name: str, *debs: str, **kw: object) -> ApkSpec:
    return ApkSpec(name=name, debs=debs or (name,), **kw)  # type: ignore[arg-type]


#: the APKs asked for, by Wolfi name; every other package of the closure keeps its
#: Debian name
PACKAGES: tuple[ApkSpec, ...] = (
    ApkSpec(
        name="build-base",
        debs=(),
        depends=("binutils", "gcc", "g++", "make", "glibc-dev", "pkgconf"),
        description="Meta package: a C and C++ toolchain (gcc, g++, binutils, make, glibc-dev, "
        "pkgconf)",
        version="1",
    ),
    _spec("gcc"),
    _spec("g++"),
    _spec("binutils"),
    _spec("make"),
    _spec("glibc", "libc6"),
    _spec("glibc-dev", "libc6-dev"),
    _spec("pkgconf"),
    _spec("autoconf"),
    _spec("automake"),
    _spec("libtool", "libtool", depends=("libtool-bin",)),
    _spec("libtool-bin"),
    _spec("cmake"),
    _spec("meson"),
    _spec("samurai", "ninja-build", provides=("ninja",)),
    _spec("bash"),
    _spec("coreutils"),
    _spec("grep"),
    _spec("sed"),
    _spec("gawk"),
    _spec("diffutils"),
    _spec("findutils"),
    _spec("patch"),
    _spec("tar"),
    _spec("gzip"),
    _spec("xz", "xz-utils"),
    _spec("bzip2"),
    _spec("wget"),
    _spec("ca-certificates-bundle", "ca-certificates"),
    _spec("perl"),
    _spec("python-3.11", "python3.11", "python3", "python3-minimal", provides=("python3",)),
    _spec("zlib", "zlib1g"),
    _spec("zlib-dev", "zlib1g-dev"),
    _spec("pax-utils", provides=("scanelf",)),
    # Debian's dynamically linked busybox (a shell that runs what PATH finds, unlike the
    # static build's, which prefers its own applets), with a link per applet
    _spec("busybox"),
)

#: what aarch64 gets: the C toolchain and what the autoconf, fetch and strip pipelines
#: need (x86_64 gets all of :data:`PACKAGES`)
C_TOOLCHAIN: tuple[str, ...] = (
    "build-base",
    "gcc",
    "g++",
    "binutils",
    "make",
    "glibc",
    "glibc-dev",
    "pkgconf",
    "autoconf",
    "automake",
    "libtool",
    "libtool-bin",
    "bash",
    "coreutils",
    "grep",
    "sed",
    "gawk",
    "diffutils",
    "findutils",
    "patch",
    "tar",
    "gzip",
    "xz",
    "bzip2",
    "wget",
    "ca-certificates-bundle",
    "perl",
    "zlib",
    "zlib-dev",
    "pax-utils",
    "busybox",
    # what pax-utils' lddtree pulls in: named as on x86_64
    "python-3.11",
)

#: Debian packages that serve dpkg itself (its database, configuration questions, the
#: usr-merge conversion, init systems): not packaged, dependencies on them dropped
IGNORED: frozenset[str] = frozenset(
    {
        "dpkg",
        "debconf",
        "debconf-2.0",
        "cdebconf",
        "usrmerge",
        "usr-is-merged",
        "init-system-helpers",
        "base-files",
        "install-info",
        "ucf",
        "adduser",
        "lsb-base",
        "sysvinit-utils",
        "systemd",
        "systemd-sysv",
        "libsystemd0",
        "procps",
        "libproc2-0",
    }
)


@dataclass(frozen=True, kw_only=True)
class Alternative:
    """One ``update-alternatives --install LINK NAME PATH PRIORITY`` of a postinst."""

    name: str
    link: str
    path: str
    priority: int
    slaves: tuple[tuple[str, str], ...] = ()  #: (link, path)


_UA_TOKENS = re.compile(r"update-alternatives\b")


def parse_alternatives(postinst: str) -> list[Alternative]:
    """The alternatives a postinst installs with literal absolute paths (``$var`` or
    ``$(...)`` ones are skipped): what :func:`convert` turns into symlinks."""
    joined = re.sub(r"\\\n", " ", postinst)
    found = []
    for line in joined.splitlines():
        if not _UA_TOKENS.search(line) or "--install" not in line:
            continue
        try:
            tokens = shlex.split(line[_UA_TOKENS.search(line).start() :], comments=True)  # type: ignore[union-attr]
        except ValueError:
            continue
        i = 0
        current: Alternative | None = None
        slaves: list[tuple[str, str]] = []
        while i < len(tokens):
            tok = tokens[i]
            if tok == "--install" and i + 4 < len(tokens) + 0 and len(tokens[i + 1 : i + 5]) == 4:
                link, name, path, prio = tokens[i + 1 : i + 5]
                if _literal(link) and _literal(path) and prio.isdigit():
                    current = Alternative(name=name, link=link, path=path, priority=int(prio))
                i += 5
                continue
            if tok == "--slave" and len(tokens[i + 1 : i + 4]) == 3:
                link, _name, path = tokens[i + 1 : i + 4]
                if _literal(link) and _literal(path):
                    slaves.append((link, path))
                i += 4
                continue
            i += 1
        if current is not None:
            found.append(
                Alternative(
                    name=current.name,
                    link=current.link,
                    path=current.path,
                    priority=current.priority,
                    slaves=tuple(slaves),
                )
            )
    return found


def _literal(path: str) -> bool:
    return path.startswith("/") and "$" not in path and "`" not in path


# --- the plan: which APKs, from which .debs, depending on what -----------------------------


@dataclass(frozen=True, kw_only=True)
class PlannedApk:
    """An APK to make: its metadata (without what the data decides) and its sources."""

    info: PackageInfo
    debs: tuple[DebRecord, ...]
    #: symlinks to add (alternatives): link path -> target
    links: tuple[tuple[str, str], ...] = ()


def plan_packages(
    specs: Sequence[ApkSpec],
    records: Sequence[DebRecord],
    apk_arch: str,
    alternatives: Mapping[str, Sequence[Alternative]] | None = None,
    applets: Sequence[str] = (),
) -> list[PlannedApk]:
    """Group the closure's records into APKs and map their dependencies; ``applets``
    are busybox's (``bin/sh``, ``usr/bin/awk``...), linked and provided by ``busybox``."""
    alternatives = alternatives or {}
    by_name = {r.name: r for r in records}
    owner: dict[str, str] = {}  # deb name -> APK name
    members: dict[str, tuple[ApkSpec, list[DebRecord]]] = {}
    for spec in specs:
        recs = [by_name[d] for d in spec.debs if d in by_name]
        if spec.debs and not recs:
            raise ConversionError(f"{spec.name}: none of {', '.join(spec.debs)} was resolved")
        members[spec.name] = (spec, recs)
        for r in recs:
            owner[r.name] = spec.name
    for r in records:
        if r.name not in owner:
            if r.name in members:
                raise ConversionError(
                    f"Debian package {r.name} clashes with the APK name {r.name} of "
                    f"{', '.join(members[r.name][0].debs)}"
                )
            owner[r.name] = r.name
            members[r.name] = (ApkSpec(name=r.name, debs=(r.name,)), [r])
    providers: dict[str, str] = {}
    for r in records:
        for virtual in r.provides:
            providers.setdefault(virtual, r.name)

    def target(rel: DebRelation) -> str | None:
        name = rel.name.split(":", 1)[0]
        if name in by_name:
            return name
        return providers.get(name)

    versions = {name: _apk_version_of(spec, recs) for name, (spec, recs) in members.items()}

    # alternatives: the highest priority of each name wins, in the package that offers it
    winners: dict[str, tuple[str, Alternative]] = {}
    for deb_name, alts in sorted(alternatives.items()):
        if deb_name not in owner:
            continue
        for alt in alts:
            best = winners.get(alt.name)
            if best is None or alt.priority > best[1].priority:
                winners[alt.name] = (owner[deb_name], alt)
    links: dict[str, list[tuple[str, str]]] = {}
    for apk_name, alt in winners.values():
        links.setdefault(apk_name, []).append((alt.link, alt.path))
        links[apk_name].extend(alt.slaves)

    planned = []
    for name, (spec, recs) in members.items():
        if not recs and spec.debs:
            continue
        depends: list[str] = []
        member_names = {r.name for r in recs}
        for r in recs:
            for group in r.depends:
                chosen = next((t for alt in group if (t := target(alt)) is not None), None)
                if chosen is None:
                    if not any(alt.name.split(":", 1)[0] in IGNORED for alt in group):
                        _log.info("%s: no package of the set satisfies %s", r.name, group)
                    continue
                if chosen in member_names or chosen in IGNORED:
                    continue
                dep = owner[chosen]
                rel = next(a for a in group if target(a) == chosen)
                if rel.op == "=" and rel.name.split(":", 1)[0] == chosen:
                    version, epoch = versions[dep]
                    dep = f"{dep}={version}-r{epoch}"
                if owner[chosen] == name:
                    continue
                # one entry per package: an exact version wins over none
                same = [d for d in depends if d.split("=", 1)[0] == owner[chosen]]
                if not same:
                    depends.append(dep)
                elif "=" in dep and "=" not in same[0]:
                    depends[depends.index(same[0])] = dep
        for extra in spec.depends:
            if extra not in depends:
                depends.append(extra)
        version, epoch = versions[name]
        first = recs[0] if recs else None
        provides = [f"{p}={version}-r{epoch}" for p in spec.provides]
        own_links = list(links.get(name, []))
        if name == "busybox" and applets:
            provides = [
                "/bin/sh",
                *sorted({f"cmd:{Path(a).name}={version}-r{epoch}" for a in applets}),
            ]
            own_links += [(f"/{a}", "/bin/busybox") for a in applets if a != "bin/busybox"]
        info = PackageInfo(
            name=name,
            version=version,
            epoch=epoch,
            arch=apk_arch,
            description=spec.description
            or (f"{first.description} (Debian {first.version})" if first else name),
            url=first.homepage if first else "",
            license="NOASSERTION",
            origin=first.source if first else name,
            packager="melange2 (converted from Debian)",
            depends=tuple(depends),
            provides=tuple(provides),
        )
        planned.append(PlannedApk(info=info, debs=tuple(recs), links=tuple(sorted(own_links))))
    return sorted(planned, key=lambda p: p.info.name)


def _apk_version_of(spec: ApkSpec, recs: Sequence[DebRecord]) -> tuple[str, int]:
    """Debian's upstream version, always ``-r0``: a package the farm builds at the
    same version then takes precedence (its repositories are listed first), and
    Debian's full version is in the description."""
    if spec.version or not recs:
        return spec.version or "1", 0
    return apk_version(recs[0].version)[0], 0


def closure(records: Sequence[DebRecord], roots: Iterable[str]) -> list[DebRecord]:
    """The records reachable from ``roots`` through dependencies, leaving out
    :data:`IGNORED` (apt includes what dpkg's own packages need)."""
    by_name = {r.name: r for r in records}
    providers: dict[str, str] = {}
    for r in records:
        for virtual in r.provides:
            providers.setdefault(virtual, r.name)
    seen: set[str] = set()
    queue = [n for n in roots if n in by_name]
    while queue:
        name = queue.pop()
        if name in seen or name in IGNORED:
            continue
        seen.add(name)
        for group in by_name[name].depends:
            for alt in group:
                n = alt.name.split(":", 1)[0]
                n = n if n in by_name else providers.get(n, "")
                if n:
                    if n not in IGNORED:
                        queue.append(n)
                    break
    return [r for r in records if r.name in seen]


# --- converting: .deb files -> data streams (cached) ----------------------------------------


@dataclass(frozen=True, kw_only=True)
class Converted:
    """A planned APK's data stream, made (or found in the cache)."""

    planned: PlannedApk
    data_path: Path
    data: DataStream
    files: tuple[str, ...]  #: paths in the package, relative (``bin/ls``)
    build_date: int
    sca_provides: tuple[str, ...] = ()
    sca_depends: tuple[str, ...] = ()
    cached: bool = False


class ConversionCache:
    """Converted data streams and what was learnt from each tree, by conversion key
    (the ``.deb`` files' sha256 and what the conversion adds). ``root`` survives farms
    (``~/.cache/melange2/toolchain`` by default: every clone on a machine shares it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.debs = root / "debs"

    def _paths(self, key: str) -> tuple[Path, Path]:
        d = self.root / "apks" / key[:2]
        return d / f"{key}.data.gz", d / f"{key}.json"

    def get(self, key: str) -> tuple[Path, dict[str, object]] | None:
        data, meta = self._paths(key)
        if data.is_file() and meta.is_file():
            with contextlib.suppress(ValueError, OSError):
                doc = json.loads(meta.read_text())
                if isinstance(doc, dict) and data.stat().st_size == doc.get("data_size"):
                    return data, doc
        return None

    def put(self, key: str, data_file: Path, doc: dict[str, object]) -> Path:
        data, meta = self._paths(key)
        data.parent.mkdir(parents=True, exist_ok=True)
        os.replace(data_file, data)
        tmp = meta.with_suffix(".json.part")
        tmp.write_text(json.dumps({**doc, "data_size": data.stat().st_size}))
        os.replace(tmp, meta)
        return data


#: the library directories of Debian's multiarch layout, as libc6's ld.so.conf.d lists them
_MULTIARCH = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}


def automatic_relations(tree: Path, info: PackageInfo) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The SCA's automatic ``(provides, depends)`` of a package tree (``so:``, ``cmd:``,
    ``pc:``), as melange generates them for the packages it builds
    (:func:`melange2.sca.analyze`, merged as melange merges them): the one place
    converted packages get them.

    Debian's multiarch layout is what melange's SCA does not know, so it is told two
    things: libraries in ``/lib/<triplet>`` and ``/usr/lib/<triplet>`` lie in a library
    directory (what libc6's ``ld.so.conf.d`` entry says: an ``etc/ld.so.conf.d`` file
    among the build's trees, as a package of melange's would ship it), and the
    ``.pc`` files directly in ``/usr/lib/<triplet>/pkgconfig`` (pkgconf's default path
    there) provide ``pc:<name>`` and depend on their ``Requires`` as those in
    ``/usr/lib/pkgconfig`` do, instead of counting as vendored."""
    triplet = _MULTIARCH.get(info.arch, f"{info.arch}-linux-gnu")
    with tempfile.TemporaryDirectory(prefix="ldconf-") as tmp:
        conf = Path(tmp) / "etc" / "ld.so.conf.d" / f"{triplet}.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text(f"/lib/{triplet}\n/usr/lib/{triplet}\n")
        found = analyze(
            tree, name=info.name, version=info.pkgver, arch=info.arch, siblings=[tree, Path(tmp)]
        )
    pc_provides, pc_depends = _multiarch_pkgconfig(tree, triplet, info.pkgver, found.vendored)
    if pc_provides:
        found = dataclasses.replace(
            found,
            provides=tuple(sorted({*found.provides, *pc_provides})),
            depends=tuple(sorted({*found.depends, *pc_depends})),
            vendored=tuple(v for v in found.vendored if v not in pc_provides),
        )
    merged = found.merged()
    return tuple(merged.provides), tuple(merged.depends)


def _multiarch_pkgconfig(
    tree: Path, triplet: str, version: str, vendored: Sequence[str]
) -> tuple[list[str], list[str]]:
    """``pc:`` provides and depends of the ``.pc`` files directly in
    ``usr/lib/<triplet>/pkgconfig`` that the SCA found (and called vendored)."""
    provides: list[str] = []
    depends: list[str] = []
    directory = tree / "usr" / "lib" / triplet / "pkgconfig"
    if not directory.is_dir():
        return provides, depends
    for pc_file in sorted(directory.glob("*.pc")):
        provide = f"pc:{pc_file.stem}={version}"
        if provide not in vendored or pc_file.is_symlink() or not pc_file.is_file():
            continue
        try:
            pc = parse_pc(pc_file.read_bytes().decode("utf-8", "surrogateescape"))
        except (OSError, PcParseError):  # the SCA read it: not expected
            continue
        provides.append(provide)
        depends += [
            f"pc:{dep.identifier}"
            for dep in (*pc.requires, *pc.requires_private, *pc.requires_internal)
        ]
    return provides, depends


def conversion_key(planned: PlannedApk, deb_digests: Sequence[str]) -> str:
    doc = {
        "v": CONVERTER_VERSION,
        "level": COMPRESS_LEVEL,
        "arch": planned.info.arch,
        "debs": list(deb_digests),
        "links": [list(x) for x in planned.links],
        "emulate": _emulations(planned),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _emulations(planned: PlannedApk) -> list[str]:
    return ["ca-bundle"] if any(r.name == "ca-certificates" for r in planned.debs) else []


def convert(
    planned: PlannedApk, debs: Mapping[str, Path], cache: ConversionCache, work: Path
) -> Converted:
    """The data stream of ``planned``: from the cache, or made from its ``.deb`` files."""
    digests = [file_sha256(debs[r.name]) for r in planned.debs]
    for r, digest in zip(planned.debs, digests, strict=True):
        if r.sha256 and digest != r.sha256:
            raise ConversionError(
                f"{debs[r.name].name}: sha256 {digest} is not the archive's {r.sha256}"
            )
    key = conversion_key(planned, digests)
    hit = cache.get(key)
    if hit is not None:
        return _from_doc(planned, hit[0], hit[1], cached=True)
    with tempfile.TemporaryDirectory(prefix="convert-", dir=work) as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        for r in planned.debs:
            extract(debs[r.name], tree)
        # when Debian built it (reproducible): what is added below is clamped to it
        build_date = _newest_mtime(tree)
        _emulate(planned, tree)
        for link, target in planned.links:
            _add_link(tree, link, target)
        provides, depends = automatic_relations(tree, planned.info)
        files = tuple(_files(tree))
        out = Path(tmp) / "data.gz"
        with out.open("wb") as f:
            data = write_data(
                tree,
                f,
                source_date_epoch=build_date,
                preserve_owners=False,
                compresslevel=COMPRESS_LEVEL,
            )
        doc: dict[str, object] = {
            "installed_size": data.installed_size,
            "datahash": data.datahash,
            "files": list(files),
            "build_date": build_date,
            "sca_provides": list(provides),
            "sca_depends": list(depends),
        }
        path = cache.put(key, out, doc)
    return _from_doc(planned, path, doc, cached=False)


def _from_doc(
    planned: PlannedApk, path: Path, doc: Mapping[str, object], cached: bool
) -> Converted:
    def strs(key: str) -> tuple[str, ...]:
        value = doc.get(key) or []
        return tuple(str(x) for x in value) if isinstance(value, list) else ()

    def num(key: str) -> int:
        value = doc.get(key, 0)
        return int(value) if isinstance(value, int | str) else 0

    return Converted(
        planned=planned,
        data_path=path,
        data=DataStream(installed_size=num("installed_size"), datahash=str(doc["datahash"])),
        files=strs("files"),
        build_date=num("build_date"),
        sca_provides=strs("sca_provides"),
        sca_depends=strs("sca_depends"),
        cached=cached,
    )


def _emulate(planned: PlannedApk, tree: Path) -> None:
    if "ca-bundle" in _emulations(planned):
        # update-ca-certificates: every certificate Debian ships, in one bundle
        certs = sorted((tree / "usr/share/ca-certificates").rglob("*.crt"))
        bundle = tree / "etc/ssl/certs/ca-certificates.crt"
        bundle.parent.mkdir(parents=True, exist_ok=True)
        with bundle.open("wb") as out:
            for cert in certs:
                data = cert.read_bytes()
                out.write(data if data.endswith(b"\n") else data + b"\n")
        os.utime(bundle, (0, max((c.stat().st_mtime for c in certs), default=0)))


def _add_link(tree: Path, link: str, target: str) -> None:
    """An alternative as a plain symlink, when its target is in this package."""
    if not (tree / target.lstrip("/")).exists() and not (tree / target.lstrip("/")).is_symlink():
        return
    path = tree / link.lstrip("/")
    if path.exists() or path.is_symlink():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)
    mtime = (tree / target.lstrip("/")).lstat().st_mtime
    os.utime(path, (mtime, mtime), follow_symlinks=False)


def _newest_mtime(tree: Path) -> int:
    """The newest mtime of the files and links (directories made while extracting
    carry the time of extraction)."""
    newest = 0
    for root, dirs, files in os.walk(tree):
        for name in (*dirs, *files):
            path = os.path.join(root, name)
            if name in dirs and not os.path.islink(path):
                continue
            newest = max(newest, int(os.lstat(path).st_mtime))
    return newest


def _files(tree: Path) -> Iterable[str]:
    for root, dirs, files in os.walk(tree):
        for name in files:
            yield os.path.relpath(os.path.join(root, name), tree)
        for name in dirs:
            p = os.path.join(root, name)
            if os.path.islink(p):
                yield os.path.relpath(p, tree)


def convert_all(
    planned: Sequence[PlannedApk],
    debs: Mapping[str, Path],
    cache: ConversionCache,
    apk_arch: str,
    *,
    workers: int | None = None,
) -> list[Converted]:
    """:func:`convert` every planned package (in parallel); when any fails, one
    :class:`ConversionError` naming each failed ``.deb`` and why."""
    work = cache.root / "work"
    work.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []

    def one(p: PlannedApk) -> Converted | None:
        try:
            return convert(p, debs, cache, work)
        except (FarmProcessError, OSError, ValueError) as exc:
            names = ", ".join(debs[r.name].name for r in p.debs) or p.info.name
            errors.append(f"{names}: {exc}")
            return None

    with ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 2)) as pool:
        results = [r for r in pool.map(one, planned) if r is not None]
    if errors:
        raise ConversionError(
            f"{len(errors)} Debian package(s) failed to convert for {apk_arch}; "
            "the repository was left as it was:\n  " + "\n  ".join(sorted(errors))
        )
    return results


# --- the whole: resolve, download, convert, sign ----------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ToolchainApk:
    """A converted APK ready to publish: metadata final, data stream on disk."""

    info: PackageInfo
    data_path: Path
    files: tuple[str, ...]
    cached: bool


@dataclass(frozen=True, kw_only=True)
class Toolchain:
    """The converted packages of one architecture and what it took."""

    arch: str
    packages: tuple[ToolchainApk, ...]
    converted: int  #: made now (the rest came from the cache)
    seconds: float
    dropped_depends: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def roots_for(deb_arch: str) -> tuple[list[ApkSpec], list[str]]:
    wanted = (
        PACKAGES if deb_arch == "amd64" else tuple(s for s in PACKAGES if s.name in C_TOOLCHAIN)
    )
    roots = sorted({d for s in wanted for d in s.debs})
    return list(wanted), roots


def make_toolchain(
    deb_arch: str,
    cache: ConversionCache,
    *,
    workers: int | None = None,
) -> Toolchain:
    """Resolve, download and convert the toolchain for ``deb_arch`` (``amd64``,
    ``arm64``); nothing is signed or published yet (:func:`publish`)."""
    start = time.monotonic()
    apk_arch = DEB_ARCHES[deb_arch]
    specs, roots = roots_for(deb_arch)
    archive = AptArchive(deb_arch)
    try:
        records = _resolved_records(archive, roots, cache)
        records = closure(records, roots)
        debs = archive.download(records, cache.debs / deb_arch)
    finally:
        archive.close()
    alternatives = {r.name: _alternatives(debs[r.name], cache) for r in records}
    applet_paths = busybox_applets(cache)
    planned = plan_packages(specs, records, apk_arch, alternatives, applet_paths)
    results = convert_all(planned, debs, cache, apk_arch, workers=workers)
    applets = set(applet_paths)
    others = [c for c in results if c.planned.info.name != "busybox"]
    real_cmds = {
        f"cmd:{Path(f).name}"
        for c in others
        for f in c.files
        if Path(f).parent.as_posix() in ("bin", "sbin", "usr/bin", "usr/sbin")
    }
    real_cmds |= {
        p.split("=", 1)[0] for c in others for p in c.sca_provides if p.startswith("cmd:")
    }
    provided = {p.split("=", 1)[0] for c in results for p in c.sca_provides} | {
        c.planned.info.name for c in results
    }
    packages = []
    dropped: dict[str, tuple[str, ...]] = {}
    for c in results:
        info = c.planned.info
        sca_depends = [d for d in c.sca_depends if d.split("=", 1)[0].split(">", 1)[0] in provided]
        missing = tuple(d for d in c.sca_depends if d not in sca_depends)
        if missing:
            dropped[info.name] = missing
        replaces = ("busybox",) if info.name != "busybox" and applets.intersection(c.files) else ()
        if info.name == "busybox":
            # a versioned provide is owned: busybox's cmd: names give way to real tools
            info = info.evolve(
                provides=tuple(p for p in info.provides if p.split("=", 1)[0] not in real_cmds)
            )
        info = info.evolve(
            depends=tuple(dict.fromkeys([*info.depends, *sca_depends])),
            provides=tuple(dict.fromkeys([*info.provides, *c.sca_provides])),
            replaces=replaces,
        )
        final = finish_info(info, c.data, source_date_epoch=c.build_date)
        packages.append(
            ToolchainApk(info=final, data_path=c.data_path, files=c.files, cached=c.cached)
        )
    return Toolchain(
        arch=apk_arch,
        packages=tuple(packages),
        converted=sum(1 for c in results if not c.cached),
        seconds=time.monotonic() - start,
        dropped_depends=dropped,
    )


def busybox_applets(cache: ConversionCache) -> list[str]:
    """Every applet path of Debian's (dynamic) busybox, ``bin/sh``, ``usr/bin/awk``...:
    asked of the amd64 build, which this host runs (its arm64 build has the same
    configuration); kept in the cache."""
    path = cache.root / "busybox-applets.json"
    if path.is_file():
        with contextlib.suppress(ValueError):
            found = json.loads(path.read_text())
            if isinstance(found, list) and found:
                return [str(x) for x in found]
    archive = AptArchive("amd64")
    try:
        records = archive.records((n, v) for n, v in archive.resolve(["busybox"]) if n == "busybox")
        deb = archive.download(records, cache.debs / "amd64")["busybox"]
    finally:
        archive.close()
    with tempfile.TemporaryDirectory(prefix="busybox-", dir=cache.root) as tmp:
        extract(deb, Path(tmp))
        try:
            out = subprocess.run(
                [str(Path(tmp) / "bin" / "busybox"), "--list-full"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            raise ConversionError(f"{deb.name}: cannot list its applets: {exc}") from exc
    found = sorted(line.strip() for line in out.splitlines() if line.strip())
    path.write_text(json.dumps(found))
    return found


def _resolved_records(
    archive: AptArchive, roots: Sequence[str], cache: ConversionCache
) -> list[DebRecord]:
    """apt's resolution, remembered while apt's package lists stay the same (resolving
    takes apt several seconds)."""
    lists = sorted(Path("/var/lib/apt/lists").glob("*_Packages*"))
    stamp = hashlib.sha256(
        json.dumps(
            {
                "roots": list(roots),
                "arch": archive.deb_arch,
                "lists": [(p.name, p.stat().st_size, p.stat().st_mtime) for p in lists],
                "v": CONVERTER_VERSION,
            }
        ).encode()
    ).hexdigest()
    path = cache.root / "resolved" / f"{archive.deb_arch}-{stamp[:32]}.json"
    if path.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return [_record_from_json(x) for x in json.loads(path.read_text())]
    records = archive.records(archive.resolve(roots))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps([_record_to_json(r) for r in records]))
    os.replace(tmp, path)
    return records


def _record_to_json(r: DebRecord) -> dict[str, object]:
    return {
        "name": r.name,
        "version": r.version,
        "arch": r.arch,
        "source": r.source,
        "depends": [[[a.name, a.op, a.version] for a in g] for g in r.depends],
        "provides": list(r.provides),
        "description": r.description,
        "homepage": r.homepage,
        "sha256": r.sha256,
        "size": r.size,
    }


def _record_from_json(d: dict[str, object]) -> DebRecord:
    groups = d["depends"]
    assert isinstance(groups, list)
    return DebRecord(
        name=str(d["name"]),
        version=str(d["version"]),
        arch=str(d["arch"]),
        source=str(d["source"]),
        depends=tuple(
            tuple(DebRelation(name=a[0], op=a[1], version=a[2]) for a in g) for g in groups
        ),
        provides=tuple(str(x) for x in d["provides"]),  # type: ignore[attr-defined]
        description=str(d["description"]),
        homepage=str(d["homepage"]),
        sha256=str(d["sha256"]),
        size=int(d["size"]),  # type: ignore[call-overload]
    )


def _alternatives(deb: Path, cache: ConversionCache) -> list[Alternative]:
    """The alternatives a .deb's postinst installs (cached by the .deb's digest)."""
    digest = file_sha256(deb)
    path = cache.root / "alternatives" / f"{digest}.json"
    if path.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return [
                Alternative(
                    name=a["name"],
                    link=a["link"],
                    path=a["path"],
                    priority=a["priority"],
                    slaves=tuple(tuple(s) for s in a["slaves"]),
                )
                for a in json.loads(path.read_text())
            ]
    try:
        postinst = control_files(deb).get("postinst", b"").decode(errors="replace")
    except FarmProcessError as exc:
        raise ConversionError(str(exc)) from exc
    found = parse_alternatives(postinst)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            [
                {
                    "name": a.name,
                    "link": a.link,
                    "path": a.path,
                    "priority": a.priority,
                    "slaves": [list(s) for s in a.slaves],
                }
                for a in found
            ]
        )
    )
    return found


def publish(packages: Sequence[ToolchainApk], signer: Signer, arch_dir: Path) -> list[IndexRecord]:
    """Write each package signed into ``arch_dir`` (a file already there with the same
    bytes is left alone); return their index records."""
    arch_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for pkg in packages:
        control = control_stream(pkg.info, source_date_epoch=pkg.info.build_date)
        head = signature_stream(signer, control, mtime=pkg.info.build_date) + control
        size = len(head) + pkg.data_path.stat().st_size
        target = arch_dir / pkg.info.filename
        if not _same_head(target, head, size):
            tmp = target.with_name(f".{target.name}.part")
            with tmp.open("wb") as out, pkg.data_path.open("rb") as data:
                out.write(head)
                shutil.copyfileobj(data, out, 1 << 20)
            os.replace(tmp, target)
        records.append(
            IndexRecord.from_package(pkg.info, checksum=hashlib.sha1(control).digest(), size=size)
        )
    return records


def _same_head(target: Path, head: bytes, size: int) -> bool:
    try:
        if target.stat().st_size != size:
            return False
        with target.open("rb") as f:
            return f.read(len(head)) == head
    except OSError:
        return False


def default_cache_dir() -> Path:
    """Where conversions are kept: ``$MELANGE2_TOOLCHAIN_CACHE``, else
    ``${XDG_CACHE_HOME:-~/.cache}/melange2/toolchain``."""
    env = os.environ.get("MELANGE2_TOOLCHAIN_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return base / "melange2" / "toolchain"
