"""Pick the packages of a build environment from repository indexes, as apk would.

:func:`resolve` turns a *world* (constraints such as ``busybox``, ``openssl>=3``,
``!foo``) into the packages to install, in install order::

    indexes = await load_indexes([staging, "https://packages.wolfi.dev/os"], "x86_64",
                                 keyring=[Path("/etc/apk/keys")])
    resolution = resolve(["wolfi-baselayout", "busybox", "build-base"], indexes, "x86_64")
    for package in resolution.packages:     # dependencies first
        package.record.name, package.repository.location

Rules, after apk-tools' solver and ``apk-package(5)``:

- A name is satisfied by a package of that name or one that provides it
  (``p:so:libz.so.1=1.3`` or unversioned ``p:cmd:sh``), with a version the
  constraint accepts. Only packages of the index arch or ``noarch`` count.
- A package already chosen that satisfies a constraint is used again.
- Otherwise the best provider wins: a package named exactly so, then the highest
  ``provider_priority`` (``k:``), then the highest provided version, then the
  highest package version, then the earliest repository (a staging repository
  listed first overrides a published one at the same version), then index order.
- An unversioned provide is chosen automatically only with a ``provider_priority``;
  otherwise a package that is chosen anyway (named in the world, say) satisfies it.
- A package owns its name and its versioned provides: two chosen packages never own
  the same name (so one version per name). ``!name`` excludes every provider of
  ``name`` the constraint covers, except the package declaring it.
- Dependencies (``D:``) are followed transitively; cycles are allowed.

This is a greedy solver, not apk's full one: when a constraint met later rules out
an earlier choice, resolution restarts with that constraint known from the start,
and fails when the same constraint is violated again. ``install_if`` is ignored
(nothing is installed automatically), as are repository tags (``name@tag`` is an
error) and ``replaces``.

::

    ApkError                        (melange2.errors)
    └── ResolutionError             the world cannot be satisfied from the indexes
"""

from __future__ import annotations

import base64
import functools
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from melange2.apk.errors import ApkFormatError
from melange2.apk.index import IndexRecord
from melange2.apk.reader import DataEntry, EntryKind
from melange2.apk.version import Constraint, compare_versions
from melange2.cache import SizedCache
from melange2.errors import ApkError
from melange2.repo.repository import RECORD_BYTES, LoadedIndex, Repository

__all__ = [
    "Resolution",
    "ResolutionError",
    "ResolvedPackage",
    "installed_db",
    "installed_db_entry",
    "resolve",
    "world_text",
]

#: How many times resolution may restart after learning a constraint.
MAX_RESTARTS = 256
_LISTED = 8


class ResolutionError(ApkError):
    """The packages cannot be resolved."""

    code = "apk_resolution_error"


@dataclass(frozen=True, kw_only=True)
class ResolvedPackage:
    """A chosen package and the index it comes from."""

    record: IndexRecord
    index: LoadedIndex = field(repr=False)

    @property
    def repository(self) -> Repository:
        return self.index.repository

    @property
    def name(self) -> str:
        return self.record.name

    def __str__(self) -> str:
        return f"{self.record.name}-{self.record.version}"


@dataclass(frozen=True, kw_only=True)
class Resolution:
    """The outcome of :func:`resolve`."""

    #: the world as requested
    world: tuple[str, ...]
    #: install order: every package after the packages it depends on (cycles aside)
    packages: tuple[ResolvedPackage, ...]

    def by_name(self) -> dict[str, ResolvedPackage]:
        return {package.name: package for package in self.packages}

    def world_text(self) -> str:
        """``/etc/apk/world`` for this resolution."""
        return world_text(self.world)


