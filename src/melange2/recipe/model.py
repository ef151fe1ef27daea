"""The typed model of a melange build configuration.

Every value here is a frozen, keyword-only dataclass built by :mod:`melange2.recipe.parse`.
Nodes that later code may need to blame carry a :class:`Location` (``loc``) and a
``field_locs`` mapping from the YAML key of each field (``"runs"``, ``"with.uri"``,
``"needs.packages[0]"``) to the location of its value. Locations never take part in
equality: two configs that say the same thing compare equal wherever they came from.

Mappings are read-only views (``types.MappingProxyType``); sequences are tuples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, TypeVar

from melange2.recipe.arch import parse_arch

__all__ = [
    "EMPTY_MAP",
    "Checks",
    "Config",
    "Contents",
    "Copyright",
    "Dependencies",
    "Environment",
    "FieldMark",
    "Location",
    "Package",
    "PackageOptions",
    "PipelineDef",
    "PipelineInput",
    "RangeData",
    "Resources",
    "Scriptlets",
    "Step",
    "Subpackage",
    "Test",
    "VarTransform",
    "frozen_map",
]

EMPTY_MAP: Final[Mapping[str, str]] = MappingProxyType({})


_V = TypeVar("_V")


def frozen_map(items: Mapping[str, _V] | None = None) -> Mapping[str, _V]:
    """Return a read-only copy of ``items`` (insertion order kept)."""
    return MappingProxyType(dict(items or {}))


@dataclass(frozen=True, kw_only=True, slots=True)
class Location:
    """Where a node or value sits in a YAML file (1-based line and column)."""

    #: The file name as given to the loader (``"<string>"`` for text).
    file: str
    #: 1-based line of the value's first character.
    line: int
    #: 1-based column of the value's first character.
    column: int
    #: The field path from the document root, e.g. ``pipeline[2].with.uri``.
    path: str = ""
    #: True for literal block scalars (``|``): line ``n`` of the text is on ``line + 1 + n``.
    literal: bool = False

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"

    def line_of(self, text: str, index: int) -> int:
        """The file line of character ``index`` of this value's text (best effort)."""
        if not self.literal:
            return self.line + text.count("\n", 0, max(index, 0))
        return self.line + 1 + text.count("\n", 0, max(index, 0))

    def child(self, name: str) -> Location:
        """The same position with ``name`` appended to the field path."""
        sep = "" if not self.path or name.startswith("[") else "."
        return Location(
            file=self.file,
            line=self.line,
            column=self.column,
            path=f"{self.path}{sep}{name}",
            literal=self.literal,
        )


def _empty_map() -> Mapping[str, str]:
    return EMPTY_MAP


#: Where a field's value is, kept cheaply until a :class:`Location` is asked for:
#: ``(line, column, path, literal)`` (the file is the node's).
FieldMark = tuple[int, int, str, bool]


def _empty_locs() -> Mapping[str, Location | FieldMark]:
    return MappingProxyType({})


def _empty_inputs() -> Mapping[str, PipelineInput]:
    return MappingProxyType({})


_NOWHERE: Final = Location(file="<unknown>", line=0, column=0)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Located:
    #: Position of the node (its mapping) in the source.
    loc: Location = field(default=_NOWHERE, compare=False, repr=False)
    #: Position of each field's value, keyed by YAML key path relative to the node (a
    #: :data:`FieldMark` until :meth:`where` makes it a :class:`Location`: a config has
    #: many fields and errors are rare).
    field_locs: Mapping[str, Location | FieldMark] = field(
        default_factory=_empty_locs, compare=False, repr=False
    )

    def where(self, key: str) -> Location:
        """Location of field ``key`` (falls back to the node, with the path extended)."""
        found = self.field_locs.get(key)
        if found is None:
            return self.loc.child(key)
        if isinstance(found, Location):
            return found
        line, column, path, literal = found
        return Location(file=self.loc.file, line=line, column=column, path=path, literal=literal)


