"""Automatic dependencies and provides of a package, as melange v0.34.0's SCA finds them.

melange runs its analyzers (``pkg/sca/sca.go`` ``Analyze``) on each package's tree when it
writes the package, then merges what they found with the config's ``dependencies``
(``pkg/build/package.go`` ``GenerateDependencies``). This module does both, from plain
values: a tree, the package's name and full version, its options and declared runtime
dependencies, and the trees of the other packages of the same build.

What is found (each analyzer named after melange's function):

``generateSharedObjectNameDeps``
    every ELF file (regular, or a link to one): ``so:<interpreter>`` for its ``PT_INTERP``
    (``ld-musl-*`` spelled ``libc.musl-*``), ``so:<lib>`` for each ``DT_NEEDED`` whose name
    has ``.so.`` in it; for a shared object (no interpreter, or ``.so``/``.so.`` in its
    name) ``so:<SONAME>=<libver>`` and ``so-ver:<SONAME>=<version>`` provides when it lies
    directly in a library directory (``lib/ usr/lib/ lib64/ usr/lib64/`` and those named by
    ``/etc/ld.so.conf.d/*.conf`` in any package of the build), "vendored" otherwise; a
    link with ``.so`` in its path whose target's base name is a library in a library
    directory of any package of the build gives ``so:<SONAME of that library>``; a Go
    binary built with cgo and a FIPS crypto experiment depends on
    ``openssl-config-fipshardened`` and ``so:libcrypto.so.3``. NVIDIA driver libraries
    the host injects are never depended on nor provided.
``generateCmdProviders``
    ``cmd:<name>=<version>`` for each regular file executable by everyone (``0o555``)
    directly in ``bin/ sbin/ usr/bin/ usr/sbin/``.
``generateDocDeps``
    in a ``-doc`` package, ``man-db`` for anything directly in ``usr/share/man`` and
    ``texinfo`` for anything directly in ``usr/share/info``.
``generatePkgConfigDeps``
    for each ``.pc`` file (not a link) that go-pkgconfig parses: ``pc:<name>=<version>``
    when it lies directly in a pkg-config directory, with ``pc:<name>`` dependencies for
    its ``Requires``, ``Requires.private`` and ``Requires.internal``; vendored otherwise.
``generatePythonDeps``
    ``python-X.Y-base`` for a ``pythonX.Y/site-packages`` directory (the last one walked),
    unless a declared runtime dependency starts with ``python``.
``generateRubyDeps``
    ``ruby-X.Y`` for ``usr/lib/ruby/gems/X.Y.Z/gems``, unless ``ruby`` or ``ruby-*`` is declared.
``generateShbangDeps``
    ``cmd:<interpreter>`` for each script in ``usr/bin``, ``usr/local/bin`` or
    ``usr/local/sbin`` (recursively), except ``sh``, ``python``, ``python3``, ``awk``,
    ``luajit``.

Then each list is sorted and de-duplicated; ``no-commands`` drops ``cmd:`` entries,
``no-depends`` the generated dependencies, ``no-provides`` the generated provides.
Merging (:meth:`ScaResult.merged`) adds the declared lists, sorts and de-duplicates
them, and drops every dependency the package provides itself (or vendors).

melange versions shared-library dependencies (``so-ver:...>=``) only when the
``MELANGE_VERSIONED_SHLIB_DEPENDS`` environment variable is set; by default it does not,
and neither does this module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from melange2.sca._go import go_base, go_clean, go_dir, go_ext, go_is_digit
from melange2.sca.elf import ElfInfo, ElfUnreadable, machine_for_arch, machine_name
from melange2.sca.pkgconfig import PcParseError, parse_pc
from melange2.sca.shebang import HEAD, ShebangError, interpreter_of
from melange2.sca.tree import Entry, PackageTree, is_in_dir

__all__ = [
    "BIN_DIRS",
    "LIB_DIRS",
    "PKGCONFIG_DIRS",
    "PackageDependencies",
    "ScaOptions",
    "ScaResult",
    "ScaWarning",
    "analyze",
    "remove_self_provided",
]

#: melange's ``LibDirs``
LIB_DIRS: Final = ("lib/", "usr/lib/", "lib64/", "usr/lib64/")
#: melange's ``BinDirs``
BIN_DIRS: Final = ("bin/", "sbin/", "usr/bin/", "usr/sbin/")
PKGCONFIG_DIRS: Final = (
    "usr/local/lib/pkgconfig/",
    "usr/local/share/pkgconfig/",
    "usr/lib/pkgconfig/",
    "usr/lib64/pkgconfig/",
    "usr/share/pkgconfig/",
)
_SHEBANG_DIRS: Final = ("usr/bin/", "usr/local/bin/", "usr/local/sbin/")
_FIPS_EXPERIMENTS: Final = ("boringcrypto", "systemcrypto", "opensslcrypto")
_WORD: Final = re.compile(r"\S+")
_RUBY_VERSION_DIR: Final = re.compile(r"[0-9][^/]*\.[0-9][^/]*\.[0.9][^/]*", re.DOTALL)

#: ``isHostProvidedLibrary``: NVIDIA driver libraries the host injects
HOST_LIBRARIES: Final = frozenset(
    {
        "libEGL_nvidia.so.1",
        "libGLESv1_CM_nvidia.so.1",
        "libGLESv2_nvidia.so.1",
        "libGLX_nvidia.so.1",
        "libcuda.so.1",
        "libcudadebugger.so.1",
        "libnvcuvid.so.1",
        "libnvidia-allocator.so.1",
        "libnvidia-cfg.so.1",
        "libnvidia-eglcore.so.1",
        "libnvidia-encode.so.1",
        "libnvidia-fbc.so.1",
        "libnvidia-glcore.so.1",
        "libnvidia-glsi.so.1",
        "libnvidia-glvkspirv.so.1",
        "libnvidia-gpucomp.so.1",
        "libnvidia-ml.so.1",
        "libnvidia-ngx.so.1",
        "libnvidia-nvvm.so.1",
        "libnvidia-opencl.so.1",
        "libnvidia-opticalflow.so.1",
        "libnvidia-pkcs11-openssl3.so.1",
        "libnvidia-pkcs11.so.1",
        "libnvidia-ptxjitcompiler.so.1",
        "libnvidia-rtcore.so.1",
        "libnvidia-tls.so.1",
        "libnvoptix.so.1",
    }
)


@dataclass(frozen=True, kw_only=True, slots=True)
class ScaOptions:
    """A package's ``options`` (melange's ``PackageOption``)."""

    #: drop the generated provides (a virtual package)
    no_provides: bool = False
    #: drop the generated dependencies (a self-contained package)
    no_depends: bool = False
    #: drop generated ``cmd:`` provides and dependencies
    no_commands: bool = False
    #: no ``so-ver:`` dependencies (melange makes none unless an environment variable asks)
    no_versioned_shlib_deps: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class ScaWarning:
    """Something worth a line in the build log, about one path of the package."""

    #: the path in the package, or "" for the package as a whole
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def remove_self_provided(depends: Iterable[str], provided: Iterable[str]) -> list[str]:
    """melange's ``removeSelfProvidedDeps``: drop each dependency whose name (a ``so-ver:``
    one cut at ``>=``) is the name of one of ``provided`` (each cut at ``=``)."""
    names = {p.split("=", 1)[0] for p in provided}
    out = []
    for dep in depends:
        if dep.startswith("so-ver:"):
            dep = dep.split(">=", 1)[0]
        if dep not in names:
            out.append(dep)
    return out


def _sorted_unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(items)))


@dataclass(frozen=True, kw_only=True, slots=True)
class PackageDependencies:
    """What goes into ``.PKGINFO``: ``depend``, ``provides``, and the vendored libraries
    (melange writes them as ``# vendored = ...`` comments)."""

    depends: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    vendored: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class ScaResult:
    """What the analyzers found in one package (sorted, de-duplicated, options applied)."""

    #: ``so:``, ``so-ver:``, ``cmd:``, ``pc:`` provides
    provides: tuple[str, ...] = ()
    #: ``so:``, ``cmd:``, ``pc:``, ``python-X.Y-base`` ... dependencies
    depends: tuple[str, ...] = ()
    #: provides of libraries and pkg-config files outside the standard directories
    vendored: tuple[str, ...] = ()
    warnings: tuple[ScaWarning, ...] = ()

    def merged(
        self, *, runtime: Sequence[str] = (), provides: Sequence[str] = ()
    ) -> PackageDependencies:
        """This result merged with a config's ``dependencies.runtime``/``provides`` as
        melange's ``GenerateDependencies`` merges them: generated dependencies the package
        vendors are dropped, both lists are sorted and de-duplicated, and dependencies the
        package provides itself are dropped (declared ones included)."""
        unvendored = remove_self_provided(self.depends, self.vendored)
        all_provides = _sorted_unique([*provides, *self.provides])
        depends = remove_self_provided(_sorted_unique([*runtime, *unvendored]), all_provides)
        return PackageDependencies(
            depends=tuple(depends), provides=all_provides, vendored=self.vendored
        )


@dataclass
class _Generated:
    runtime: list[str] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)
    vendored: list[str] = field(default_factory=list)
    warnings: list[ScaWarning] = field(default_factory=list)
    #: real files already warned about (a library and its links warn once)
    warned: set[Path] = field(default_factory=set)

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(ScaWarning(path=path, message=message))

    def _usable(self, path: str, item: str) -> bool:
        """An entry ``.PKGINFO`` can hold: one word of UTF-8. melange writes whatever the
        file says; a name with a space or undecodable bytes (a corrupt ELF file) would
        make a package apk cannot read, so it is left out, with a warning."""
        if _WORD.fullmatch(item) and item.isprintable():
            try:
                item.encode()
                return True
            except UnicodeEncodeError:
                pass
        self.warn(path, f"left out {item!r}: not a name a package can list")
        return False

    def depend(self, path: str, item: str) -> None:
        if self._usable(path, item):
            self.runtime.append(item)

    def provide(self, path: str, item: str) -> None:
        if self._usable(path, item):
            self.provides.append(item)

    def vendor(self, path: str, item: str) -> None:
        if self._usable(path, item):
            self.vendored.append(item)


