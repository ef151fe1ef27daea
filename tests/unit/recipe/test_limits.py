"""Parsing has limits that hold before anything recurses: depth, size, node count,
alias expansion and merge chains; errors quote only short, escaped excerpts."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from melange2.errors import RecipeError
from melange2.recipe import load_config
from melange2.recipe._yaml import MAX_DEPTH, MAX_EVENTS, MAX_TEXT, depth_bound

HEAD = "package: {name: a, version: 1.0.0}\n"


def test_100000_nested_brackets_are_an_error_and_the_process_lives() -> None:
    # libyaml's composer recursed once per level and the process died (SIGSEGV); run it
    # in a child so that a regression fails this test instead of killing the suite
    code = (
        "from melange2.recipe import load_config\n"
        "from melange2.errors import RecipeError\n"
        "n = 100_000\n"
        "try:\n"
        "    load_config('package: {name: a, version: 1}\\nvars:\\n  x: ' + '[' * n + ']' * n)\n"
        "except RecipeError as exc:\n"
        "    print('refused:', exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert f"nested more than {MAX_DEPTH} levels deep" in done.stdout


@pytest.mark.parametrize("opener", ["[", "{a: "])
def test_nesting_past_the_limit_is_refused_at_once(opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    deep = HEAD + "vars:\n  x: " + opener * (MAX_DEPTH + 5) + "1" + closer * (MAX_DEPTH + 5)
    with pytest.raises(RecipeError, match="nested more than"):
        load_config(deep)
    shallow = opener * 10 + "1" + closer * 10
    with pytest.raises(RecipeError, match="expected a string"):
        load_config(HEAD + "vars:\n  x: " + shallow)  # parsed fine, then type-checked


def test_too_many_nodes_and_too_much_text_are_refused() -> None:
    with pytest.raises(RecipeError, match=f"more than {MAX_EVENTS} nodes"):
        load_config(HEAD + "vars:\n  x: [" + "1," * (MAX_EVENTS + 10) + "1]\n")
    with pytest.raises(RecipeError, match="document too large"):
        load_config(HEAD + "# " + "x" * MAX_TEXT + "\n")


def test_a_billion_laughs_ends_in_an_error() -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        levels.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 10) + "]")
    text = HEAD + "vars:\n" + "".join(f"  {line}\n" for line in levels)
    with pytest.raises(RecipeError):
        load_config(text + "pipeline:\n  - runs: echo\n    with: *j\n")


def test_a_long_merge_chain_is_refused_without_recursing() -> None:
    maps = ["m0: &m0 {x: 1}"] + [f"m{i}: &m{i} {{<<: *m{i - 1}}}" for i in range(1, 2000)]
    text = "\n".join(maps) + "\npackage: {name: a, version: 1, <<: *m1999}\n"
    with pytest.raises(RecipeError, match=r"merges \(<<\) nested more than"):
        load_config(text)


def test_errors_quote_a_short_excerpt_of_a_scalar_not_all_of_it() -> None:
    secret = "root:x:0:0:root:/root:/bin/bash\n" * 200  # a file's content as one scalar
    with pytest.raises(RecipeError) as caught:
        load_config(f"package: {secret!r}\n")
    message = str(caught.value)
    assert "expected a mapping" in message
    assert len(message) < 200 and message.count("root:x:0:0") <= 1


def test_names_follow_the_one_rule_and_versions_name_files() -> None:
    with pytest.raises(RecipeError, match="package name '\u0661' must match"):
        load_config('package: {name: "\\u0661", version: 1}\n')
    with pytest.raises(RecipeError, match=r"package name 'a\.\.b'"):
        load_config("package: {name: a..b, version: 1}\n")
    with pytest.raises(RecipeError, match="longer than 128"):
        load_config("package: {name: " + "a" * 5000 + ", version: 1}\n")
    with pytest.raises(RecipeError, match=r"package version '\.\./\.\./x'"):
        load_config("package: {name: a, version: ../../x}\n")
    with pytest.raises(RecipeError, match="subpackage name"):
        load_config(HEAD + "subpackages:\n  - name: a..dev\n")


def _true_depth(text: str) -> int | None:
    """The nesting depth libyaml's events show (PyYAML's binding: the parser we use)."""
    import yaml
    from yaml.events import (
        MappingEndEvent,
        MappingStartEvent,
        SequenceEndEvent,
        SequenceStartEvent,
    )

    depth = deepest = 0
    try:
        for event in yaml.parse(text, Loader=yaml.CSafeLoader):
            if isinstance(event, MappingStartEvent | SequenceStartEvent):
                depth += 1
                deepest = max(deepest, depth)
            elif isinstance(event, MappingEndEvent | SequenceEndEvent):
                depth -= 1
    except Exception:
        return None  # not YAML: nothing is composed
    return deepest


_NESTED = st.recursive(
    st.one_of(st.none(), st.integers(), st.text(max_size=8)),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=40,
)


@given(
    value=_NESTED,
    flow=st.sampled_from([None, True, False]),
    indent=st.sampled_from([(2, 0), (2, 2), (4, 2)]),
)
@settings(max_examples=300, deadline=None)
def test_the_cheap_depth_bound_never_underestimates(
    value: object, flow: bool | None, indent: tuple[int, int]
) -> None:
    import io

    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = flow
    yaml.indent(mapping=indent[0], sequence=indent[0] + indent[1], offset=indent[1])
    out = io.StringIO()
    yaml.dump({"vars": value}, out)
    text = out.getvalue()
    depth = _true_depth(text)
    assume(depth is not None)  # (ruamel's pure dumper writes a few that libyaml refuses)
    assert depth is not None and depth_bound(text) >= depth, text


@given(text=st.text(st.sampled_from("[]{}-?: ,\n\"'|>a&*!#"), max_size=200))
@settings(max_examples=500, deadline=None)
def test_the_cheap_depth_bound_holds_for_any_text(text: str) -> None:
    depth = _true_depth(text)
    if depth is not None:
        assert depth_bound(text) >= depth, repr(text)
