"""pkg-config files as melange reads them (``github.com/chainguard-dev/go-pkgconfig``).

melange takes a ``.pc`` file's ``Requires``, ``Requires.private`` and ``Requires.internal``
names for ``pc:`` dependencies, and skips (with a warning) any file that parser refuses.
That parser is a small grammar on the goparsify combinators, and what it refuses is
particular: a ``Requires:`` naming a ``${variable}``, or any line that starts with a
key but is neither ``key=value`` nor ``Key: value``, fails the whole file. So this module
is a port of those combinators (their backtracking, ``Cut`` and error-position rules
included) and of the grammar, rather than a pkg-config parser of our own: what melange
refuses is refused here, and what it reads is read the same.

Positions are in characters of the decoded text (undecodable bytes kept as lone
surrogates, which match nothing but ``NotChars``), where Go counts bytes; only the
outcome is compared, so this does not show.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from melange2.sca._go import GO_SPACES

__all__ = ["PcDependency", "PcFile", "PcParseError", "parse_pc"]


class PcParseError(ValueError):
    """The file is one go-pkgconfig refuses."""


@dataclass(frozen=True, slots=True)
class PcDependency:
    identifier: str
    #: "", "<", "<=", "=", ">=", ">"
    operator: str = ""
    version: str = ""


@dataclass(frozen=True, slots=True)
class PcFile:
    requires: tuple[PcDependency, ...] = ()
    requires_private: tuple[PcDependency, ...] = ()
    requires_internal: tuple[PcDependency, ...] = ()
    provides: tuple[PcDependency, ...] = ()
    #: properties by upper-cased key (NAME, VERSION, ...), variables substituted
    properties: dict[str, str] = field(default_factory=dict)


# --- goparsify, the parts the grammar uses -------------------------------------------


@dataclass(slots=True)
class _State:
    text: str
    pos: int = 0
    cut: int = 0
    err_pos: int = 0
    expected: str = ""

    def errored(self) -> bool:
        return self.expected != ""

    def error_here(self, expected: str) -> None:
        self.err_pos = self.pos
        self.expected = expected

    def recover(self) -> None:
        self.expected = ""


@dataclass(slots=True)
class _Result:
    token: str = ""
    value: Any = None
    children: list[_Result] = field(default_factory=list)


_Parser = Callable[[_State, _Result], None]


def _ws(s: _State) -> None:
    """go-pkgconfig's ``matchWhitespace``: spaces, but not newlines."""
    text, pos = s.text, s.pos
    while pos < len(text) and text[pos] != "\n" and text[pos] in GO_SPACES:
        pos += 1
    s.pos = pos


def _exact(match: str) -> _Parser:
    def parse(s: _State, node: _Result) -> None:
        _ws(s)
        if not s.text.startswith(match, s.pos):
            s.error_here(match)
            return
        s.pos += len(match)
        node.token = match

    return parse


def _charset(matcher: str) -> Callable[[str], bool]:
    """goparsify's ``parseMatcher``: ``a-z`` ranges, ``\\x`` escapes, other runes."""
    alphabet: set[str] = set()
    ranges: list[tuple[str, str]] = []
    i = 0
    while i < len(matcher):
        if i + 2 < len(matcher) and matcher[i + 1] == "-" and matcher[i] != "\\":
            lo, hi = sorted((matcher[i], matcher[i + 2]))
            ranges.append((lo, hi))
            i += 3
        elif i + 1 < len(matcher) and matcher[i] == "\\":
            alphabet.add(matcher[i + 1])
            i += 2
        else:
            alphabet.add(matcher[i])
            i += 1
    return lambda c: c in alphabet or any(lo <= c <= hi for lo, hi in ranges)


def _chars(matcher: str, *, stop_on: bool = False) -> _Parser:
    """``Chars`` (one or more of ``matcher``) or, with ``stop_on``, ``NotChars``."""
    member = _charset(matcher)

    def parse(s: _State, node: _Result) -> None:
        _ws(s)
        text, start = s.text, s.pos
        end = start
        while end < len(text) and member(text[end]) != stop_on:
            end += 1
        if end == start:
            s.error_here(matcher)
            return
        node.token = text[start:end]
        s.pos = end

    return parse


def _seq(*parsers: _Parser) -> _Parser:
    def parse(s: _State, node: _Result) -> None:
        node.children = [_Result() for _ in parsers]
        start = s.pos
        for parser, child in zip(parsers, node.children, strict=True):
            parser(s, child)
            if s.errored():
                s.pos = start
                return
        node.token = s.text[start : s.pos]

    return parse


def _any(*parsers: _Parser) -> _Parser:
    def parse(s: _State, node: _Result) -> None:
        _ws(s)
        if s.pos >= len(s.text):
            s.error_here("!EOF")
            return
        start = s.pos
        longest = (s.err_pos, s.expected)
        if s.cut <= start:
            s.recover()
        else:
            return
        for parser in parsers:
            parser(s, node)
            if s.errored():
                if s.err_pos >= longest[0]:
                    longest = (s.err_pos, s.expected)
                if s.cut > start:
                    break
                s.recover()
                continue
            return
        s.err_pos, s.expected = longest
        s.pos = start

    return parse


