"""melange v0.34.0's package linters (``pkg/linter``), run as ``melange build`` runs them.

Each linter looks at one package tree and either passes or reports a finding: a message,
the files it is about, and melange's explanation of the fix. melange runs them after the
pipelines, before it writes any package: the main package first, then each subpackage in
config order. A *required* linter's finding fails the build (naming the linter and the
files); a *warning* linter's finding is a warning in the build log.

By default (melange's ``--lint-require``/``--lint-warn``):

required
    ``dev infodir setuidgid tempdir usrmerge varempty worldwrite``
warning
    ``binaryarch cudaruntimelib dll duplicate dylib lddcheck maninfo nonlinux object opt
    pkgconf python/docs python/multiple python/test sbom srv staticarchive strip
    unsupportedarch usrlocal``
off
    ``documentation empty``

``checks.disabled`` (of the package or a subpackage) turns a required linter into a
warning for that package, and turns an off one *on* as a warning; a name melange does not
know fails the build.

:func:`lint_build` also reproduces how melange v0.34.0 carries one package's
``checks.disabled`` over to the packages linted after it. melange filters its required
list in place (``slices.DeleteFunc`` on the slice the flag holds) and then appends the
warning linters to the shortened list, which writes into the same array: after a package
disables *k* required linters, the later packages of the build run without those *k*, and
the first *k* warning linters become required for them; when the append no longer fits
the array (a package that disables a required linter and three or more other names), the
freed slots stay empty and the next package fails with ``unknown linter: ""``. This is
melange's behaviour on the same config, measured against it
(tests/differential: the lint-carryover case), so a config builds here exactly when it
builds there.
"""

from __future__ import annotations

import hashlib
import math
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from melange2.sca._go import go_base, go_dir, go_ext
from melange2.sca.elf import ElfInfo, ElfUnreadable, machine_name
from melange2.sca.tree import Entry, PackageTree

__all__ = [
    "DEFAULT_REQUIRED",
    "DEFAULT_WARN",
    "LINTERS",
    "LintFinding",
    "LintReport",
    "LintTarget",
    "Linter",
    "lint_build",
    "lint_package",
    "unknown_linters",
]

# pkg/linter/linters/common.go
_INFO = re.compile(
    r"^usr/(?:local/)?share/info/(?:dir|[^/]+\.info(?:\-[0-9]+)?(?:\.(?:gz|bz2|xz|lzma|Z))?)\Z"
)
_CUDA_DRIVER_LIB = re.compile(r"^usr/lib/lib(cuda|nvidia-ml)\.so(\.[0-9]+)*\Z")
_DOCUMENTATION = re.compile(r"(?:READ(?:\.?ME)?|TODO|CREDITS|\.(?:md|docx?|rst|[0-9][a-z]))\Z")
_OBJECT_FILE = re.compile(r"\.(a|so|dylib)(\..*)?", re.DOTALL)
_SHARED_OBJECT = re.compile(r"\.so(?:\.[0-9]+)*\Z")
_TEMP_DIR = re.compile(r"^(var/)?(tmp|run)/")
_MAN = re.compile(
    r"^usr/(?:local/)?share/man(?:/man[0-9][^/]*)?(?:/[^/]+\.[0-9][^/]*(?:\.(?:gz|bz2|xz|lzma|Z))?)?\Z"
    r"|^usr/man(?:/man[0-9][^/]*)?(?:/[^/]+\.[0-9][^/]*(?:\.(?:gz|bz2|xz|lzma|Z))?)?\Z"
)
_PKGCONF_DIR = re.compile(r"^usr/(lib|share)/pkgconfig/")
_SBOM_DIR: Final = "var/lib/db/sbom/"


def _ignored(path: str) -> bool:
    """``IsIgnoredPath``: the SBOM melange writes is no business of the linters."""
    return path.startswith(_SBOM_DIR)


@dataclass(frozen=True, slots=True)
class _Problem:
    message: str
    #: the itemised details melange logs, one per line ("usr/bin/x (mode: 4755, setuid)")
    details: tuple[str, ...] = ()
    #: the files the finding is about
    paths: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class _Context:
    tree: PackageTree
    name: str
    test_uses: tuple[str, ...]

    @property
    def entries(self) -> list[Entry]:
        return self.tree.entries()

    def elf(self, entry: Entry) -> ElfInfo | ElfUnreadable | None:
        return self.tree.elf(self.tree.host_path(entry.path))


_Check = Callable[[_Context], "_Problem | None"]


