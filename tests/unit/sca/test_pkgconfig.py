"""melange2.sca.pkgconfig reads what go-pkgconfig reads and refuses what it refuses
(compared with go-pkgconfig itself in tests/integration/test_pkgconfig_oracle.py)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from melange2.sca.pkgconfig import PcDependency, PcParseError, parse_pc

ZLIB = """prefix=/usr
exec_prefix=${prefix}
libdir=${prefix}/lib/x86_64-linux-gnu
includedir=${prefix}/include

Name: zlib
Description: zlib compression library
Version: 1.2.13

Requires:
Libs: -L${libdir} -lz
Cflags: -I${includedir}
"""


def test_a_real_file_without_requires() -> None:
    pc = parse_pc(ZLIB)
    assert pc.requires == pc.requires_private == pc.requires_internal == ()
    assert pc.properties["NAME"] == "zlib"
    assert pc.properties["LIBS"] == "-L/usr/lib/x86_64-linux-gnu -lz"


def test_requires_with_and_without_versions() -> None:
    pc = parse_pc(
        "Name: x\n"
        "Requires: glib-2.0 >= 2.50, gobject-2.0,libffi\n"
        "Requires.private: zlib = 1.2 libpcre2-8 < 11\n"
        "Requires.internal: a_b.c\n"
    )
    assert pc.requires == (
        PcDependency("glib-2.0", ">=", "2.50"),
        PcDependency("gobject-2.0"),
        PcDependency("libffi"),
    )
    assert [d.identifier for d in pc.requires_private] == ["zlib", "libpcre2-8"]
    assert [d.identifier for d in pc.requires_internal] == ["a_b.c"]


def test_comments_blank_lines_and_carriage_returns() -> None:
    pc = parse_pc("# a comment\n\n\nName: x\r\nRequires: foo\r\n# end")
    assert [d.identifier for d in pc.requires] == ["foo"]


def test_an_empty_file_parses() -> None:
    assert parse_pc("") == parse_pc("\n\n")


def test_lowercase_requires_is_a_plain_property() -> None:
    pc = parse_pc("requires: foo\n")
    assert pc.requires == ()
    assert pc.properties["REQUIRES"] == "foo"


@pytest.mark.parametrize(
    "text",
    [
        "Requires: ${deps}\n",  # go-pkgconfig does not substitute dependency names
        "Requires: foo >= ${version}\n",
        "Name x\n",  # a key, then neither '=' nor ':'
        "Libs -lz\n",
        "$weird line\n",
        "Requires: foo >=\n",
    ],
)
def test_what_go_pkgconfig_refuses(text: str) -> None:
    with pytest.raises(PcParseError):
        parse_pc(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    with contextlib.suppress(PcParseError):
        parse_pc(text)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "Name",
                "Requires",
                "Requires.private",
                ":",
                "=",
                " ",
                "\n",
                "#",
                ",",
                ">=",
                "foo",
                "${x}",
            ]
        ),
        max_size=40,
    ).map("".join)
)
def test_grammar_shaped_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        pc = parse_pc(text)
    except PcParseError:
        return
    for dep in (*pc.requires, *pc.requires_private, *pc.requires_internal):
        assert dep.identifier and " " not in dep.identifier
