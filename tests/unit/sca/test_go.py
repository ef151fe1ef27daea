"""Go's path and string semantics the analyzers rely on (expected values from Go's docs)."""

from __future__ import annotations

import pytest

from melange2.sca._go import go_base, go_dir, go_ext, go_fields, go_is_digit
from melange2.sca.tree import is_in_dir


@pytest.mark.parametrize(
    ("path", "base", "directory"),
    [
        ("usr/lib/libz.so.1", "libz.so.1", "usr/lib"),
        ("x", "x", "."),
        (".", ".", "."),
        ("", ".", "."),
        ("/", "/", "/"),
        ("/a", "a", "/"),
        ("a/b/", "b", "a/b"),
        ("a//b", "b", "a"),
        ("a/./b", "b", "a"),
        ("a/../b", "b", "."),
        ("//a/b", "b", "/a"),
    ],
)
def test_base_and_dir(path: str, base: str, directory: str) -> None:
    assert go_base(path) == base
    assert go_dir(path) == directory


@pytest.mark.parametrize(
    ("path", "ext"), [("a/b.tar.gz", ".gz"), ("a.b/c", ""), ("x.", "."), ("x", ""), (".rc", ".rc")]
)
def test_ext(path: str, ext: str) -> None:
    assert go_ext(path) == ext


def test_fields_split_on_go_spaces_only() -> None:
    assert go_fields("  /usr/bin/env \t perl\r") == ["/usr/bin/env", "perl"]
    assert go_fields("a\x1cb") == ["a\x1cb"]  # Python's str.split would split here
    assert go_fields("a\u00a0b\u2003c") == ["a", "b", "c"]


def test_digits_are_decimal_digits() -> None:
    assert go_is_digit("7") and go_is_digit("\u0663")  # ARABIC-INDIC DIGIT THREE
    assert not go_is_digit("\u00b2")  # SUPERSCRIPT TWO: str.isdigit says yes


@pytest.mark.parametrize(
    ("path", "dirs", "inside"),
    [
        ("usr/lib/libz.so.1", ("usr/lib/",), True),
        ("usr/lib/libz.so.1", ("usr/lib",), True),
        ("usr/lib/x/libz.so.1", ("usr/lib/",), False),
        ("usr/lib/x/libz.so.1", ("usr/lib/...",), True),
        ("usr/libexec/x", ("usr/lib/...",), False),
        ("usr/lib/x", ("usr/lib/...",), True),
    ],
)
def test_is_in_dir(path: str, dirs: tuple[str, ...], inside: bool) -> None:
    assert is_in_dir(path, dirs) is inside
