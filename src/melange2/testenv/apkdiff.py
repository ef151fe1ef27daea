"""Compare APKs as their users see them: the differential suite's judge.

Two builds of one config (upstream melange's and ours) are compared package by package
on what apk, apko and a person unpacking the package act on, never on bytes that only
the encoders choose (gzip streams, tar header layout)::

    melange = view_apk(Path("oracle/x86_64/hello-1.2.0-r0.apk"))
    ours = view_apk(Path("ours/x86_64/hello-1.2.0-r0.apk"))
    for difference in compare_packages(melange, ours, noise=NOISE):
        print(difference)   # hello: .PKGINFO depend: melange ['busybox'], ours []

What is compared:

- ``.PKGINFO``: every ``key = value`` line, per key (repeated keys as lists), and the
  order of the keys; ``#`` comment lines too (``# vendored = ...``);
- the signature entries' names (algorithm and key name);
- every other control entry (scriptlets, ``.melange.yaml``) by content; when
  ``.melange.yaml`` differs, YAML-parsed, field by field;
- the data tree: path, type, mode, owner (ids and names), link target, size, content
  (sha256), mtime and the PAX records apk reads (checksums, xattrs); an SPDX SBOM under
  ``var/lib/db/sbom/`` that differs is compared as JSON, field by field;
- for ``APKINDEX.tar.gz``: its signature names and each record's fields.

Each :class:`Difference` names the package, *where* (``.PKGINFO depend``, ``data
usr/bin/hello mode``, ``sbom $.packages[1].name``) and both values. A :class:`Noise`
entry excuses differences whose *where* matches its pattern (``*`` wildcards), with the
reason it is not a difference a user could see.

The reader here is deliberately independent of :mod:`melange2.apk.reader` (plain
``zlib`` and ``tarfile``): the judge must not share the code it judges.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import tarfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

__all__ = [
    "ApkView",
    "Difference",
    "EntryView",
    "IndexView",
    "Noise",
    "compare_indexes",
    "compare_packages",
    "compare_trees",
    "format_differences",
    "view_apk",
    "view_index",
]

#: PAX records that only encode the tar header itself (no meaning of their own to apk).
_ENCODING_PAX = frozenset(
    {"path", "linkpath", "size", "mtime", "atime", "ctime", "uid", "gid", "uname", "gname"}
)
_SBOM_PREFIX = "var/lib/db/sbom/"
_ABSENT = "<absent>"


@dataclass(frozen=True, kw_only=True)
class Difference:
    """One thing a user could see differ between melange's package and ours."""

    package: str
    #: what differs: ``.PKGINFO depend``, ``data usr/bin/hello mode``, ``sbom $.name`` ...
    where: str
    melange: str
    ours: str

    def __str__(self) -> str:
        return f"{self.package}: {self.where}: melange {self.melange}, ours {self.ours}"


@dataclass(frozen=True, kw_only=True)
class Noise:
    """A difference allowed because it is build-time noise, with the reason."""

    #: pattern over :attr:`Difference.where`: ``*`` matches anything, every other
    #: character itself (so ``$.packages[2]`` needs no escaping)
    where: str
    reason: str
    #: only for these packages (file names or package names); empty: every package
    packages: tuple[str, ...] = ()

    def excuses(self, difference: Difference) -> bool:
        if self.packages and difference.package not in self.packages:
            return False
        pattern = ".*".join(re.escape(part) for part in self.where.split("*"))
        return re.fullmatch(pattern, difference.where, flags=re.DOTALL) is not None


@dataclass(frozen=True, kw_only=True)
class EntryView:
    """One data-stream entry as apk extracts it."""

    kind: str
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    link: str
    size: int
    mtime: int
    #: hex sha256 of a regular file's content ("" for other kinds)
    sha256: str
    #: PAX records apk reads (checksums, ``SCHILY.xattr.*``), sorted
    pax: tuple[tuple[str, str], ...]
    content: bytes | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, kw_only=True)
class ApkView:
    """An APK v2 file as its user sees it."""

    filename: str
    #: ``(key, value)`` lines of ``.PKGINFO``, in file order (comments excluded)
    pkginfo: tuple[tuple[str, str], ...]
    #: ``#`` comment lines of ``.PKGINFO`` after its first line (the generator banner)
    pkginfo_comments: tuple[str, ...]
    #: names of the signature entries
    signatures: tuple[str, ...]
    #: control entries other than ``.PKGINFO``, by name, in stream order
    control: Mapping[str, bytes]
    #: data entries by path (no trailing ``/``)
    data: Mapping[str, EntryView]

    @property
    def name(self) -> str:
        return self.field("pkgname") or self.filename

    def field(self, key: str) -> str:
        values = self.fields(key)
        return values[-1] if values else ""

    def fields(self, key: str) -> list[str]:
        return [v for k, v in self.pkginfo if k == key]