@dataclass(frozen=True, slots=True)
class Linter:
    """One linter: its check, melange's explanation, and its default."""

    check: _Check
    explain: str
    default: Literal["require", "warn", "ignore"]


def _all_paths(
    ctx: _Context, predicate: Callable[[str], bool], message: Callable[[list[str]], str]
) -> _Problem | None:
    """``AllPaths``: every non-directory path the predicate accepts."""
    paths = [e.path for e in ctx.entries if not e.is_dir and predicate(e.path)]
    if not paths:
        return None
    return _Problem(message(paths), tuple(paths), tuple(paths))


def _plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else many


def _path_linter(
    predicate: Callable[[str], bool],
    message: Callable[[str, list[str]], str],
    *,
    unless_suffix: tuple[str, ...] = (),
) -> _Check:
    def check(ctx: _Context) -> _Problem | None:
        if unless_suffix and ctx.name.endswith(unless_suffix):
            return None
        return _all_paths(ctx, predicate, lambda paths: message(ctx.name, paths))

    return check


def _files(noun: str) -> Callable[[str, list[str]], str]:
    def message(name: str, paths: list[str]) -> str:
        return f"{name} contains {len(paths)} {noun} {_plural(len(paths), 'file', 'files')}"

    return message


def _mode_octal(mode: int) -> str:
    """``modeToOctal``: permission and special bits, in octal without a leading zero."""
    return format(mode & 0o7777, "o")


def _setuidgid(ctx: _Context) -> _Problem | None:
    found: list[tuple[str, str, list[str]]] = []
    for e in ctx.entries:
        if not e.is_regular:
            continue
        bits = [
            word
            for flag, word in (
                (stat.S_ISUID, "setuid"),
                (stat.S_ISGID, "setgid"),
                (stat.S_ISVTX, "sticky"),
            )
            if e.mode & flag
        ]
        if bits:
            found.append((e.path, _mode_octal(e.mode), bits))
    if not found:
        return None
    n = len(found)
    return _Problem(
        f"{ctx.name} contains {n} {_plural(n, 'file', 'files')} with special permissions "
        "(setuid/setgid)",
        tuple(f"{p} (mode: {m}, {'+'.join(b)})" for p, m, b in found),
        tuple(p for p, _, _ in found),
    )


def _worldwrite(ctx: _Context) -> _Problem | None:
    found: list[tuple[str, str, list[str]]] = []
    for e in ctx.entries:
        if not e.is_regular or not e.mode & 0o002:
            continue
        perms = ["world-writable"] + (["executable"] if e.mode & 0o111 else [])
        found.append((e.path, _mode_octal(e.mode), perms))
    if not found:
        return None
    n = len(found)
    return _Problem(
        f"{ctx.name} contains {n} world-writeable {_plural(n, 'file', 'files')}",
        tuple(f"{p} (mode: {m}) [{'+'.join(perms)}]" for p, m, perms in found),
        tuple(p for p, _, _ in found),
    )


def _executable_or_object(e: Entry) -> bool:
    """The files ``strip`` and ``binaryarch`` open: executable, or named like a library."""
    return bool(e.mode & 0o111) or _OBJECT_FILE.search(go_ext(e.path)) is not None


def _strip(ctx: _Context) -> _Problem | None:
    unstripped: list[str] = []
    for e in ctx.entries:
        if _ignored(e.path) or not e.is_regular or e.size < 4 or not _executable_or_object(e):
            continue
        info = ctx.elf(e)
        if isinstance(info, ElfUnreadable):
            # melange's walk stops here and the linter reports the error
            return _Problem(
                f"could not open file {_go_quote(e.path)} as executable: {info.reason}",
                (),
                (e.path,),
            )
        if info is not None and (".debug" in info.section_names or ".zdebug" in info.section_names):
            unstripped.append(e.path)
    if not unstripped:
        return None
    n = len(unstripped)
    return _Problem(
        f"{ctx.name} contains {n} unstripped {_plural(n, 'binary', 'binaries')}",
        tuple(unstripped),
        tuple(unstripped),
    )


_BINARY_ARCH_NAMES: Final = {
    62: "amd64",
    183: "arm64",
    3: "i386",
    40: "arm",
    21: "ppc64",
    22: "s390",
    8: "mips",
    243: "riscv",
}