@dataclass(frozen=True, kw_only=True)
class _Package:
    tree: PackageTree
    name: str
    version: str
    arch: str
    options: ScaOptions
    declared_runtime: tuple[str, ...]
    siblings: tuple[PackageTree, ...]
    lib_dirs: tuple[str, ...]


def _as_tree(value: Path | PackageTree) -> PackageTree:
    return value if isinstance(value, PackageTree) else PackageTree(Path(value))


def analyze(
    tree: Path | PackageTree,
    *,
    name: str,
    version: str,
    arch: str,
    options: ScaOptions = ScaOptions(),
    declared_runtime: Sequence[str] = (),
    siblings: Sequence[Path | PackageTree] = (),
) -> ScaResult:
    """Find the ``so:``/``cmd:``/``pc:`` provides and dependencies of one package.

    ``tree`` is the package's directory (its ``/``); ``version`` the full version
    (``1.2.0-r0``) that ``cmd:``, ``pc:`` and ``so-ver:`` provides carry; ``arch`` the
    apk architecture of the build (an ELF file for another machine is warned about, and
    analysed as melange analyses it). ``declared_runtime`` is the config's
    ``dependencies.runtime``: a declared ``python*`` or ``ruby*`` dependency stops the
    generated one. ``siblings`` are the trees of every package of the same build, the
    origin first and then its subpackages in config order (melange's ``RelativeNames``);
    ``ld.so.conf.d`` files and the targets of library links are looked up across them. It
    defaults to ``tree`` alone; ``tree`` is searched first when it is not among them.

    Pure apart from reading the trees: nothing is written, nothing is fetched. Files that
    cannot be read (an ELF file cut short, a ``.pc`` file go-pkgconfig refuses, an
    unusable ``#!`` line) are skipped as melange skips them, each with a
    :class:`ScaWarning` naming it.
    """
    me = _as_tree(tree)
    relatives = tuple(_as_tree(s) for s in siblings)
    if not any(s.root == me.root for s in relatives):
        relatives = (me, *relatives)
    else:
        relatives = tuple(me if s.root == me.root else s for s in relatives)
    extra = _ld_so_conf_dirs(relatives)
    pkg = _Package(
        tree=me,
        name=name,
        version=version,
        arch=arch,
        options=options,
        declared_runtime=tuple(declared_runtime),
        siblings=relatives,
        lib_dirs=(*LIB_DIRS, *extra),
    )
    gen = _Generated()
    entries = me.entries()
    _shared_objects(pkg, entries, gen)
    _commands(pkg, entries, gen)
    _doc_deps(pkg, entries, gen)
    _pkgconfig(pkg, entries, gen)
    _python(pkg, entries, gen)
    _ruby(pkg, gen)
    _shebangs(pkg, entries, gen)
    runtime = _sorted_unique(gen.runtime)
    provides = _sorted_unique(gen.provides)
    if options.no_commands:
        provides = tuple(p for p in provides if not p.startswith("cmd:"))
        runtime = tuple(d for d in runtime if not d.startswith("cmd:"))
    if options.no_depends:
        runtime = ()
    if options.no_provides:
        provides = ()
    return ScaResult(
        provides=provides,
        depends=runtime,
        vendored=_sorted_unique(gen.vendored),
        warnings=tuple(gen.warnings),
    )