@dataclass(frozen=True, kw_only=True, slots=True)
class Copyright:
    """One ``package.copyright`` entry (simple license, or an AND/OR group)."""

    license: str = ""
    paths: tuple[str, ...] = ()
    attestation: str = ""
    license_path: str = ""
    detection_override: str = ""
    operator: str = ""
    licenses: tuple[Copyright, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Dependencies:
    """``dependencies`` of a package or subpackage."""

    runtime: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    replaces: tuple[str, ...] = ()
    #: An integer as text, or ``""`` when unset (melange keeps it a string).
    provider_priority: str = ""
    replaces_priority: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class PackageOptions:
    """``options`` of a package or subpackage (SCA switches)."""

    no_provides: bool = False
    no_depends: bool = False
    no_commands: bool = False
    no_versioned_shlib_deps: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Checks:
    """``checks`` of a package or subpackage (melange's linters)."""

    #: linters turned from required to warnings (or, when off by default, on as warnings)
    disabled: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Scriptlets:
    """``scriptlets`` of a package or subpackage: install scripts (control-stream files)."""

    #: ``trigger.script``: run when a path in ``trigger_paths`` changes
    trigger: str = ""
    trigger_paths: tuple[str, ...] = ()
    pre_install: str = ""
    post_install: str = ""
    pre_deinstall: str = ""
    post_deinstall: str = ""
    pre_upgrade: str = ""
    post_upgrade: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Resources:
    """``package.resources``: what the build asks of the machine, as written (melange keeps
    strings and hands them to its runner). ``cpu``, ``memory`` and ``disk`` are
    Kubernetes quantities (checked by the parser, see :mod:`melange2.resources`); the
    farm places a package by ``cpu`` and ``memory``."""

    cpu: str = ""
    cpumodel: str = ""
    memory: str = ""
    disk: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Package(_Located):
    """The ``package`` section."""

    name: str
    version: str
    epoch: int = 0
    description: str = ""
    url: str = ""
    commit: str = ""
    copyright: tuple[Copyright, ...] = ()
    dependencies: Dependencies = Dependencies()
    options: PackageOptions = PackageOptions()
    checks: Checks = Checks()
    scriptlets: Scriptlets | None = None
    #: As written; empty means "all". See :meth:`builds_for`.
    target_architecture: tuple[str, ...] = ()
    #: ``resources``; ``None`` when the config has none.
    resources: Resources | None = None
    #: ``timeout`` (a Go duration such as ``30m``) in seconds; ``None`` when not set. Left
    #: out of ``repr`` (and so of the input digest): a limit changes no output.
    timeout: float | None = field(default=None, repr=False)

    @property
    def full_version(self) -> str:
        """``<version>-r<epoch>``, the APK version (melange's ``package.full-version``)."""
        return f"{self.version}-r{self.epoch}"

    @property
    def licenses(self) -> tuple[str, ...]:
        """Every license identifier named in ``copyright`` (groups flattened), in order."""
        out: list[str] = []

        def walk(entries: tuple[Copyright, ...]) -> None:
            for entry in entries:
                if entry.license and entry.license not in out:
                    out.append(entry.license)
                walk(entry.licenses)

        walk(self.copyright)
        return tuple(out)

    def builds_for(self, arch: str) -> bool:
        """Whether ``target-architecture`` allows ``arch`` (apk or OCI spelling)."""
        if not self.target_architecture or "all" in self.target_architecture:
            return True
        want = parse_arch(arch).apk
        return any(parse_arch(a).apk == want for a in self.target_architecture)


@dataclass(frozen=True, kw_only=True, slots=True)
class Contents:
    """``environment.contents``: where packages come from and which to install."""

    repositories: tuple[str, ...] = ()
    keyring: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Environment(_Located):
    """A build or test environment (apko image configuration subset)."""

    contents: Contents = Contents()
    #: ``environment.environment``: variables exported to every step.
    environment: Mapping[str, str] = field(default_factory=_empty_map)


@dataclass(frozen=True, kw_only=True, slots=True)
class Step(_Located):
    """One pipeline step: ``runs`` a script, ``uses`` a named pipeline, or groups steps."""

    name: str = ""
    #: A named pipeline to run (resolved later, not by this package).
    uses: str = ""
    #: Arguments for ``uses`` (become ``${{inputs.<key>}}``).
    with_: Mapping[str, str] = field(default_factory=_empty_map)
    runs: str = ""
    pipeline: tuple[Step, ...] = ()
    working_directory: str = ""
    #: The ``if:`` condition; ``""`` means always. See :mod:`melange2.recipe.cond`.
    if_: str = ""
    environment: Mapping[str, str] = field(default_factory=_empty_map)
    #: ``needs.packages``: extra packages the step needs in the environment.
    needs_packages: tuple[str, ...] = ()
    label: str = ""
    #: ``assertions.required-steps``: how many of the nested steps must run (``None``: any).
    required_steps: int | None = None

    @property
    def identity(self) -> str:
        """The step's display name: ``name``, else ``uses``, else ``"???"`` (as melange)."""
        return self.name or self.uses or "???"


@dataclass(frozen=True, kw_only=True, slots=True)
class Test(_Located):
    """A ``test`` section (main package or subpackage)."""

    environment: Environment = Environment()
    pipeline: tuple[Step, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Subpackage(_Located):
    """One subpackage, after ``range`` expansion."""

    name: str
    description: str = ""
    url: str = ""
    commit: str = ""
    dependencies: Dependencies = Dependencies()
    pipeline: tuple[Step, ...] = ()
    #: The ``if:`` condition with ``package.*``, ``vars.*`` and ``range.*`` substituted as
    #: written. As in melange v0.34.0, nothing else is: its compile-time substitution of a
    #: subpackage's ``if`` is lost (chainguard-dev/melange#1377), so any other variable
    #: (``${{build.arch}}``) evaluates to ``""``. See
    #: :func:`~melange2.recipe.compile.subpackage_builds`.
    if_: str = ""
    #: The ``data`` entry this subpackage was expanded from, or ``""``.
    range: str = ""
    #: The ``${{range.key}}``/``${{range.value}}`` of this expansion (``""`` if none).
    range_key: str = ""
    range_value: str = ""
    options: PackageOptions = PackageOptions()
    checks: Checks = Checks()
    test: Test | None = None
    scriptlets: Scriptlets | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class VarTransform(_Located):
    """One ``var-transforms`` entry: ``vars.<to> = regex_replace(from, match, replace)``."""

    from_: str
    match: str
    replace: str
    to: str


@dataclass(frozen=True, kw_only=True, slots=True)
class RangeData(_Located):
    """One ``data`` entry, the iterable behind ``subpackages[].range``."""

    name: str
    items: Mapping[str, str] = field(default_factory=_empty_map)


@dataclass(frozen=True, kw_only=True, slots=True)
class Config(_Located):
    """A parsed melange configuration, substituted for one architecture.

    ``vars`` and ``var_transforms`` are kept as written (with ``extra_vars`` applied);
    ``resolved_vars`` holds the final ``vars.*`` values, transforms included.
    """

    package: Package
    environment: Environment = Environment()
    pipeline: tuple[Step, ...] = ()
    subpackages: tuple[Subpackage, ...] = ()
    vars: Mapping[str, str] = field(default_factory=_empty_map)
    var_transforms: tuple[VarTransform, ...] = ()
    data: tuple[RangeData, ...] = ()
    test: Test | None = None
    #: Names of the top-level ``options`` (build options); their bodies are not modelled.
    build_options: tuple[str, ...] = ()
    #: The apk architecture this config was substituted for (``x86_64``, ``aarch64``, ...).
    arch: str = "x86_64"
    #: libc flavour used for ``host.triplet.*``: ``gnu`` or ``musl``.
    libc: str = "gnu"
    #: Build options treated as enabled (``${{options.<name>.enabled}} == 'true'``).
    enabled_options: tuple[str, ...] = ()
    #: ``vars.<name>`` after substitution and var-transforms (key without prefix).
    resolved_vars: Mapping[str, str] = field(default_factory=_empty_map)

    @property
    def package_names(self) -> tuple[str, ...]:
        """The origin package's name followed by every subpackage's."""
        return (self.package.name, *(sp.name for sp in self.subpackages))


@dataclass(frozen=True, kw_only=True, slots=True)
class PipelineInput:
    """One declared input of a reusable pipeline file."""

    description: str = ""
    default: str = ""
    required: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class PipelineDef(_Located):
    """A reusable pipeline file (what ``uses: <name>`` refers to), unsubstituted."""

    name: str = ""
    needs_packages: tuple[str, ...] = ()
    inputs: Mapping[str, PipelineInput] = field(default_factory=_empty_inputs)
    pipeline: tuple[Step, ...] = ()
