from __future__ import annotations

import functools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from melange2.apk import ApkFormatError, Constraint, Operator, compare_versions, is_valid_version

# (older, newer): real-world pairs from Alpine and Wolfi package histories, plus the corners.
ORDERED = [
    ("1.0", "1.1"),
    ("1.2.9", "1.2.10"),
    ("1.9", "1.10"),
    ("2.38", "2.39"),
    ("1.36.1-r0", "1.36.1-r1"),
    ("1.36.1-r9", "1.36.1-r10"),
    ("1.0", "1.0-r1"),
    ("1.0", "1.0.0"),
    ("1.0.0", "1.0.1"),
    ("3.1.4-r5", "3.1.5-r0"),
    ("3.0.13-r0", "3.1.0-r0"),
    ("1.21.6-r0", "1.22.0-r0"),
    ("20230311", "20240226"),
    ("1.2.13-r1", "20230311"),
    # pre-release suffixes sort before the plain version, in this order
    ("1.0_alpha", "1.0_alpha1"),
    ("1.0_alpha1", "1.0_alpha2"),
    ("1.0_alpha9", "1.0_beta"),
    ("1.0_beta2", "1.0_pre1"),
    ("1.0_pre3", "1.0_rc1"),
    ("1.0_rc1", "1.0_rc2"),
    ("1.0_rc9", "1.0"),
    ("6.5_pre20240120-r0", "6.5-r0"),
    ("0.1.0_alpha_pre2", "0.1.0_alpha"),
    ("2.9.11_pre20051101-r3", "2.9.11_pre20061021-r1"),
    # post-release suffixes sort after it, in this order
    ("1.0", "1.0_cvs"),
    ("1.0_cvs", "1.0_svn"),
    ("1.0_svn", "1.0_git"),
    ("1.0_git20240101", "1.0_hg"),
    ("1.0_hg", "1.0_p"),
    ("1.0_p1", "1.0_p2"),
    ("9.6_p1-r0", "9.6_p2-r0"),
    ("1.0_p9-r0", "1.0_p10-r0"),
    ("4.5_p1", "4.5_p1-r1"),
    ("1.0_p5", "1.0.1"),
    ("1.3_pre1-r1", "1.3.2"),
    # letters
    ("1.0", "1.0a"),
    ("1.0a", "1.0b"),
    ("1.1.1w-r0", "1.1.1x-r0"),
    ("1.0z", "1.0.1"),
    ("0.9.8c-r1", "0.9.8d"),
    ("2.5.1-r8", "2.5.1a-r1"),
    # leading zeros: then the component compares as a string
    ("1.01", "1.1"),
    ("1.001", "1.01"),
    ("1.09", "1.1"),
    ("1.2.07.8", "1.2.12.04"),
    ("02.08.01b", "2.10.1"),
    ("1.06-r6", "006"),
    ("3.0.0-r2", "021109-r3"),
    # commit hashes
    ("1.0", "1.0~abc"),
    ("1.0~abc", "1.0~abd"),
    ("1.0~abc", "1.0~abc-r1"),
    ("1.0-r1", "1.0~abc-r1"),
    # invalid strings still compare, token by token
    ("1.0", "1.0bc"),
    ("4_beta", "23_foo"),
]

EQUAL = ["1.0", "1.0-r0", "0.1.0_alpha", "2.16.1-r3", "1.0_p1~cafe-r2", "20060720", "1.0a"]


@pytest.mark.parametrize(("older", "newer"), ORDERED)
def test_ordering(older: str, newer: str) -> None:
    assert compare_versions(older, newer) == -1
    assert compare_versions(newer, older) == 1


@pytest.mark.parametrize("version", EQUAL)
def test_equal(version: str) -> None:
    assert compare_versions(version, version) == 0


def test_revision_zero_is_not_no_revision() -> None:
    assert compare_versions("1.0-r0", "1.0") == 1