def _ld_so_conf_dirs(relatives: Sequence[PackageTree]) -> list[str]:
    """``getLdSoConfDLibPaths``: the absolute paths in ``etc/ld.so.conf.d/**/*.conf`` of
    every package of the build, made relative."""
    dirs: list[str] = []
    for tree in relatives:
        for entry in tree.entries():
            if not entry.path.startswith("etc/ld.so.conf.d/") or not entry.path.endswith(".conf"):
                continue
            if not entry.is_regular:
                continue
            try:
                data = tree.host_path(entry.path).read_bytes()
            except OSError:
                continue
            for raw in data.split(b"\n"):
                line = raw.removesuffix(b"\r").decode("utf-8", "surrogateescape")
                if line.startswith("/"):
                    dirs.append(line[1:])
    return dirs


def _libver(soname: str) -> str:
    """``sonameLibver``: the digits after ``.so.`` (``libfoo.so.1.2`` -> ``1.2``), else "0"."""
    parts = soname.split(".so.")
    if len(parts) < 2:
        return "0"
    libver = parts[1]
    if any(c != "." and not go_is_digit(c) for c in libver):
        return "0"
    return libver


def _elf_of(
    pkg: _Package, tree: PackageTree, path: str, gen: _Generated, *, check_arch: bool = True
) -> ElfInfo | None:
    """The ELF facts of ``path`` (links followed); a warning, once per file, when it is
    an ELF file melange cannot read or (``check_arch``) one for another machine."""
    real = tree.real_path(path)
    if real is None:
        return None
    info = tree.elf(real)
    if info is None:
        return None
    if isinstance(info, ElfUnreadable):
        if real not in gen.warned:
            gen.warned.add(real)
            gen.warn(
                path, f"not a readable ELF file ({info.reason}); no dependencies taken from it"
            )
        return None
    want = machine_for_arch(pkg.arch)
    if check_arch and want is not None and info.machine != want and real not in gen.warned:
        gen.warned.add(real)
        gen.warn(
            path,
            f"an ELF file for {machine_name(info.machine)} in a {pkg.arch} package "
            "(its dependencies are recorded all the same, as melange records them)",
        )
    return info