# --- candidates ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, kw_only=True)
class _Candidate:
    record: IndexRecord
    index: LoadedIndex
    repo_order: int
    file_order: int
    #: provided names and versions; the package's own name first
    provides: tuple[tuple[str, str | None], ...]

    @property
    def label(self) -> str:
        return f"{self.record.name}-{self.record.version}"

    @property
    def owned(self) -> Iterable[str]:
        return (name for name, version in self.provides if version is not None)

    @property
    def priority(self) -> int:
        return self.record.provider_priority or 0

    def offers(self, name: str) -> Iterable[str | None]:
        return (version for provided, version in self.provides if provided == name)


#: providers of the last few index sets: a farm resolves thousands of environments
#: against the same indexes, and listing every record's names is the costly part
ProviderMap = Mapping[str, Sequence[_Candidate]]
#: (bounded by estimated size: the candidates and the indexes the entry keeps alive)
_PROVIDERS: SizedCache[tuple[object, ...], tuple[Sequence[LoadedIndex], ProviderMap]] = SizedCache(
    512 * 1024 * 1024,
    lambda entry: sum((RECORD_BYTES + 256) * len(i.records) for i in entry[0]) + 512,
)


def _providers(indexes: Sequence[LoadedIndex], arch: str) -> ProviderMap:
    """:func:`_candidates`, remembered per (indexes, arch). Indexes are immutable; the
    entry holds them, so the ids in its key cannot be reused while it lives."""
    key = (arch, *(id(index) for index in indexes))
    found = _PROVIDERS.get(key)
    if found is not None:
        return found[1]
    providers = _candidates(indexes, arch)
    _PROVIDERS.put(key, (tuple(indexes), providers))
    return providers


def _candidates(indexes: Sequence[LoadedIndex], arch: str) -> dict[str, list[_Candidate]]:
    providers: dict[str, list[_Candidate]] = {}
    for repo_order, index in enumerate(indexes):
        for file_order, record in enumerate(index.records):
            if record.arch not in (arch, "noarch"):
                continue
            provides: list[tuple[str, str | None]] = [(record.name, record.version)]
            for item in record.provides:
                name, eq, version = item.partition("=")
                provides.append((name, version if eq else None))
            candidate = _Candidate(
                record=record,
                index=index,
                repo_order=repo_order,
                file_order=file_order,
                provides=tuple(provides),
            )
            for name in dict.fromkeys(name for name, _ in provides):
                providers.setdefault(name, []).append(candidate)
    return providers


# --- the solver ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Need:
    constraint: Constraint
    #: the package that declared it; ``None`` for the world
    requirer: _Candidate | None
    deferred: bool = False

    @property
    def needed_by(self) -> str:
        return f" (needed by {self.requirer.label})" if self.requirer else ""


class _Restart(Exception):
    """A constraint met late invalidates an earlier choice."""