def _binaryarch(ctx: _Context) -> _Problem | None:
    found: list[tuple[str, str]] = []
    for e in ctx.entries:
        if _ignored(e.path) or not e.is_regular or e.size < 4 or not _executable_or_object(e):
            continue
        info = ctx.elf(e)
        if not isinstance(info, ElfInfo) or info.machine in (62, 183):
            continue
        arch = _BINARY_ARCH_NAMES.get(info.machine, f"unknown ({machine_name(info.machine)})")
        found.append((e.path, arch))
    if not found:
        return None
    n = len(found)
    return _Problem(
        f"{ctx.name} contains {n} {_plural(n, 'binary', 'binaries')} compiled for "
        "unsupported architecture(s)",
        tuple(f"{p} ({a})" for p, a in found),
        tuple(p for p, _ in found),
    )


def _empty(ctx: _Context) -> _Problem | None:
    for e in ctx.entries:
        if _ignored(e.path) or e.is_dir:
            continue
        return None
    return _Problem("package is empty but no-provides is not set")


def _python_site_packages(ctx: _Context) -> tuple[list[str], str]:
    """``GetPythonSitePackages``: the entries of the one ``usr/lib/python3.*/site-packages``."""
    dirs = [e.path for e in ctx.entries if go_dir(e.path) == "usr/lib" and _glob_python(e.name)]
    if not dirs:
        return [], ""
    if len(dirs) > 1:
        return [], f"more than one Python version detected: {len(dirs)} found"
    site = f"{dirs[0]}/site-packages"
    real = ctx.tree.resolve(site)
    if real is None or not real.is_dir():
        return [], ""
    names = sorted(
        (p.name for p in real.iterdir()), key=lambda n: n.encode("utf-8", "surrogateescape")
    )
    return [f"{site}/{n}" for n in names], ""


def _glob_python(name: str) -> bool:
    return name.startswith("python3.")


def _python_check(test: Callable[[list[str]], _Problem | None]) -> _Check:
    def check(ctx: _Context) -> _Problem | None:
        packages, error = _python_site_packages(ctx)
        if error:
            return _Problem(error)
        return test(packages)

    return check


def _python_docs(packages: list[str]) -> _Problem | None:
    if any(go_base(m) in ("doc", "docs") for m in packages):
        return _Problem("docs directory encountered in Python site-packages directory")
    return None


def _python_test(packages: list[str]) -> _Problem | None:
    if any(go_base(m) in ("test", "tests") for m in packages):
        return _Problem("tests directory encountered in Python site-packages directory")
    return None


def _go_quote(text: str) -> str:
    out = ['"']
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        else:
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x80 else f"\\u{ord(c):04x}")
    out.append('"')
    return "".join(out)


def _python_multiple(packages: list[str]) -> _Problem | None:
    names: set[str] = set()
    for m in packages:
        base = go_base(m)
        if base.startswith("_") or base in ("test", "tests", "doc", "docs"):
            continue
        ext = go_ext(base)
        if ext in (".egg-info", ".dist-info", ".pth"):
            continue
        if ext:
            # melange keeps the first len(ext) characters (meaning to cut the extension)
            base = base[: len(ext)]
            if not base:
                continue
        names.add(_go_quote(base))
    if len(names) <= 1:
        return None
    listed = sorted(names)
    return _Problem(
        f"multiple Python packages detected: {len(listed)} found ({', '.join(listed)})",
        tuple(listed),
    )


def _has_test(ctx: _Context, *uses: str) -> bool:
    return any(u in uses for u in ctx.test_uses)


def _pkgconf(ctx: _Context) -> _Problem | None:
    if _has_test(ctx, "test/pkgconf"):
        return None
    return _all_paths(
        ctx,
        lambda p: _PKGCONF_DIR.search(p) is not None,
        lambda _: f"{ctx.name} contains pkgconfig files but test/pkgconf is not configured",
    )


def _lddcheck(ctx: _Context) -> _Problem | None:
    if _has_test(ctx, "test/ldd-check", "test/tw/ldd-check"):
        return None
    return _all_paths(
        ctx,
        lambda p: _SHARED_OBJECT.search(p) is not None,
        lambda _: f"{ctx.name} contains shared objects but test/ldd-check is not configured",
    )


_USRMERGE_DIRS: Final = ("sbin", "bin", "usr/sbin", "lib", "lib64")


def _in_dirs(path: str, dirs: Iterable[str]) -> bool:
    return any(path == d or path.startswith(d + "/") for d in dirs)