def _shared_objects(pkg: _Package, entries: Sequence[Entry], gen: _Generated) -> None:
    for entry in entries:
        if entry.is_symlink:
            _linked_library(pkg, entry.path, gen)
        elif not entry.is_regular:
            continue
        info = _elf_of(pkg, pkg.tree, entry.path, gen)
        if info is None:
            continue
        if info.interpreter:
            interp = f"so:{go_base(info.interpreter)}".replace("so:ld-musl", "so:libc.musl")
            gen.depend(entry.path, interp)
        if info.dynamic_error:
            gen.warn(entry.path, f"cannot read its dynamic section ({info.dynamic_error})")
            continue
        for lib in info.needed:
            if lib in HOST_LIBRARIES:
                continue
            if ".so." in lib:
                gen.depend(entry.path, f"so:{lib}")
        basename = entry.name
        if not info.interpreter or ".so." in basename or basename.endswith(".so"):
            for soname in info.sonames:
                if soname in HOST_LIBRARIES:
                    continue
                libver = _libver(soname)
                add = gen.provide if is_in_dir(entry.path, pkg.lib_dirs) else gen.vendor
                add(entry.path, f"so:{soname}={libver}")
                add(entry.path, f"so-ver:{soname}={pkg.version}")
        settings = info.go_settings
        if settings is not None:
            cgo = settings.get("CGO_ENABLED") == "1"
            fips = (
                settings.get("GOEXPERIMENT") in _FIPS_EXPERIMENTS
                or settings.get("microsoft_systemcrypto") == "1"
            )
            if cgo and fips:
                gen.depend(entry.path, "openssl-config-fipshardened")
                gen.depend(entry.path, "so:libcrypto.so.3")


def _linked_library(pkg: _Package, path: str, gen: _Generated) -> None:
    """``processSymlinkSo``: a link named like a library depends on the SONAME of the
    library its target names, found in a library directory of any package of the build."""
    if ".so" not in path:
        return
    target = pkg.tree.readlink(path)
    if target is None:
        return
    real_name = go_base(target)
    for tree in pkg.siblings:
        for lib_dir in pkg.lib_dirs:
            candidate = _join(lib_dir, real_name)
            if tree.exists(candidate):
                info = _elf_of(pkg, tree, candidate, gen, check_arch=False)
                if info is None:
                    return
                if info.dynamic_error:
                    gen.warn(path, "library lacks SONAME")
                    return
                for soname in info.sonames:
                    gen.depend(path, f"so:{soname}")
                return