@dataclass(kw_only=True)
class _Pass:
    providers: ProviderMap
    #: constraints met late in earlier passes, with who needed them
    learned: dict[str, list[tuple[Constraint, str]]]
    learned_conflicts: list[tuple[Constraint, _Candidate | None]]
    chosen: dict[int, _Candidate] = field(default_factory=dict)
    owners: dict[str, _Candidate] = field(default_factory=dict)
    conflicts: list[tuple[Constraint, _Candidate | None]] = field(default_factory=list)
    edges: dict[int, list[_Candidate]] = field(default_factory=dict)
    roots: list[_Candidate] = field(default_factory=list)
    queue: deque[_Need] = field(default_factory=deque)

    def run(self, world: Sequence[Constraint]) -> None:
        """Choose providers breadth first: the world, then dependencies as they appear."""
        self.queue.extend(_Need(constraint=c, requirer=None) for c in world)
        deferred: list[_Need] = []
        while self.queue or deferred:
            if not self.queue:
                self.queue.extend(deferred)
                deferred.clear()
            need = self.queue.popleft()
            chosen = self._satisfy(need, deferred)
            if chosen is None:
                continue
            if need.requirer is None:
                self.roots.append(chosen)
            else:
                self.edges.setdefault(id(need.requirer), []).append(chosen)

    def _satisfy(self, need: _Need, deferred: list[_Need]) -> _Candidate | None:
        constraint = need.constraint
        if constraint.tag is not None:
            raise ResolutionError(
                f'cannot resolve "{constraint}"{need.needed_by}: repository tags are not supported'
            )
        if constraint.conflict:
            self._add_conflict(constraint, need)
            return None
        for candidate in self.chosen.values():
            if any(constraint.matches(v) for v in candidate.offers(constraint.name)):
                return candidate
        owner = self.owners.get(constraint.name)
        if owner is not None:
            self._learn(constraint, need, f"{owner.label} is already chosen")
        ranked = [c for c in self.providers.get(constraint.name, ()) if self._eligible(c, need)]
        if not ranked:
            if not need.deferred and self._virtual_only(constraint):
                deferred.append(_Need(constraint=constraint, requirer=need.requirer, deferred=True))
                return None
            raise ResolutionError(self._explain(need))
        best = min(ranked, key=functools.cmp_to_key(functools.partial(_rank, constraint.name)))
        self._choose(best)
        return best

    def _choose(self, candidate: _Candidate) -> None:
        self.chosen[id(candidate)] = candidate
        for name in candidate.owned:
            self.owners[name] = candidate
        for dep in candidate.record.depends:
            try:
                constraint = Constraint.parse(dep)
            except ApkFormatError as exc:
                raise ResolutionError(f"{candidate.label}: bad dependency {dep!r}: {exc}") from exc
            self.queue.append(_Need(constraint=constraint, requirer=candidate))

    def _add_conflict(self, constraint: Constraint, need: _Need) -> None:
        for candidate in self.chosen.values():
            if candidate is need.requirer:
                continue
            if any(not constraint.matches(v) for v in candidate.offers(constraint.name)):
                self._learn_conflict(constraint, need, candidate)
        self.conflicts.append((constraint, need.requirer))

    def _learn(self, constraint: Constraint, need: _Need, why: str) -> None:
        known = self.learned.setdefault(constraint.name, [])
        if any(c == constraint for c, _ in known):
            raise ResolutionError(f'cannot resolve "{constraint}"{need.needed_by}: {why}')
        known.append((constraint, need.needed_by))
        raise _Restart

    def _learn_conflict(self, constraint: Constraint, need: _Need, victim: _Candidate) -> None:
        entry = (constraint, need.requirer)
        if any(c == constraint and r is need.requirer for c, r in self.learned_conflicts):
            raise ResolutionError(
                f'cannot resolve "{constraint}"{need.needed_by}: {victim.label} is required'
            )
        self.learned_conflicts.append(entry)
        raise _Restart

    def _why_not(self, candidate: _Candidate, need: _Need) -> str | None:
        """Why ``candidate`` cannot satisfy ``need`` (``None``: it can)."""
        constraint = need.constraint
        versions = list(candidate.offers(constraint.name))
        if not any(constraint.matches(v) for v in versions):
            return ""
        if (
            candidate.record.name != constraint.name
            and None in versions
            and candidate.record.provider_priority is None
            and all(v is None for v in versions)
        ):
            return "unversioned provider without provider_priority"
        for learned, needed_by in self.learned.get(constraint.name, ()):
            if not any(learned.matches(v) for v in versions):
                return f'excluded by "{learned}"{needed_by}'
        for conflict, requirer in (*self.conflicts, *self.learned_conflicts):
            if requirer is candidate:
                continue
            if any(not conflict.matches(v) for v in candidate.offers(conflict.name)):
                by = f", needed by {requirer.label}" if requirer else ""
                return f'conflicts with "{conflict}"{by}'
        for name in candidate.owned:
            owner = self.owners.get(name)
            if owner is not None and owner is not candidate:
                return f"{owner.label} already provides {name}"
        return None

    def _eligible(self, candidate: _Candidate, need: _Need) -> bool:
        return self._why_not(candidate, need) is None

    def _virtual_only(self, constraint: Constraint) -> bool:
        providers = self.providers.get(constraint.name, ())
        return bool(providers) and all(
            c.record.name != constraint.name and all(v is None for v in c.offers(constraint.name))
            for c in providers
        )

    def _explain(self, need: _Need) -> str:
        constraint = need.constraint
        providers = self.providers.get(constraint.name, [])
        if not providers:
            return f'nothing provides "{constraint}"{need.needed_by}'
        ordered = sorted(providers, key=functools.cmp_to_key(functools.partial(_rank, "")))
        shown = []
        for candidate in ordered[:_LISTED]:
            text = f"{candidate.label} in {candidate.index.repository.location}"
            if candidate.record.name != constraint.name:
                offered = [
                    f"{constraint.name}={v}" if v else constraint.name
                    for v in candidate.offers(constraint.name)
                ]
                text += f" (provides {', '.join(offered)})"
            reason = self._why_not(candidate, need)
            if reason:
                text += f" [{reason}]"
            shown.append(text)
        if len(ordered) > _LISTED:
            shown.append(f"and {len(ordered) - _LISTED} more")
        return f'cannot resolve "{constraint}"{need.needed_by}: available {", ".join(shown)}'