def _usrmerge(ctx: _Context) -> _Problem | None:
    """``UsrmergeLinter``, with ``fs.WalkDir``'s ``SkipDir``: returned for a directory it
    skips the directory, returned for a file it skips the rest of the file's directory
    (so a file sorted before ``bin`` at the top, or before ``sbin`` in ``usr``, hides it)."""
    paths: list[str] = []
    entries = ctx.entries
    i = 0
    while i < len(entries):
        e = entries[i]
        i += 1
        path = e.path
        if _ignored(path) or (path not in (".", "usr") and not _in_dirs(path, _USRMERGE_DIRS)):
            i = _skip_dir(entries, i, path if e.is_dir else go_dir(path))
            continue
        if path in _USRMERGE_DIRS and (e.is_dir or e.is_regular):
            paths.append(path)
            continue
        if _in_dirs(path, _USRMERGE_DIRS):
            paths.append(path)
    if not paths:
        return None
    return _Problem(
        "\n".join(["Package contains paths in violation of usrmerge:", *paths]),
        tuple(paths),
        tuple(paths),
    )


def _skip_dir(entries: list[Entry], i: int, directory: str) -> int:
    """The index after every entry below ``directory`` (the root is ``"."``)."""
    if directory == ".":
        return len(entries)
    prefix = directory + "/"
    while i < len(entries) and entries[i].path.startswith(prefix):
        i += 1
    return i


_PLATFORMS: Final = {
    "macos": ("darwin", "macos", "mac_os", "mac-os", "osx", "os_x", "os-x"),
    "windows": ("windows", "win32", "win64"),
}


def _nonlinux(ctx: _Context) -> _Problem | None:
    found: list[tuple[str, str]] = []
    for e in ctx.entries:
        if e.is_dir:
            continue
        d, b = go_dir(e.path).lower(), e.name.lower()
        for platform, variants in _PLATFORMS.items():
            if any(v in d or v in b for v in variants):
                found.append((e.path, platform))
                break
    if not found:
        return None
    return _Problem(
        f"{ctx.name} contains {len(found)} non-Linux reference(s)",
        tuple(f"{p} ({a})" for p, a in found),
        tuple(p for p, _ in found),
    )


_SUPPORTED: Final = ("aarch64", "arm64", "amd64", "x86_64", "x86-64")
_UNSUPPORTED: Final = (
    "i386", "i686", "x86_32", "x86-32", "ppc64", "ppc64le", "powerpc", "s390x", "s390",
    "mips", "mipsel", "mips64", "riscv", "riscv64", "sparc", "sparc64", "ia64", "m68k",
)  # fmt: skip


def _unsupported_arch_of(path: str) -> str:
    lower = path.lower()
    if not any(arch in lower for arch in _UNSUPPORTED):
        return ""
    d, b = go_dir(path).lower(), go_base(path).lower()
    for arch in _UNSUPPORTED:
        # melange's test reads `A || B && C` with C always true: a "/<arch>" anywhere
        if f"/{arch}/" in d or f"/{arch}" in d:
            return arch
        named = any(
            f"{sep}{arch}{sep}" in b or f"{sep}{arch}." in b or b.endswith(sep + arch)
            for sep in "-_."
        )
        if named and not any(s in lower for s in _SUPPORTED):
            return arch
    return ""


def _unsupportedarch(ctx: _Context) -> _Problem | None:
    found = [
        (e.path, a) for e in ctx.entries if not e.is_dir and (a := _unsupported_arch_of(e.path))
    ]
    if not found:
        return None
    return _Problem(
        f"{ctx.name} contains {len(found)} unsupported architecture reference(s)",
        tuple(f"{p} ({a})" for p, a in found),
        tuple(p for p, _ in found),
    )


