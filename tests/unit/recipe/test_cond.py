from __future__ import annotations

import pytest

from melange2.errors import RecipeError
from melange2.recipe import (
    ConditionError,
    Location,
    UndefinedVariable,
    condition_variables,
    evaluate_condition,
    parse_condition,
    quote,
)


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("'foo' == 'foo'", True),
        ("'foo' != 'foo'", False),
        ("\"a\" == 'a'", True),
        ("'rabbit' == 'rabbit' && 'hare' == 'hare' && 'rabbit' != 'hare'", True),
        ("'rabbit' == 'hare' || 'lagomorph' == 'lagomorph'", True),
        ("('rabbit' == 'rabbit' && 'hare' != 'hare') || 'lagomorph' == 'lagomorph'", True),
        ("  (  'a'=='a'  )  ", True),
        ("'a' == 'a' &&\n'b' == 'c'", False),
        # melange chains && and || left to right with equal precedence
        ("'a' == 'a' || 'a' == 'b' && 'a' == 'b'", False),
        ("'a' == 'a' || ('a' == 'b' && 'a' == 'b')", True),
        (r'"hello \"world\"" == "hello \"world\""', True),
        ("'it\\'s' == \"it's\"", True),
        (r'"a\\b" == "ab"', False),
        (r'"line1\nline2" == "line1' + "\n" + 'line2"', True),
        (r"'\q' == '\\q'", True),  # unknown escapes are kept as written
    ],
)
def test_evaluate_literals(expr: str, expected: bool) -> None:
    assert evaluate_condition(expr) is expected


def test_variables_resolve_through_a_mapping() -> None:
    lookup = {"build.arch": "aarch64", "vars.x": "on"}
    assert evaluate_condition("${{build.arch}} == 'aarch64'", lookup)
    assert evaluate_condition("'aarch64' == ${{ build.arch }}", lookup)
    assert evaluate_condition("${{\tbuild.arch\n}} != 'x86_64' && ${{vars.x}} == 'on'", lookup)
    assert not evaluate_condition("${{build.arch}} == 'x86_64'", lookup)


def test_variables_resolve_through_a_function() -> None:
    assert evaluate_condition("${{anything}} == 'ANYTHING'", str.upper)


def test_without_lookup_variables_are_empty_as_in_melange() -> None:
    assert evaluate_condition("${{build.arch}} == ''")


def test_undefined_variable_in_mapping() -> None:
    where = Location(file="x.yaml", line=7, column=3, path="pipeline[0].if")
    with pytest.raises(UndefinedVariable) as info:
        evaluate_condition("${{vars.nope}} == 'x'", {}, location=where)
    assert str(info.value) == "x.yaml:7: pipeline[0].if: undefined variable ${{vars.nope}}"


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "   ",
        "'foo' == ",
        "'foo'",
        "'foo' = 'foo'",
        "'foo' == 'foo' &&",
        "('a' == 'a'",
        "'a' == 'a')",
        "'unterminated == 'x",
        "${{foo.bar} == 'baz'",
        "${{ }} == 'x'",
        "${{",
        "x86_64 == 'x86_64'",
        "'a' == 'a' 'b'",
        "'a' == 'a' & 'b' == 'b'",
        "!('a' == 'b')",
    ],
)
def test_syntax_errors_are_recipe_errors(expr: str) -> None:
    with pytest.raises(ConditionError) as info:
        parse_condition(expr)
    assert isinstance(info.value, RecipeError)
    assert "invalid condition" in str(info.value)


def test_syntax_error_names_location() -> None:
    where = Location(file="pkg.yaml", line=12, column=9, path="subpackages[1].if")
    with pytest.raises(ConditionError, match=r"^pkg\.yaml:12: subpackages\[1\]\.if: invalid"):
        evaluate_condition("'a' ==", location=where)


def test_condition_variables() -> None:
    tree = parse_condition("${{a}} == 'x' || (${{b.c}} != ${{a}} && 'q' == 'q')")
    assert condition_variables(tree) == {"a", "b.c"}


@pytest.mark.parametrize("value", ["", "x86_64", 'say "hi"', "back\\slash", "tab\tnl\n", "'"])
def test_quote_round_trips(value: str) -> None:
    assert evaluate_condition(f"{quote(value)} == ${{{{v}}}}", {"v": value})