def _rank(name: str, a: _Candidate, b: _Candidate) -> int:
    """Negative when ``a`` is the better provider of ``name``."""
    if (a.record.name == name) != (b.record.name == name):
        return -1 if a.record.name == name else 1
    if a.priority != b.priority:
        return -1 if a.priority > b.priority else 1
    provided = compare_versions(_best_offer(b, name), _best_offer(a, name))
    if provided:
        return provided
    own = compare_versions(b.record.version, a.record.version)
    if own:
        return own
    return -1 if (a.repo_order, a.file_order) < (b.repo_order, b.file_order) else 1


def _best_offer(candidate: _Candidate, name: str) -> str:
    versions = [v for v in candidate.offers(name) if v is not None]
    if not versions:
        return candidate.record.version
    return max(versions, key=functools.cmp_to_key(compare_versions))


def resolve(world: Sequence[str], indexes: Sequence[LoadedIndex], arch: str) -> Resolution:
    """The packages satisfying ``world`` from ``indexes`` (earlier ones preferred), in
    install order. Raises :class:`ResolutionError` with the unsatisfiable constraint."""
    try:
        constraints = [Constraint.parse(entry) for entry in world]
    except ApkFormatError as exc:
        raise ResolutionError(str(exc)) from exc
    providers = _providers(indexes, arch)
    learned: dict[str, list[tuple[Constraint, str]]] = {}
    learned_conflicts: list[tuple[Constraint, _Candidate | None]] = []
    for _ in range(MAX_RESTARTS):
        attempt = _Pass(providers=providers, learned=learned, learned_conflicts=learned_conflicts)
        try:
            attempt.run(constraints)
        except _Restart:
            continue
        ordered = _install_order(list(attempt.chosen.values()), attempt.edges)
        return Resolution(
            world=tuple(world),
            packages=tuple(ResolvedPackage(record=c.record, index=c.index) for c in ordered),
        )
    raise ResolutionError(f"gave up resolving {list(world)} after {MAX_RESTARTS} attempts")


def _install_order(
    chosen: list[_Candidate], edges: Mapping[int, list[_Candidate]]
) -> list[_Candidate]:
    """Depth-first post-order: dependencies first; ties and cycles broken by name."""

    def key(candidate: _Candidate) -> tuple[str, str]:
        return candidate.record.name, candidate.record.version

    order: list[_Candidate] = []
    seen: set[int] = set()
    for root in sorted(chosen, key=key):
        if id(root) in seen:
            continue
        seen.add(id(root))
        stack = [(root, iter(sorted(edges.get(id(root), ()), key=key)))]
        while stack:
            node, children = stack[-1]
            for child in children:
                if id(child) not in seen:
                    seen.add(id(child))
                    stack.append((child, iter(sorted(edges.get(id(child), ()), key=key))))
                    break
            else:
                stack.pop()
                order.append(node)
    return order