# pkg/license/regexp.go, for the duplicate linter's "is this a license file"
_LICENSE = r"(un)?licen[sc]e"
_COPYING = r"copy(ing|right)"
# melange quotes ".md" etc. into the group after a "\.": the pattern wants "LICENSE..md"
_PREFERRED_EXT = r"\.(?:\.md|\.markdown|\.txt|\.html)\Z"
_ANY_EXT = r"(\.[^./]+\Z)"
_W = "[0-9A-Za-z_]"
_LICENSE_FILES: Final = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        rf"^{_LICENSE}\Z",
        rf"^{_LICENSE}{_PREFERRED_EXT}\Z",
        rf"^{_COPYING}\Z",
        rf"^{_COPYING}{_PREFERRED_EXT}\Z",
        rf"^{_LICENSE}{_ANY_EXT}\Z",
        rf"^{_COPYING}{_ANY_EXT}\Z",
        rf"^{_LICENSE}[-_][^.]*{_ANY_EXT}?\Z",
        rf"^{_COPYING}[-_][^.]*{_ANY_EXT}?\Z",
        rf"^{_W}+[-_]{_LICENSE}[^.]*{_ANY_EXT}?\Z",
        rf"^{_W}+[-_]{_COPYING}[^.]*{_ANY_EXT}?\Z",
        rf"^ofl{_PREFERRED_EXT}",
        rf"^ofl{_ANY_EXT}",
        r"^ofl\Z",
        r"^patents\Z",
        rf"^patents{_ANY_EXT}\Z",
    )
)
_LICENSE_IGNORED_EXT: Final = (".xml", ".go", ".gemspec", ".spdx", ".header")
_SEMVER_SEGMENT = re.compile(r"\-[0-9]+\.[0-9]+\.[0-9]+\-")


def _is_license_file(path: str) -> bool:
    """``license.IsLicenseFile(path, true)``."""
    name = go_base(_SEMVER_SEGMENT.sub("-", path))
    if go_ext(name) in _LICENSE_IGNORED_EXT:
        return False
    return any(r.search(name) for r in _LICENSE_FILES)


def _humanize_bytes(size: int) -> str:
    """go-humanize's ``Bytes`` (SI units)."""
    if size < 10:
        return f"{size} B"
    e = math.floor(math.log(size) / math.log(1000))
    suffix = ("B", "kB", "MB", "GB", "TB", "PB", "EB")[e]
    val = math.floor(size / 1000**e * 10 + 0.5) / 10
    return f"{val:.1f} {suffix}" if val < 10 else f"{val:.0f} {suffix}"