def _gzip_members(raw: bytes) -> list[bytes]:
    """The decompressed content of each gzip member of ``raw``, in order."""
    members: list[bytes] = []
    rest = raw
    while rest:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        content = inflater.decompress(rest)
        if not inflater.eof:
            raise ValueError("truncated gzip member")
        members.append(content)
        rest = inflater.unused_data
    return members


def _tar_entries(content: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:") as archive:
        for info in archive:
            data = None
            if info.isreg():
                extracted = archive.extractfile(info)
                assert extracted is not None
                data = extracted.read()
            entries.append((info, data))
    return entries


def _kind(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hardlink"
    return f"type {info.type!r}"


def _entry(info: tarfile.TarInfo, data: bytes | None) -> EntryView:
    return EntryView(
        kind=_kind(info),
        mode=stat.S_IMODE(info.mode),
        uid=info.uid,
        gid=info.gid,
        uname=info.uname,
        gname=info.gname,
        link=info.linkname,
        size=info.size if info.isreg() else 0,
        mtime=int(info.mtime),
        sha256=hashlib.sha256(data).hexdigest() if data is not None else "",
        pax=tuple(sorted((k, v) for k, v in info.pax_headers.items() if k not in _ENCODING_PAX)),
        content=data,
    )


def view_apk(path: Path) -> ApkView:
    """Read an APK v2 package (signed or not) into an :class:`ApkView`."""
    members = _gzip_members(path.read_bytes())
    if len(members) not in (2, 3):
        raise ValueError(f"{path.name}: {len(members)} gzip streams, expected 2 or 3")
    signatures: tuple[str, ...] = ()
    if len(members) == 3:
        signatures = tuple(info.name for info, _ in _tar_entries(members[0]))
    control_entries = _tar_entries(members[-2])
    pkginfo_raw = b""
    control: dict[str, bytes] = {}
    for info, data in control_entries:
        if info.name == ".PKGINFO":
            pkginfo_raw = data or b""
        else:
            control[info.name] = data or b""
    lines: list[tuple[str, str]] = []
    comments: list[str] = []
    for n, line in enumerate(pkginfo_raw.decode().split("\n")):
        if line.startswith("#"):
            if n:
                comments.append(line)
            continue
        key, sep, value = line.partition(" = ")
        if sep:
            lines.append((key, value))
    data_entries = {
        info.name.rstrip("/"): _entry(info, data) for info, data in _tar_entries(members[-1])
    }
    return ApkView(
        filename=path.name,
        pkginfo=tuple(lines),
        pkginfo_comments=tuple(comments),
        signatures=signatures,
        control=control,
        data=data_entries,
    )


def _show(value: object) -> str:
    if value is None:
        return _ABSENT
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return repr(value)


def _structural(prefix: str, a: Any, b: Any, out: list[tuple[str, Any, Any]]) -> None:
    """Field paths where two parsed JSON/YAML documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            sub = f"{prefix}.{key}"
            if key not in a:
                out.append((sub, None, b[key]))
            elif key not in b:
                out.append((sub, a[key], None))
            else:
                _structural(sub, a[key], b[key], out)
        return
    if isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            sub = f"{prefix}[{i}]"
            if i >= len(a):
                out.append((sub, None, b[i]))
            elif i >= len(b):
                out.append((sub, a[i], None))
            else:
                _structural(sub, a[i], b[i], out)
        return
    if a != b or type(a) is not type(b):
        if (
            prefix.endswith(".runs")
            and isinstance(a, str)
            and isinstance(b, str)
            and _without_blanks(a) == _without_blanks(b)
        ):
            # a script re-printed by a shell formatter: same words, other spacing
            out.append((prefix + " (shell formatting)", a, b))
            return
        out.append((prefix, a, b))


def _without_blanks(script: str) -> str:
    """The script's words: blanks and ``;`` separators (which a printer turns into line
    breaks) removed."""
    return re.sub(r"[\s;]+", "", script)


def _first_line_difference(a: bytes, b: bytes) -> tuple[str, str, str]:
    la, lb = a.decode(errors="replace").split("\n"), b.decode(errors="replace").split("\n")
    for i in range(max(len(la), len(lb))):
        x = la[i] if i < len(la) else None
        y = lb[i] if i < len(lb) else None
        if x != y:
            return f"line {i + 1}", _show(x), _show(y)
    return "bytes", f"{len(a)} bytes", f"{len(b)} bytes"


def _document_differences(
    package: str, label: str, a: bytes, b: bytes, parse: str
) -> list[Difference]:
    """Differences between two serialised documents: by field, else by first line."""
    try:
        if parse == "json":
            pa, pb = json.loads(a), json.loads(b)
        else:
            yaml = YAML(typ="safe", pure=True)
            pa, pb = yaml.load(a), yaml.load(b)
    except Exception as exc:
        return [Difference(package=package, where=label, melange="parsed", ours=f"{exc}")]
    found: list[tuple[str, Any, Any]] = []
    _structural("$", pa, pb, found)
    if found:
        return [
            Difference(package=package, where=f"{label} {path}", melange=_show(x), ours=_show(y))
            for path, x, y in found
        ]
    where, x, y = _first_line_difference(a, b)
    return [Difference(package=package, where=f"{label} formatting {where}", melange=x, ours=y)]


def compare_packages(
    melange: ApkView, ours: ApkView, *, noise: Sequence[Noise] = ()
) -> list[Difference]:
    """Every difference between two views of the same package not excused by ``noise``."""
    pkg = melange.name
    found: list[Difference] = []

    def add(where: str, a: object, b: object) -> None:
        found.append(Difference(package=pkg, where=where, melange=_show(a), ours=_show(b)))

    # .PKGINFO, key by key
    keys = list(dict.fromkeys([k for k, _ in melange.pkginfo] + [k for k, _ in ours.pkginfo]))
    for key in keys:
        a, b = melange.fields(key), ours.fields(key)
        if key == "triggers":  # a space-separated list: melange leaves a trailing space
            a, b = [" ".join(v.split()) for v in a], [" ".join(v.split()) for v in b]
        if a != b:
            add(f".PKGINFO {key}", _one_or_list(a), _one_or_list(b))
    order_a = list(dict.fromkeys(k for k, _ in melange.pkginfo))
    order_b = list(dict.fromkeys(k for k, _ in ours.pkginfo))
    if order_a != order_b:
        add(".PKGINFO key order", " ".join(order_a), " ".join(order_b))
    if melange.pkginfo_comments != ours.pkginfo_comments:
        add(".PKGINFO comments", list(melange.pkginfo_comments), list(ours.pkginfo_comments))

    if melange.signatures != ours.signatures:
        add("signature", list(melange.signatures), list(ours.signatures))

    # control entries
    for name in dict.fromkeys([*melange.control, *ours.control]):
        a_ctl, b_ctl = melange.control.get(name), ours.control.get(name)
        if a_ctl is None or b_ctl is None:
            add(f"control {name}", _summary(a_ctl), _summary(b_ctl))
        elif a_ctl != b_ctl:
            if name == ".melange.yaml":
                found += _document_differences(pkg, f"control {name}", a_ctl, b_ctl, "yaml")
            else:
                where, x, y = _first_line_difference(a_ctl, b_ctl)
                add(f"control {name} {where}", x, y)
    if list(melange.control) != list(ours.control):
        add("control order", list(melange.control), list(ours.control))

    found += compare_trees(pkg, melange.data, ours.data)
    return [d for d in found if not any(n.excuses(d) for n in noise)]


def compare_trees(
    package: str, melange: Mapping[str, EntryView], ours: Mapping[str, EntryView]
) -> list[Difference]:
    """Differences between two data trees, path by path."""
    found: list[Difference] = []
    for path in sorted(set(melange) | set(ours)):
        a, b = melange.get(path), ours.get(path)
        if a is None or b is None:
            found.append(
                Difference(
                    package=package,
                    where=f"data {path}",
                    melange=_present(a),
                    ours=_present(b),
                )
            )
            continue
        sbom = path.startswith(_SBOM_PREFIX) and path.endswith(".spdx.json")
        for attr in ("kind", "mode", "uid", "gid", "uname", "gname", "link", "mtime", "pax"):
            x, y = getattr(a, attr), getattr(b, attr)
            if attr == "pax" and sbom:  # the checksum follows the content, compared below
                x = tuple(kv for kv in x if not kv[0].startswith("APK-TOOLS.checksum"))
                y = tuple(kv for kv in y if not kv[0].startswith("APK-TOOLS.checksum"))
            if x != y:
                shown_x = oct(x) if attr == "mode" else x
                shown_y = oct(y) if attr == "mode" else y
                found.append(
                    Difference(
                        package=package,
                        where=f"data {path} {attr}",
                        melange=_show(shown_x),
                        ours=_show(shown_y),
                    )
                )
        if a.sha256 != b.sha256:
            if sbom and a.content is not None and b.content is not None:
                found += _document_differences(
                    package, f"sbom {path}", a.content, b.content, "json"
                )
            else:
                found.append(
                    Difference(
                        package=package,
                        where=f"data {path} content",
                        melange=f"{a.size} bytes sha256:{a.sha256[:12]}",
                        ours=f"{b.size} bytes sha256:{b.sha256[:12]}",
                    )
                )
        elif a.size != b.size:
            found.append(
                Difference(
                    package=package,
                    where=f"data {path} size",
                    melange=str(a.size),
                    ours=str(b.size),
                )
            )
    return found


def _one_or_list(values: list[str]) -> str | list[str] | None:
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _summary(data: bytes | None) -> str | None:
    return None if data is None else f"{len(data)} bytes"


def _present(entry: EntryView | None) -> str:
    return _ABSENT if entry is None else entry.kind


@dataclass(frozen=True, kw_only=True)
class IndexView:
    """An ``APKINDEX.tar.gz``: signature names, entry names and records by package."""

    signatures: tuple[str, ...]
    entries: tuple[str, ...]
    #: package name -> ``(letter, value)`` lines of its record
    records: Mapping[str, tuple[tuple[str, str], ...]]


def view_index(path: Path) -> IndexView:
    members = _gzip_members(path.read_bytes())
    signatures: tuple[str, ...] = ()
    if len(members) == 2:
        signatures = tuple(info.name for info, _ in _tar_entries(members[0]))
    entries = _tar_entries(members[-1])
    text = next((data for info, data in entries if info.name == "APKINDEX"), b"") or b""
    records: dict[str, tuple[tuple[str, str], ...]] = {}
    for block in text.decode().split("\n\n"):
        lines = tuple((line[0], line[2:]) for line in block.split("\n") if len(line) >= 2)
        name = next((v for k, v in lines if k == "P"), "")
        if name:
            records[name] = lines
    return IndexView(
        signatures=signatures, entries=tuple(info.name for info, _ in entries), records=records
    )


def compare_indexes(
    melange: IndexView, ours: IndexView, *, noise: Sequence[Noise] = ()
) -> list[Difference]:
    """Differences between two indexes, record field by record field."""
    found: list[Difference] = []

    def add(package: str, where: str, a: object, b: object) -> None:
        found.append(Difference(package=package, where=where, melange=_show(a), ours=_show(b)))

    if melange.signatures != ours.signatures:
        add("APKINDEX", "APKINDEX signature", list(melange.signatures), list(ours.signatures))
    if sorted(melange.entries) != sorted(ours.entries):
        add("APKINDEX", "APKINDEX entries", list(melange.entries), list(ours.entries))
    for name in sorted(set(melange.records) | set(ours.records)):
        a, b = melange.records.get(name), ours.records.get(name)
        if a is None or b is None:
            add(name, "APKINDEX record", _present_record(a), _present_record(b))
            continue
        letters = list(dict.fromkeys([k for k, _ in a] + [k for k, _ in b]))
        da, db = dict(a), dict(b)
        for letter in letters:
            if da.get(letter) != db.get(letter):
                add(name, f"APKINDEX {letter}:", da.get(letter), db.get(letter))
        if [k for k, _ in a] != [k for k, _ in b]:
            add(name, "APKINDEX field order", "".join(k for k, _ in a), "".join(k for k, _ in b))
    return [d for d in found if not any(n.excuses(d) for n in noise)]


def _present_record(record: tuple[tuple[str, str], ...] | None) -> str | None:
    return None if record is None else "present"


def format_differences(differences: Iterable[Difference]) -> str:
    """A readable table: package, where, melange's value, ours."""
    rows = list(differences)
    if not rows:
        return "no differences"
    lines = []
    package = None
    for d in rows:
        if d.package != package:
            package = d.package
            lines.append(f"{package}:")
        lines.append(f"  {d.where}\n      melange: {d.melange}\n      ours:    {d.ours}")
    return "\n".join(lines)