def _many(parser: _Parser, sep: _Parser | None = None) -> _Parser:
    def parse(s: _State, node: _Result) -> None:
        node.children = []
        start = s.pos
        while True:
            before = s.pos
            child = _Result()
            node.children.append(child)
            parser(s, child)
            if s.errored():
                if s.cut > s.pos:
                    s.pos = start
                    return
                s.recover()
                node.children.pop()
                return
            if sep is not None:
                sep(s, _Result())
                if s.errored():
                    s.recover()
                    return
            if s.pos == before:
                # goparsify would repeat this forever (and melange hang): refuse instead
                s.error_here("progress")
                return

    return parse


def _maybe(parser: _Parser) -> _Parser:
    def parse(s: _State, node: _Result) -> None:
        start = s.pos
        parser(s, node)
        if s.errored() and s.cut <= start:
            s.recover()

    return parse


def _cut(s: _State, node: _Result) -> None:
    s.cut = s.pos


def _map(parser: _Parser, f: Callable[[_Result], None]) -> _Parser:
    def parse(s: _State, node: _Result) -> None:
        parser(s, node)
        if not s.errored():
            f(node)

    return parse


# --- go-pkgconfig's grammar -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Variable:
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class _Property:
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class _DependencyList:
    key: str
    dependencies: tuple[PcDependency, ...]


def _token_as_value(n: _Result) -> None:
    n.value = n.token


def _set(value: Any) -> Callable[[_Result], None]:
    def f(n: _Result) -> None:
        n.value = value

    return f


def _to_title(key: str) -> str:
    # strings.ToTitle on the key characters the grammar admits (ASCII)
    return key.upper()


def _variable(n: _Result) -> None:
    n.value = _Variable(n.children[0].token, n.children[2].token)


def _property(n: _Result) -> None:
    n.value = _Property(_to_title(n.children[0].token), n.children[3].token)


def _dependency_list(n: _Result) -> None:
    deps = []
    for d in n.children[2].children:
        operator = d.children[1].value if len(d.children) > 1 else None
        if isinstance(operator, str):
            deps.append(PcDependency(d.children[0].token, operator, d.children[2].token))
        else:
            deps.append(PcDependency(d.token if not d.children else d.children[0].token))
    n.value = _DependencyList(_to_title(n.children[0].token), tuple(deps))


def _document(n: _Result) -> None:
    n.value = [child.value for child in n.children]


_comment = _seq(_exact("#"), _maybe(_chars("#\n", stop_on=True)))
_key = _chars("a-zA-Z0-9_.")
_value = _map(_chars("\n", stop_on=True), _token_as_value)
_variable_assignment = _map(_seq(_key, _exact("="), _maybe(_value)), _variable)
_property_assignment = _map(_seq(_key, _cut, _exact(":"), _maybe(_value)), _property)
_identifier = _chars("a-zA-Z0-9-_.")
_version = _chars("a-zA-Z0-9-.")
# goparsify's Any tries these in order: "<=" before "<", ">=" before ">"
_ver_match = _any(
    _map(_exact("<="), _set("<=")),
    _map(_exact("<"), _set("<")),
    _map(_exact("="), _set("=")),
    _map(_exact(">="), _set(">=")),
    _map(_exact(">"), _set(">")),
)
_dependency_chain = _seq(_identifier, _ver_match, _version)
_dependency = _any(_dependency_chain, _identifier)
_dependency_list_p = _many(_dependency, _maybe(_exact(",")))
_keywords = _any(
    _exact("Requires.private"), _exact("Requires.internal"), _exact("Requires"), _exact("Provides")
)
_dependency_list_assignment = _map(
    _seq(_keywords, _exact(":"), _dependency_list_p), _dependency_list
)
_document_chain = _map(
    _many(
        _any(
            _exact("\n"),
            _comment,
            _variable_assignment,
            _dependency_list_assignment,
            _property_assignment,
        )
    ),
    _document,
)


def _replace_variables(value: str, variables: dict[str, str]) -> str:
    for k, v in variables.items():
        value = value.replace(f"${{{k}}}", v)
    return value


def parse_pc(text: str) -> PcFile:
    """Parse a ``.pc`` file as go-pkgconfig's ``Parse`` does; :class:`PcParseError` when
    it would refuse the file."""
    state = _State(text)
    result = _Result()
    _document_chain(state, result)
    _ws(state)
    if state.errored():
        raise PcParseError(f"offset {state.err_pos}: expected {state.expected}")
    if state.pos < len(text):
        rest = text[state.pos : state.pos + 20]
        raise PcParseError(f"left unparsed: {rest!r}")
    variables: dict[str, str] = {}
    properties: dict[str, str] = {}
    lists: dict[str, tuple[PcDependency, ...]] = {}
    nodes: Sequence[Any] = result.value or ()
    for node in nodes:
        if isinstance(node, _Variable):
            variables[node.key] = _replace_variables(node.value, variables)
        elif isinstance(node, _Property):
            properties[node.key] = _replace_variables(node.value, variables)
        elif isinstance(node, _DependencyList):
            lists[node.key] = node.dependencies
    return PcFile(
        requires=lists.get("REQUIRES", ()),
        requires_private=lists.get("REQUIRES.PRIVATE", ()),
        requires_internal=lists.get("REQUIRES.INTERNAL", ()),
        provides=lists.get("PROVIDES", ()),
        properties=properties,
    )