def _duplicate(ctx: _Context) -> _Problem | None:
    # melange hashes every regular file of 1 KiB or more and groups by (hash, name); only
    # files sharing a name and a size can share both, so only those are hashed here
    candidates: dict[tuple[str, int], list[Entry]] = {}
    for e in ctx.entries:
        if not e.is_regular or e.size < 1024 or _is_license_file(e.path):
            continue
        candidates.setdefault((e.name, e.size), []).append(e)
    groups: dict[tuple[str, str], list[str]] = {}
    sizes: dict[tuple[str, str], int] = {}
    for same in candidates.values():
        if len(same) < 2:
            continue
        for e in same:
            try:
                with ctx.tree.host_path(e.path).open("rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
            except OSError as exc:
                return _Problem(f"opening file {e.path}: {exc}")
            key = (digest, e.name)
            groups.setdefault(key, []).append(e.path)
            sizes.setdefault(key, e.size)
    sets = [
        (len(paths), sizes[key], (len(paths) - 1) * sizes[key], sorted(paths), key[1])
        for key, paths in groups.items()
        if len(paths) > 1
    ]
    if not sets:
        return None
    sets.sort(key=lambda s: (-s[2], s[4]))
    total = sum(s[2] for s in sets)
    lines: list[str] = []
    for count, size, wasted, paths, base in sets:
        lines.append(
            f"  {count} copies of '{base}' ({_humanize_bytes(size)} each, "
            f"wasting {_humanize_bytes(wasted)}):"
        )
        lines.extend(f"    {p}" for p in paths)
    summary = (
        f"{ctx.name} contains {len(sets)} duplicate file(s) with same name in different "
        f"directories (wasting {_humanize_bytes(total)} total)"
    )
    return _Problem(
        f"{summary}:\n" + "\n".join(lines),
        tuple(f"{b} ({c} copies, {_humanize_bytes(w)} wasted)" for c, _, w, _, b in sets),
        tuple(p for s in sets for p in s[3]),
    )


LINTERS: Final[dict[str, Linter]] = {
    "dev": Linter(
        _path_linter(lambda p: p.startswith("dev/"), lambda n, _: f"{n} writes to /dev"),
        "If this package is creating /dev nodes, it should use udev instead; otherwise, "
        "remove any files in /dev",
        "require",
    ),
    "documentation": Linter(
        _path_linter(
            lambda p: _DOCUMENTATION.search(p) is not None,
            lambda n, ps: (
                f"{n} contains {len(ps)} documentation "
                f"{_plural(len(ps), 'file', 'files')} but is not a documentation package"
            ),
            unless_suffix=("-doc",),
        ),
        "Place documentation into a separate package or remove it",
        "ignore",
    ),
    "opt": Linter(
        _path_linter(
            lambda p: p.startswith("opt/"),
            lambda n, _: f"{n} writes to /opt",
            unless_suffix=("-compat",),
        ),
        "This package should be a -compat package",
        "warn",
    ),
    "object": Linter(
        _path_linter(
            lambda p: go_ext(p) == ".o",
            lambda n, ps: (
                f"{n} contains {len(ps)} intermediate object "
                f"{_plural(len(ps), 'file', 'files')}. This is usually wrong. In most cases they "
                "should be removed"
            ),
        ),
        "This package contains intermediate object files (.o files)",
        "warn",
    ),
    "maninfo": Linter(
        _path_linter(
            lambda p: _MAN.search(p) is not None or _INFO.search(p) is not None,
            lambda n, ps: (
                f"{n} contains {len(ps)} man/info "
                f"{_plural(len(ps), 'file', 'files')} but is not a documentation package"
            ),
            unless_suffix=("-doc",),
        ),
        "Place documentation into a separate package or remove it",
        "warn",
    ),
    "sbom": Linter(
        _path_linter(
            lambda p: go_dir(p) == "var/lib/db/sbom" and not p.endswith(".spdx.json"),
            lambda n, _: f"{n} writes to var/lib/db/sbom",
        ),
        "Remove any files in /var/lib/db/sbom from the package",
        "warn",
    ),
    "setuidgid": Linter(
        _setuidgid,
        "Unset the setuid/setgid bit on the relevant files, or remove this linter",
        "require",
    ),
    "srv": Linter(
        _path_linter(
            lambda p: p.startswith("srv/"),
            lambda n, _: f"{n} writes to /srv",
            unless_suffix=("-compat",),
        ),
        "This package should be a -compat package",
        "warn",
    ),
    "tempdir": Linter(
        _path_linter(
            lambda p: _TEMP_DIR.search(p) is not None, lambda n, _: f"{n} writes to a temp dir"
        ),
        "Remove any offending files in temporary dirs in the pipeline",
        "require",
    ),
    "usrlocal": Linter(
        _path_linter(
            lambda p: p.startswith("usr/local/"),
            lambda n, _: f"{n} contains /usr/local path in non-compat package",
            unless_suffix=("-compat",),
        ),
        "This package should be a -compat package",
        "warn",
    ),
    "varempty": Linter(
        _path_linter(
            lambda p: p.startswith("var/empty/"), lambda n, _: f"{n} writes to /var/empty"
        ),
        "Remove any offending files in /var/empty in the pipeline",
        "require",
    ),
    "worldwrite": Linter(
        _worldwrite,
        "Change the permissions of any permissive files in the package, disable the linter, "
        "or make this a -compat package",
        "require",
    ),
    "strip": Linter(_strip, "Properly strip all binaries in the pipeline", "warn"),
    "infodir": Linter(
        _path_linter(
            lambda p: p.startswith("usr/share/info/dir/"),
            lambda n, _: f"{n} writes to /usr/share/info/dir/",
        ),
        "Remove /usr/share/info/dir from the package (run split/infodir)",
        "require",
    ),
    "empty": Linter(
        _empty,
        "Verify that this package is supposed to be empty; if it is, disable this linter; "
        "otherwise check the build",
        "ignore",
    ),
    "python/docs": Linter(
        _python_check(_python_docs), "Remove all docs directories from the package", "warn"
    ),
    "python/multiple": Linter(
        _python_check(_python_multiple),
        "Split this package up into multiple packages and verify you are not improperly "
        "using pip install",
        "warn",
    ),
    "python/test": Linter(
        _python_check(_python_test), "Remove all test directories from the package", "warn"
    ),
    "pkgconf": Linter(
        _pkgconf,
        "This package provides files in a pkgconfig directory, please add the pkgconf test "
        "pipeline",
        "warn",
    ),
    "lddcheck": Linter(
        _lddcheck,
        "This package provides shared object files, please add the ldd-check test pipeline",
        "warn",
    ),
    "usrmerge": Linter(_usrmerge, "Move binary to /usr/bin", "require"),
    "cudaruntimelib": Linter(
        _path_linter(
            lambda p: _CUDA_DRIVER_LIB.search(p) is not None,
            lambda n, _: f"{n} contains CUDA driver-specific libraries",
        ),
        "CUDA driver-specific libraries should be passed into the container by the host. "
        "Installing them in an image could override the host libraries and break GPU "
        "support. If this library is needed for build-time linking or ldd-check tests, "
        "please use a package containing a stub library instead. For libcuda.so, use "
        "nvidia-cuda-cudart-$cuda_version. For libnvidia-ml.so, use "
        "nvidia-cuda-nvml-dev-$cuda_version.",
        "warn",
    ),
    "dll": Linter(
        _path_linter(lambda p: go_ext(p) == ".dll", _files("DLL"), unless_suffix=("-dev",)),
        "This package contains Windows libraries",
        "warn",
    ),
    "dylib": Linter(
        _path_linter(lambda p: go_ext(p) == ".dylib", _files("dylib"), unless_suffix=("-dev",)),
        "This package contains macOS libraries",
        "warn",
    ),
    "nonlinux": Linter(_nonlinux, "This package contains references to non-Linux paths", "warn"),
    "unsupportedarch": Linter(
        _unsupportedarch,
        "This package contains references to unsupported architectures (only aarch64/arm64 "
        "and amd64/x86_64 are supported)",
        "warn",
    ),
    "binaryarch": Linter(
        _binaryarch,
        "This package contains binaries compiled for unsupported architectures (only "
        "aarch64/arm64 and amd64/x86_64 binaries are supported)",
        "warn",
    ),
    "staticarchive": Linter(
        _path_linter(
            lambda p: go_ext(p) == ".a",
            lambda n, ps: (
                f"{n} contains {len(ps)} static "
                f"{_plural(len(ps), 'archive', 'archives')}. Static archives bloat packages and "
                "should typically be in -dev packages or removed"
            ),
            unless_suffix=("-dev", "-static"),
        ),
        "This package contains static archives (.a files)",
        "warn",
    ),
    "duplicate": Linter(
        _duplicate,
        "This package contains files with the same name and content in different directories "
        "(consider symlinking)",
        "warn",
    ),
}

#: melange's ``DefaultRequiredLinters()``: the default of ``--lint-require``
DEFAULT_REQUIRED: Final = tuple(sorted(n for n, lt in LINTERS.items() if lt.default == "require"))
#: melange's ``DefaultWarnLinters()``: the default of ``--lint-warn``
DEFAULT_WARN: Final = tuple(sorted(n for n, lt in LINTERS.items() if lt.default == "warn"))


def unknown_linters(names: Iterable[str]) -> list[str]:
    """The names melange does not know (each fails melange's build)."""
    return [n for n in names if n not in LINTERS]


@dataclass(frozen=True, kw_only=True, slots=True)
class LintFinding:
    """One linter's finding about one package."""

    linter: str
    package: str
    #: melange's message (its first line is the summary)
    message: str
    #: what melange suggests doing about it
    explain: str
    #: itemised details, one per file or group
    details: tuple[str, ...] = ()
    #: the files it is about
    paths: tuple[str, ...] = ()
    #: whether it fails the build
    required: bool = False

    @property
    def summary(self) -> str:
        return self.message.split("\n", 1)[0]

    def log_lines(self) -> list[str]:
        """The lines melange logs for it."""
        first, *rest = self.message.split("\n")
        lines = [f"[{self.linter}] {first}", *(f"  {line}" for line in rest if line)]
        if self.explain:
            lines.append(f"  → {self.explain}")
        lines.extend(f"    - {d}" for d in self.details)
        return lines

    def failure(self) -> str:
        """The error of a required linter, naming it and the files."""
        text = f'linter "{self.linter}" failed for {self.package}: {self.summary}'
        if self.paths:
            shown = ", ".join(self.paths[:10])
            more = f" and {len(self.paths) - 10} more" if len(self.paths) > 10 else ""
            text += f" ({shown}{more})"
        return text


def lint_package(
    tree: Path | PackageTree,
    *,
    name: str,
    require: Sequence[str] = DEFAULT_REQUIRED,
    warn: Sequence[str] = DEFAULT_WARN,
    test_uses: Sequence[str] = (),
) -> tuple[list[LintFinding], str]:
    """Run ``warn`` then ``require`` on one package (melange's ``LintBuild``).

    ``test_uses`` are the ``uses:`` of the package's test pipeline (``test/pkgconf`` and
    ``test/ldd-check`` quiet two linters). Returns the findings and, when the package
    fails, the error: an unknown linter name, or the required linters that found something.
    """
    unknown = unknown_linters([*require, *warn])
    if unknown:
        return [], "\n".join(f"unknown linter: {_go_quote(n)}" for n in unknown)
    ctx = _Context(
        tree=tree if isinstance(tree, PackageTree) else PackageTree(Path(tree)),
        name=name,
        test_uses=tuple(test_uses),
    )
    findings: list[LintFinding] = []
    errors: list[str] = []
    for names, required in ((warn, False), (require, True)):
        for linter_name in names:
            linter = LINTERS[linter_name]
            problem = linter.check(ctx)
            if problem is None:
                continue
            finding = LintFinding(
                linter=linter_name,
                package=name,
                message=problem.message,
                explain=linter.explain,
                details=problem.details,
                paths=problem.paths,
                required=required,
            )
            findings.append(finding)
            if required:
                errors.append(finding.failure())
    return findings, "\n".join(errors)


@dataclass(frozen=True, kw_only=True, slots=True)
class LintTarget:
    """One package of a build, to lint."""

    name: str
    tree: Path | PackageTree
    #: its ``checks.disabled``
    disabled: tuple[str, ...] = ()
    #: the ``uses:`` of its ``test.pipeline``
    test_uses: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class LintReport:
    """What linting a build found; ``error`` is set when the build fails."""

    findings: tuple[LintFinding, ...] = ()
    #: "" when the build may go on; else melange's reason, naming package, linter and files
    error: str = ""
    #: the packages linted (melange stops at the first that fails)
    linted: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return bool(self.error)


@dataclass
class _GoSlice:
    """A Go ``[]string`` header over a shared array (what melange's lint lists are)."""

    array: list[str]
    length: int
    cap: int = field(default=0)

    def __post_init__(self) -> None:
        if not self.cap:
            self.cap = len(self.array)

    def items(self) -> list[str]:
        return self.array[: self.length]


def _delete_func(s: _GoSlice, drop: Callable[[str], bool]) -> _GoSlice:
    """``slices.DeleteFunc``: compacts in place and zeroes the freed tail."""
    kept = [v for v in s.items() if not drop(v)]
    if len(kept) == s.length:
        return s
    s.array[: len(kept)] = kept
    s.array[len(kept) : s.length] = [""] * (s.length - len(kept))
    return _GoSlice(s.array, len(kept), s.cap)


def _append(s: _GoSlice, values: Sequence[str]) -> _GoSlice:
    """``append``: in place when it fits the capacity, else into a new array."""
    n = s.length + len(values)
    if n <= s.cap:
        s.array[s.length : n] = list(values)
        return _GoSlice(s.array, n, s.cap)
    fresh = [*s.items(), *values]
    return _GoSlice(fresh, n, n)


def _compact(s: _GoSlice) -> _GoSlice:
    """``slices.CompactFunc`` with ``==``: drops consecutive repeats in place."""
    items = s.items()
    out = [v for i, v in enumerate(items) if i == 0 or v != items[i - 1]]
    if len(out) == s.length:
        return s
    s.array[: len(out)] = out
    s.array[len(out) : s.length] = [""] * (s.length - len(out))
    return _GoSlice(s.array, len(out), s.cap)


def _flag_default(names: tuple[str, ...]) -> _GoSlice:
    # DefaultRequiredLinters/DefaultWarnLinters filter maps.Keys(linterMap): an array with
    # room for every linter, the rest zeroed
    array = [*names, *([""] * (len(LINTERS) - len(names)))]
    return _GoSlice(array, len(names), len(LINTERS))


def lint_build(targets: Sequence[LintTarget]) -> LintReport:
    """Lint the packages of one build in order (the main package first), with melange's
    default lists, each package's ``checks.disabled``, and melange v0.34.0's carry-over
    of one package's ``disabled`` to the next (see the module docstring). Stops at the
    first package that fails, as melange does."""
    lint_require = _flag_default(DEFAULT_REQUIRED)
    lint_warn = _flag_default(DEFAULT_WARN)
    findings: list[LintFinding] = []
    linted: list[str] = []
    for target in targets:
        disabled = target.disabled
        require = _delete_func(lint_require, disabled.__contains__)
        warn = _compact(_append(lint_warn, disabled))
        # LintBuild's checkLinters(append(require, warn...)) writes into require's array
        _append(require, warn.items())
        found, error = lint_package(
            target.tree,
            name=target.name,
            require=require.items(),
            warn=warn.items(),
            test_uses=target.test_uses,
        )
        findings.extend(found)
        linted.append(target.name)
        if error:
            return LintReport(
                findings=tuple(findings),
                error=f"unable to lint package {target.name}: {error}",
                linted=tuple(linted),
            )
    return LintReport(findings=tuple(findings), linted=tuple(linted))
