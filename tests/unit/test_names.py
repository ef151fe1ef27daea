"""The one text rule and the one name rule (melange2.names)."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from melange2.names import (
    NAME_MAX,
    check_package_name,
    check_paths,
    check_relative_path,
    check_version,
    excerpt,
    text_problem,
)
from melange2.service.layout import Layout


@pytest.mark.parametrize(
    "name", ["a", "py3.12-foo_bar+x", "A9", "x" * NAME_MAX, "gcc-14", "libstdc++"]
)
def test_names_melange_accepts_pass_and_make_storage_keys(name: str) -> None:
    assert check_package_name(name) == name
    assert Layout().package("bld-00ff", name) == f"bld-00ff-{name}"  # the same rule


@pytest.mark.parametrize(
    "name",
    [
        "a..b",  # storage keys refuse '..': so does the parser, the same rule
        "x" * (NAME_MAX + 1),
        "\u0661\u0662",  # Arabic-Indic digits: Python's \d, not Go's
        "caf\u00e9",
        "-a",
        ".a",
        "",
        "a/b",
        "a b",
        "a\x00",
    ],
)
def test_other_names_are_refused_everywhere(name: str) -> None:
    with pytest.raises(ValueError, match="name"):
        check_package_name(name)
    with pytest.raises(ValueError):
        Layout().package("bld-00ff", name)


@pytest.mark.parametrize("version", ["1.0.0", "0_git20240101", "2.3_rc1"])
def test_versions_that_name_files_pass(version: str) -> None:
    assert check_version(version) == version


@pytest.mark.parametrize("version", ["../../x", "1/2", "1 0", "x" * 65, "", "1..2"])
def test_versions_that_cannot_name_a_file_are_refused(version: str) -> None:
    with pytest.raises(ValueError, match="version"):
        check_version(version)


def test_text_problems_name_nul_and_lone_surrogates() -> None:
    assert text_problem("ok \u00e9 \U0001f600") is None
    assert text_problem("a\x00b") == "contains a NUL character"
    problem = text_problem("x\ud800y")
    assert problem is not None and "lone surrogate" in problem and "\\ud800" in problem


def test_excerpts_are_short_and_escaped() -> None:
    shown = excerpt("A" * 10_000)
    assert len(shown) < 80 and shown.endswith("...")
    assert excerpt("\ud800\x00") == "'\\ud800\\x00'"
    shown.encode("utf-8")  # always encodable


def test_relative_paths_are_normalised_and_checked() -> None:
    assert check_relative_path("a//b/./c", "where") == PurePosixPath("a/b/c")
    for bad in ("/etc/passwd", "../x", "a/../../b", "", ".", "a\x00", "x" * 300):
        with pytest.raises(ValueError, match="where"):
            check_relative_path(bad, "where")


def test_a_file_cannot_also_be_a_directory_nor_named_twice() -> None:
    def given(*paths: str) -> list[tuple[str, PurePosixPath]]:
        return [(p, check_relative_path(p, "w")) for p in paths]

    check_paths(given("a/b", "a/c", "b"), "source_files")
    with pytest.raises(ValueError, match="is a file, so it cannot also be the directory"):
        check_paths(given("a", "a/b"), "source_files")
    with pytest.raises(ValueError, match="name the same file"):
        check_paths(given("a/b", "a//b"), "source_files")