def test_sorting_a_release_history() -> None:
    history = ["1.2_rc1", "1.2", "1.2-r1", "1.2_p1", "1.2.1_alpha", "1.2.1", "1.10"]
    shuffled = [history[i] for i in (3, 6, 0, 5, 2, 4, 1)]
    assert sorted(shuffled, key=functools.cmp_to_key(compare_versions)) == history


@pytest.mark.parametrize(
    "version", ["1", "1.2.3", "1.2a", "1.0_rc1_p2", "1.0~0123abc-r4", "20240101", "0.0.0_git1-r9"]
)
def test_valid(version: str) -> None:
    assert is_valid_version(version)


@pytest.mark.parametrize(
    "version",
    ["", "a1", "1.", "1..2", "1.0bc", "1.0a1", "1.0a.1", "1.0_foo", "1.0-r", "1.0-1", "1.0~",
     "1.0~XYZ", "1.0-r1-r2", "1.0-r1_p1", "1.0_p1a", "1.0 ", "1.0A"],
)  # fmt: skip
def test_invalid(version: str) -> None:
    assert not is_valid_version(version)


# --- constraints ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "operator", "version", "conflict"),
    [
        ("busybox", "busybox", Operator.ANY, None, False),
        ("openssl=3.1.4-r0", "openssl", Operator.EQUAL, "3.1.4-r0", False),
        ("go>=1.21", "go", Operator.GREATER_EQUAL, "1.21", False),
        ("python3<3.12", "python3", Operator.LESS, "3.12", False),
        ("foo<=2", "foo", Operator.LESS_EQUAL, "2", False),
        ("foo>1", "foo", Operator.GREATER, "1", False),
        ("go~1.21", "go", Operator.FUZZY, "1.21", False),
        ("go=~1.21", "go", Operator.FUZZY, "1.21", False),
        ("go<~1.22", "go", Operator.LESS_FUZZY, "1.22", False),
        ("go>~1.20", "go", Operator.GREATER_FUZZY, "1.20", False),
        ("!foo", "foo", Operator.ANY, None, True),
        ("!foo<2", "foo", Operator.LESS, "2", True),
        ("so:libc.musl-x86_64.so.1", "so:libc.musl-x86_64.so.1", Operator.ANY, None, False),
        ("so:libz.so.1=1.3.1", "so:libz.so.1", Operator.EQUAL, "1.3.1", False),
        ("cmd:foo", "cmd:foo", Operator.ANY, None, False),
        ("cmd:hello=2.12-r3", "cmd:hello", Operator.EQUAL, "2.12-r3", False),
        ("pc:zlib", "pc:zlib", Operator.ANY, None, False),
        ("pc:zlib>=1.2", "pc:zlib", Operator.GREATER_EQUAL, "1.2", False),
        ("py3.12:setuptools", "py3.12:setuptools", Operator.ANY, None, False),
        ("libstdc++", "libstdc++", Operator.ANY, None, False),
    ],
)
def test_parse(
    text: str, name: str, operator: Operator, version: str | None, conflict: bool
) -> None:
    constraint = Constraint.parse(text)
    assert (constraint.name, constraint.operator, constraint.version, constraint.conflict) == (
        name,
        operator,
        version,
        conflict,
    )
    assert constraint.tag is None
    assert Constraint.parse(str(constraint)) == constraint


def test_parse_tag_and_canonical_text() -> None:
    constraint = Constraint.parse("foo@local>=1.2")
    assert (constraint.name, constraint.tag, constraint.version) == ("foo", "local", "1.2")
    assert str(constraint) == "foo@local>=1.2"
    assert str(Constraint.parse("go=~1.21")) == "go~1.21"


@pytest.mark.parametrize(
    "text", ["", "!", ">=1", "foo>=", "foo>=1..2", "foo<>1", "foo><Q1abc", "foo>=1 2", "foo@"]
)
def test_parse_errors(text: str) -> None:
    with pytest.raises(ApkFormatError):
        Constraint.parse(text)