# --- the installed database ---------------------------------------------------------------

_DEFAULT_DIR_ACL = (0, 0, 0o755)
_DEFAULT_FILE_ACL = (0, 0, 0o644)


def installed_db(resolution: Resolution, file_lists: Mapping[str, Sequence[DataEntry]]) -> str:
    """``/lib/apk/db/installed`` for ``resolution`` (apk-tools ``apk_db_fdb_write``).

    ``file_lists`` maps each package name to its data entries
    (:attr:`melange2.apk.ApkPackage.entries`). Per package, in install order: the
    index fields, then per directory ``F:path`` (``M:uid:gid:mode`` when not
    root-owned 0755) and per file in it ``R:name`` (``a:uid:gid:mode`` when not
    root-owned 0644, ``Z:Q1<base64 SHA-1>`` when the entry has a checksum); a blank
    line ends the package.
    """
    parts: list[str] = []
    for package in resolution.packages:
        try:
            entries = file_lists[package.name]
        except KeyError:
            raise ResolutionError(f"no file list for {package}") from None
        parts.append(installed_db_entry(package.record, entries))
    return "".join(parts)


def installed_db_entry(record: IndexRecord, entries: Sequence[DataEntry]) -> str:
    """One package's part of ``/lib/apk/db/installed`` (see :func:`installed_db`),
    blank line included."""
    return record.render() + "".join(line + "\n" for line in _file_lines(entries)) + "\n"


def _file_lines(entries: Sequence[DataEntry]) -> list[str]:
    checksums = {_clean(e.path): e.checksum for e in entries if e.kind is EntryKind.FILE}
    directories: dict[str, list[str]] = {}
    acls: dict[str, tuple[int, int, int]] = {}
    for entry in entries:
        path = _clean(entry.path)
        acl = (entry.uid, entry.gid, entry.mode & 0o7777)
        if entry.kind is EntryKind.DIRECTORY:
            directories.setdefault(path, [])
            acls[path] = acl
            continue
        parent, _, name = path.rpartition("/")
        lines = directories.setdefault(parent, [])
        lines.append(f"R:{name}")
        if acl != _DEFAULT_FILE_ACL:
            lines.append(f"a:{acl[0]}:{acl[1]}:{acl[2]:o}")
        checksum = entry.checksum
        if checksum is None and entry.kind is EntryKind.HARDLINK:
            checksum = checksums.get(_clean(entry.linkname))
        if checksum:
            digest = base64.b64encode(bytes.fromhex(checksum)).decode()
            lines.append(f"Z:Q1{digest}")
    out: list[str] = []
    for directory, lines in directories.items():
        if not directory and not lines:
            continue
        out.append(f"F:{directory}")
        acl = acls.get(directory, _DEFAULT_DIR_ACL)
        if acl != _DEFAULT_DIR_ACL:
            out.append(f"M:{acl[0]}:{acl[1]}:{acl[2]:o}")
        out.extend(lines)
    return out


def _clean(path: str) -> str:
    while path.startswith("./"):
        path = path[2:]
    return path.strip("/")


def world_text(world: Iterable[str]) -> str:
    """``/etc/apk/world``: one constraint a line, sorted by name, duplicates dropped."""
    try:
        constraints = [Constraint.parse(entry) for entry in world]
    except ApkFormatError as exc:
        raise ResolutionError(str(exc)) from exc
    unique = {str(c): c for c in constraints}
    ordered = sorted(unique.values(), key=lambda c: (c.name, str(c)))
    return "".join(f"{c}\n" for c in ordered)
