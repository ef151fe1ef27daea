"""Property tests: no input makes the parser fail with anything but RecipeError."""

from __future__ import annotations

import io
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from melange2.errors import RecipeError
from melange2.recipe import (
    Config,
    evaluate_condition,
    load_config,
    parse_condition,
    quote,
    substitute,
)

FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

KEYS = [
    "package", "name", "version", "epoch", "description", "copyright", "license", "licenses",
    "operator", "dependencies", "runtime", "provides", "provider-priority", "options",
    "no-provides", "target-architecture", "environment", "contents", "packages",
    "repositories", "pipeline", "uses", "with", "runs", "if", "working-directory", "needs",
    "label", "subpackages", "range", "data", "items", "vars", "var-transforms", "from",
    "match", "replace", "to", "test", "update", "<<",
]  # fmt: skip

FRAGMENTS = [
    "${{package.name}}", "${{vars.a}}", "${{range.key}}", "${{inputs.x}}", "${{",
    "${{build.arch}}", "}}", "'", '"', " == ", " && ", "(", ")", "\\", "$1", ".*", "\n",
]  # fmt: skip

texts = st.one_of(
    st.text(max_size=20),
    st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=5), max_size=6).map("".join),
)
scalars = st.one_of(
    texts, st.integers(-5, 2**70), st.booleans(), st.none(), st.floats(allow_nan=False)
)


def _trees(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(KEYS) | texts, children, max_size=5),
    )


trees = st.recursive(scalars, _trees, max_leaves=25)


def _dump(data: Any) -> str:
    out = io.StringIO()
    YAML(typ="safe", pure=True).dump(data, out)
    return out.getvalue()


def _load(text: str) -> None:
    try:
        result = load_config(text, filename="fuzz.yaml")
    except RecipeError as exc:
        assert str(exc)
    else:
        assert isinstance(result, Config)


@FAST
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    _load(text)


@FAST
@given(st.lists(st.sampled_from([*KEYS, *FRAGMENTS, ":", "- ", "  ", "&a ", "*a", "[", "{"])))
def test_yamlish_token_soup(tokens: list[str]) -> None:
    _load("".join(tokens))


@FAST
@given(trees)
def test_arbitrary_structures(tree: Any) -> None:
    _load(_dump(tree))


@FAST
@given(
    st.dictionaries(st.sampled_from(KEYS), trees, max_size=6),
    st.dictionaries(st.sampled_from(KEYS), trees, max_size=4),
)
def test_structures_under_a_valid_package(top: dict[str, Any], package: dict[str, Any]) -> None:
    top = dict(top)
    top["package"] = {"name": "p", "version": "1", **package}
    _load(_dump(top))


@FAST
@given(texts | st.text(max_size=60))
def test_conditions_parse_or_raise_recipe_error(expr: str) -> None:
    try:
        tree = parse_condition(expr)
    except RecipeError:
        return
    assert evaluate_condition(tree, lambda _name: "x") in (True, False)


@FAST
@given(texts)
def test_substitute_returns_text_or_raises_recipe_error(text: str) -> None:
    try:
        result = substitute(text, {"package.name": "p", "vars.a": "A"})
    except RecipeError:
        return
    assert "${{package.name}}" not in result


@FAST
@given(st.text(max_size=40))
def test_quote_round_trips(value: str) -> None:
    assert evaluate_condition(f"{quote(value)} == ${{{{v}}}}", {"v": value})