@pytest.mark.parametrize(
    ("text", "matching", "not_matching"),
    [
        ("foo", ["0", "1.0-r0", "99_rc1"], []),
        ("foo=1.2-r0", ["1.2-r0"], ["1.2", "1.2-r1", "1.20-r0"]),
        ("foo>=1.2", ["1.2", "1.2-r0", "1.2.1", "2"], ["1.1", "1.2_rc1"]),
        ("foo>1.2", ["1.2-r0", "1.3"], ["1.2", "1.1"]),
        ("foo<2", ["1.9", "2_rc1", "1"], ["2", "2.0", "2-r0"]),
        ("foo<=2", ["2", "1"], ["2-r0", "2.0"]),
        ("foo~1.2", ["1.2", "1.2-r5", "1.2.3", "1.2.3-r1", "1.2a"], ["1.20", "1.3", "1.1.9"]),
        ("foo~1.2.3", ["1.2.3-r0"], ["1.2.30"]),
        ("foo<~1.22", ["1.21.9", "1.22.4"], ["1.23"]),
        ("foo>~1.22", ["1.22.0", "1.23"], ["1.21.9"]),
        ("!foo", [], ["1.0", "0"]),
        ("!foo<2", ["2", "3.0"], ["1.9"]),
    ],
)
def test_matches(text: str, matching: list[str], not_matching: list[str]) -> None:
    constraint = Constraint.parse(text)
    for version in matching:
        assert constraint.matches(version), version
    for version in not_matching:
        assert not constraint.matches(version), version


def test_unversioned_provide_satisfies_any_requirement_as_in_apk() -> None:
    assert Constraint.parse("cmd:sh").matches(None)
    assert Constraint.parse("cmd:sh>=1").matches(None)
    assert not Constraint.parse("!cmd:sh").matches(None)


# --- properties ----------------------------------------------------------------------------

_numbers = st.from_regex(r"(0|[1-9][0-9]{0,3}|0[0-9]{1,2})", fullmatch=True)
_suffix = st.sampled_from(["alpha", "beta", "pre", "rc", "cvs", "svn", "git", "hg", "p"])
versions = st.builds(
    lambda parts, letter, suffixes, commit, revision: (
        ".".join(parts)
        + letter
        + "".join(f"_{name}{number}" for name, number in suffixes)
        + (f"~{commit}" if commit else "")
        + (f"-r{revision}" if revision is not None else "")
    ),
    st.lists(_numbers, min_size=1, max_size=4),
    st.sampled_from(["", "", "", "a", "b", "z"]),
    st.lists(st.tuples(_suffix, st.sampled_from(["", "1", "2", "10"])), max_size=2),
    st.sampled_from(["", "", "", "0a", "beef", "c0ffee"]),
    st.one_of(st.none(), st.integers(0, 12)),
)


@given(versions)
def test_generated_versions_are_valid_and_reflexive(version: str) -> None:
    assert is_valid_version(version)
    assert compare_versions(version, version) == 0


@given(versions, versions)
def test_antisymmetric(a: str, b: str) -> None:
    assert compare_versions(a, b) == -compare_versions(b, a)


@given(versions, versions, versions)
def test_transitive(a: str, b: str, c: str) -> None:
    x, y, z = sorted([a, b, c], key=functools.cmp_to_key(compare_versions))
    assert compare_versions(x, y) <= 0
    assert compare_versions(y, z) <= 0
    assert compare_versions(x, z) <= 0
    if compare_versions(x, y) < 0 or compare_versions(y, z) < 0:
        assert compare_versions(x, z) < 0


@given(st.text(alphabet="0123456789.abz_prc~-", max_size=12), st.text(max_size=8))
def test_never_fails_on_junk(a: str, b: str) -> None:
    assert compare_versions(a, b) == -compare_versions(b, a)


@given(versions, versions)
def test_operators_agree_with_compare(version: str, bound: str) -> None:
    order = compare_versions(version, bound)
    assert Constraint.parse(f"x>={bound}").matches(version) == (order >= 0)
    assert Constraint.parse(f"x<{bound}").matches(version) == (order < 0)
    assert Constraint.parse(f"x={bound}").matches(version) == (order == 0)
    assert Constraint.parse(f"!x={bound}").matches(version) == (order != 0)
