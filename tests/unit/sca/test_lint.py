"""melange v0.34.0's linters on hand-made trees (the carry-over cases are also checked
against melange itself by tests/differential/test_sca.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from melange2.sca.lint import (
    DEFAULT_REQUIRED,
    DEFAULT_WARN,
    LINTERS,
    LintTarget,
    lint_build,
    lint_package,
)
from tests.unit.sca.conftest import AARCH64_LIB, Spec, make_tree


def findings(
    tmp_path: Path, spec: dict[str, Spec], name: str = "pkg", **kw: object
) -> dict[str, list[str]]:
    tree = make_tree(tmp_path / name, spec)
    found, _ = lint_package(tree, name=name, **kw)  # type: ignore[arg-type]
    return {f.linter: list(f.paths) for f in found}


def test_the_default_lists_are_melanges() -> None:
    assert len(LINTERS) == 29
    assert DEFAULT_REQUIRED == (
        "dev", "infodir", "setuidgid", "tempdir", "usrmerge", "varempty", "worldwrite",
    )  # fmt: skip
    assert DEFAULT_WARN == (
        "binaryarch", "cudaruntimelib", "dll", "duplicate", "dylib", "lddcheck", "maninfo",
        "nonlinux", "object", "opt", "pkgconf", "python/docs", "python/multiple", "python/test",
        "sbom", "srv", "staticarchive", "strip", "unsupportedarch", "usrlocal",
    )  # fmt: skip
    assert {n for n, lt in LINTERS.items() if lt.default == "ignore"} == {"documentation", "empty"}


def test_a_clean_package_passes(tmp_path: Path) -> None:
    assert findings(tmp_path, {"usr/bin/x": ("exec", "x"), "usr/share/x/data": "d"}) == {}


@pytest.mark.parametrize(
    ("path", "linter"),
    [
        ("dev/null-ish", "dev"),
        ("tmp/leftover", "tempdir"),
        ("var/tmp/leftover", "tempdir"),
        ("run/x.pid", "tempdir"),
        ("var/empty/x", "varempty"),
        ("usr/share/info/dir/x", "infodir"),
        ("opt/app/x", "opt"),
        ("srv/www/x", "srv"),
        ("usr/local/share/x", "usrlocal"),
        ("usr/lib/x.o", "object"),
        ("usr/lib/libx.a", "staticarchive"),
        ("usr/lib/x.dll", "dll"),
        ("usr/lib/x.dylib", "dylib"),
        ("usr/share/man/man1/x.1.gz", "maninfo"),
        ("usr/share/info/x.info", "maninfo"),
        ("var/lib/db/sbom/notes.txt", "sbom"),
        ("usr/lib/libcuda.so.1", "cudaruntimelib"),
        ("usr/lib/libx.so.1.2", "lddcheck"),
        ("usr/lib/pkgconfig/x.pc", "pkgconf"),
        ("usr/share/darwin/x", "nonlinux"),
        ("usr/lib/x-win64.exe", "nonlinux"),
        ("usr/lib/i386-linux-gnu/libx", "unsupportedarch"),
        ("usr/share/x/data-ppc64le.bin", "unsupportedarch"),
        ("sbin/x", "usrmerge"),
        ("usr/sbin/x", "usrmerge"),
        ("lib64/x", "usrmerge"),
    ],
)
def test_each_path_linter(tmp_path: Path, path: str, linter: str) -> None:
    found = findings(tmp_path, {path: "x"})
    assert linter in found
    assert path in found[linter]


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("pkg-compat", "opt/app/x"),
        ("pkg-compat", "usr/local/x"),
        ("pkg-doc", "usr/share/man/man1/x.1"),
        ("pkg-dev", "usr/lib/x.dll"),
        ("pkg-static", "usr/lib/libx.a"),
    ],
)
def test_packages_named_for_it_may(tmp_path: Path, name: str, path: str) -> None:
    assert findings(tmp_path, {path: "x"}, name=name) == {}


def test_a_sbom_file_is_fine_and_supported_arches_too(tmp_path: Path) -> None:
    spec: dict[str, Spec] = {
        "var/lib/db/sbom/pkg-1.0-r0.spdx.json": "{}",
        "usr/lib/x86_64-linux-gnu/libx.txt": "x",
        "usr/lib/libattr.so.1.1.2501": AARCH64_LIB,
    }
    found = findings(tmp_path, spec)
    assert set(found) == {"lddcheck"}  # the library; arm64 is a supported binary arch


def test_tests_configured_quiet_pkgconf_and_lddcheck(tmp_path: Path) -> None:
    spec: dict[str, Spec] = {"usr/lib/pkgconfig/x.pc": "x", "usr/lib/libx.so": "x"}
    quiet = findings(tmp_path, spec, test_uses=("test/pkgconf", "test/tw/ldd-check"))
    assert quiet == {}


def test_special_permissions(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path / "p",
        {"usr/bin/su": ("4755", "x"), "usr/bin/w": ("0666", "x"), "usr/bin/ok": ("0755", "x")},
    )
    found, error = lint_package(tree, name="p")
    by = {f.linter: f for f in found}
    assert by["setuidgid"].details == ("usr/bin/su (mode: 4755, setuid)",)
    assert by["worldwrite"].details == ("usr/bin/w (mode: 666) [world-writable]",)
    assert 'linter "setuidgid" failed for p' in error and "usr/bin/su" in error
    assert 'linter "worldwrite" failed for p' in error and "usr/bin/w" in error


def test_warnings_do_not_fail_and_required_do(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "p", {"opt/x": "x", "var/empty/y": "y"})
    found, error = lint_package(tree, name="p")
    assert {(f.linter, f.required) for f in found} == {("opt", False), ("varempty", True)}
    assert error == 'linter "varempty" failed for p: p writes to /var/empty (var/empty/y)'


def test_log_lines_are_melanges(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "p", {"bin/x": "x"})
    (finding,), _ = lint_package(tree, name="p")
    assert finding.log_lines() == [
        "[usrmerge] Package contains paths in violation of usrmerge:",
        "  bin",
        "  bin/x",
        "  → Move binary to /usr/bin",
        "    - bin",
        "    - bin/x",
    ]


def test_usrmerge_walks_as_melange_does(tmp_path: Path) -> None:
    # a link /bin is a violation too
    tree = make_tree(tmp_path / "a", {"bin": ("link", "usr/bin"), "usr/bin/x": "x"})
    assert [f.paths for f in lint_package(tree, name="a")[0]] == [("bin",)]
    # melange's walk returns SkipDir for a file outside the usrmerge dirs, which skips the
    # rest of that file's directory: a top-level file sorted before "bin" hides it
    tree = make_tree(tmp_path / "b", {"aaa": "x", "bin/x": "x", "usr/sbin/y": "y"})
    assert lint_package(tree, name="b") == ([], "")
    tree = make_tree(tmp_path / "c", {"usr/aaa": "x", "usr/sbin/y": "y", "sbin/z": "z"})
    (finding,), _ = lint_package(tree, name="c")
    assert finding.paths == ("sbin", "sbin/z")


def test_python_linters(tmp_path: Path) -> None:
    site = "usr/lib/python3.12/site-packages"
    found = findings(
        tmp_path,
        {
            f"{site}/docs/x": "x",
            f"{site}/tests/x": "x",
            f"{site}/alpha/x": "x",
            f"{site}/beta.py": "x",
        },
    )
    assert {"python/docs", "python/test", "python/multiple"} <= set(found)
    two = findings(
        tmp_path,
        {"usr/lib/python3.11/x": "x", "usr/lib/python3.12/y": "y"},
        name="two",
        warn=("python/test",),
        require=(),
    )
    assert two == {"python/test": []}  # "more than one Python version detected"


def test_python_multiple_keeps_melanges_truncation(tmp_path: Path) -> None:
    tree = make_tree(
        tmp_path / "p",
        {
            "usr/lib/python3.12/site-packages/typing_extensions.py": "x",
            "usr/lib/python3.12/site-packages/typ/x": "x",
        },
    )
    # melange keeps len(ext) characters of "typing_extensions.py": "typ", the same name
    assert lint_package(tree, name="p", require=(), warn=("python/multiple",)) == ([], "")


def test_duplicates_over_a_kilobyte(tmp_path: Path) -> None:
    blob = b"x" * 2048
    tree = make_tree(
        tmp_path / "p",
        {
            "usr/share/a/data.bin": blob,
            "usr/share/b/data.bin": blob,
            "usr/share/c/other.bin": blob,
            "usr/share/a/LICENSE": blob,
            "usr/share/b/LICENSE": blob,
            "usr/share/a/small": b"s",
            "usr/share/b/small": b"s",
        },
    )
    (finding,), _ = lint_package(tree, name="p", require=(), warn=("duplicate",))
    assert finding.paths == ("usr/share/a/data.bin", "usr/share/b/data.bin")
    assert finding.details == ("data.bin (2 copies, 2.0 kB wasted)",)


def test_strip_reports_an_unreadable_elf_file(tmp_path: Path, libz: Path) -> None:
    tree = make_tree(
        tmp_path / "p",
        {"usr/lib/libz.so.1": libz, "usr/bin/broken": ("exec", libz.read_bytes()[:100])},
    )
    found, error = lint_package(tree, name="p", require=(), warn=("strip", "binaryarch"))
    assert [(f.linter, f.paths) for f in found] == [("strip", ("usr/bin/broken",))]
    assert error == ""


def test_empty_is_off_unless_disabled(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "p", {"var/lib/db/sbom/p.spdx.json": "{}"})
    assert lint_build([LintTarget(name="p", tree=tree)]).findings == ()
    report = lint_build([LintTarget(name="p", tree=tree, disabled=("empty",))])
    assert [(f.linter, f.required) for f in report.findings] == [("empty", False)]
    assert not report.failed


def test_disabling_a_required_linter_makes_it_a_warning(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "p", {"usr/sbin/x": "x"})
    assert lint_build([LintTarget(name="p", tree=tree)]).failed
    report = lint_build([LintTarget(name="p", tree=tree, disabled=("usrmerge",))])
    assert not report.failed
    assert [(f.linter, f.required) for f in report.findings] == [("usrmerge", False)]


def test_an_unknown_linter_fails(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "p", {"usr/bin/x": "x"})
    report = lint_build([LintTarget(name="p", tree=tree, disabled=("nosuch",))])
    assert report.error == 'unable to lint package p: unknown linter: "nosuch"'


def test_melange_carries_disabled_required_linters_over_to_later_packages(tmp_path: Path) -> None:
    main = make_tree(tmp_path / "main", {"bin/x": "x"})
    sub = make_tree(tmp_path / "sub", {"usr/sbin/z": "z", "usr/lib/libx.so": "x"})
    targets = [
        LintTarget(name="main", tree=main, disabled=("usrmerge", "empty")),
        LintTarget(name="sub", tree=sub),
    ]
    report = lint_build(targets)
    # the subpackage's /usr/sbin is not looked at: usrmerge fell out of the required list
    assert not report.failed
    assert [(f.package, f.linter) for f in report.findings] == [
        ("main", "usrmerge"),
        ("sub", "lddcheck"),
    ]
    # and the first warning linter (binaryarch) took its place as required: an i386-free
    # tree passes it; what changed is only visible as a failure, as melange fails


@pytest.mark.parametrize(
    ("disabled", "fails"),
    [
        (("usrmerge", "empty", "documentation"), False),
        (("usrmerge", "empty", "documentation", "strip"), True),
        (("empty", "documentation", "strip", "opt"), False),  # no required one: no effect
        (("usrmerge", "dev", "empty", "documentation", "strip"), True),
    ],
)
def test_when_melange_leaves_an_empty_name(
    tmp_path: Path, disabled: tuple[str, ...], fails: bool
) -> None:
    main = make_tree(tmp_path / "main", {"usr/bin/x": "x"})
    sub = make_tree(tmp_path / "sub", {"usr/share/y": "y"})
    report = lint_build(
        [LintTarget(name="main", tree=main, disabled=disabled), LintTarget(name="sub", tree=sub)]
    )
    assert report.failed is fails
    if fails:  # one line per empty slot, as Go's errors.Join writes them
        assert report.error.startswith('unable to lint package sub: unknown linter: ""')


def test_melange_fails_after_four_disabled_names(tmp_path: Path) -> None:
    main = make_tree(tmp_path / "main", {"bin/x": "x"})
    sub = make_tree(tmp_path / "sub", {"usr/share/y": "y"})
    report = lint_build(
        [
            LintTarget(
                name="main", tree=main, disabled=("usrmerge", "empty", "documentation", "strip")
            ),
            LintTarget(name="sub", tree=sub),
        ]
    )
    assert report.error == 'unable to lint package sub: unknown linter: ""'
    assert report.linted == ("main", "sub")


def test_linting_stops_at_the_first_failing_package(tmp_path: Path) -> None:
    bad = make_tree(tmp_path / "bad", {"var/empty/x": "x"})
    later = make_tree(tmp_path / "later", {"var/empty/y": "y"})
    report = lint_build([LintTarget(name="bad", tree=bad), LintTarget(name="later", tree=later)])
    assert report.linted == ("bad",)
    assert report.error.startswith("unable to lint package bad: ")


def test_a_fifo_or_a_dangling_link_does_not_stop_linting(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "p", {"usr/lib/libgone.so": ("link", "nowhere"), "usr/bin/x": "x"})
    os.mkfifo(tree / "usr/bin/fifo")
    found, error = lint_package(tree, name="p")
    assert error == ""
    assert {f.linter for f in found} == {"lddcheck"}