def _join(directory: str, name: str) -> str:
    """``filepath.Join``."""
    return go_clean(f"{directory}/{name}")


def _commands(pkg: _Package, entries: Sequence[Entry], gen: _Generated) -> None:
    for entry in entries:
        if entry.is_regular and entry.perm & 0o555 == 0o555 and is_in_dir(entry.path, BIN_DIRS):
            gen.provide(entry.path, f"cmd:{entry.name}={pkg.version}")


def _doc_deps(pkg: _Package, entries: Sequence[Entry], gen: _Generated) -> None:
    if not pkg.name.endswith("-doc"):
        return
    for dep, directory in (("man-db", "usr/share/man"), ("texinfo", "usr/share/info")):
        if any(is_in_dir(e.path, (directory,)) for e in entries):
            if dep in pkg.declared_runtime:
                gen.warn(
                    directory,
                    f"{dep} dependency already specified, consider removing it in favor of "
                    "SCA-generated dependency",
                )
            gen.runtime.append(dep)


def _pkgconfig(pkg: _Package, entries: Sequence[Entry], gen: _Generated) -> None:
    for entry in entries:
        if not entry.path.endswith(".pc") or not entry.is_regular:
            continue
        try:
            data = pkg.tree.host_path(entry.path).read_bytes()
        except OSError:
            continue
        try:
            pc = parse_pc(data.decode("utf-8", "surrogateescape"))
        except PcParseError as exc:
            gen.warn(entry.path, f"unable to load .pc file using pkgconfig: {exc}")
            continue
        pc_name = entry.name.removesuffix(".pc")
        if is_in_dir(entry.path, PKGCONFIG_DIRS):
            gen.provide(entry.path, f"pc:{pc_name}={pkg.version}")
            for dep in (*pc.requires, *pc.requires_private, *pc.requires_internal):
                gen.depend(entry.path, f"pc:{dep.identifier}")
        else:
            gen.vendor(entry.path, f"pc:{pc_name}={pkg.version}")


def _python(pkg: _Package, entries: Sequence[Entry], gen: _Generated) -> None:
    version = where = ""
    for entry in entries:
        if entry.name != "site-packages":
            continue
        parent = go_base(go_dir(entry.path))
        if parent.startswith("python") and entry.is_dir:
            version, where = parent[len("python") :], entry.path
    if not version:
        return
    for dep in pkg.declared_runtime:
        if dep.startswith("python"):
            gen.warn(
                "",
                f"Python dependency {dep!r} already specified, consider removing it in favor "
                "of SCA-generated dependency",
            )
            return
    gen.depend(where, f"python-{version}-base")


def _ruby(pkg: _Package, gen: _Generated) -> None:
    gems_root = pkg.tree.resolve("usr/lib/ruby/gems")
    if gems_root is None or not gems_root.is_dir():
        return
    try:
        names = sorted((p.name for p in gems_root.iterdir()), key=os.fsencode)
    except OSError:
        return
    for name in names:
        if not _RUBY_VERSION_DIR.fullmatch(name):
            continue
        version_dir = gems_root / name
        try:
            if not version_dir.is_dir() or "gems" not in {p.name for p in version_dir.iterdir()}:
                continue
        except OSError:
            continue
        version = name[: len(name) - len(go_ext(name))]
        if not version:
            return
        for dep in pkg.declared_runtime:
            if dep.startswith("ruby-") or dep == "ruby":
                gen.warn("", f"Ruby dependency {dep!r} already specified")
                return
        gen.depend(f"usr/lib/ruby/gems/{name}", f"ruby-{version}")
        return


def _shebangs(pkg: _Package, entries: Sequence[Entry], gen: _Generated) -> None:
    commands: dict[str, str] = {}
    for entry in entries:
        if entry.is_symlink or entry.is_dir or not entry.is_regular:
            continue
        if not entry.path.startswith(_SHEBANG_DIRS):
            continue
        try:
            with pkg.tree.host_path(entry.path).open("rb") as f:
                head = f.read(HEAD)
        except OSError:
            continue
        try:
            command = interpreter_of(head)
        except ShebangError as exc:
            gen.warn(entry.path, f"error reading shbang: {exc}")
            continue
        if command:
            commands[go_base(command)] = entry.path
    for name, path in commands.items():
        gen.depend(path, f"cmd:{name}")
