"""Expressions inside ``${{ ... }}``: ``${{range.key == "64" && " (ILP64)" || ""}}``.

melange v0.34.0 substitutes only names (``${{package.version}}``); configs written for
newer melange also put small expressions between the braces, to pick a value by a
condition. This is our own implementation of that form, from how real configs use it::

    expr     := or
    or       := and ( "||" and )*
    and      := compare ( "&&" compare )*
    compare  := operand ( ("==" | "!=") operand )?
    operand  := 'text' | "text" | name | "(" expr ")"

* A *name* is a variable without braces (``range.key``, ``vars.flavour``,
  ``build.arch``); an undefined one is an error, as in any substitution.
* Strings are quoted with ``'`` or ``"``; ``\\\\``, ``\\'``, ``\\"``, ``\\n`` and ``\\t``
  are escapes (as in ``if:`` conditions).
* A comparison is ``"true"`` or ``"false"``. ``a && b`` is ``b`` when ``a`` holds, else
  ``a``; ``a || b`` is ``a`` when it holds, else ``b`` (the and/or idiom of shell and
  JavaScript). A value holds when it is a true comparison or a non-empty string.
* ``&&`` binds tighter than ``||``; ``==``/``!=`` tighter than both.

So ``${{range.key == "64" && " (ILP64)" || ""}}`` is ``" (ILP64)"`` for the ``64``
item of a range and ``""`` for the others.

>>> evaluate(parse('range.key == "64" && " (ILP64)" || ""')[0], {"range.key": "64"})
' (ILP64)'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "BinOp",
    "Expr",
    "ExprSyntaxError",
    "Missing",
    "Name",
    "Text",
    "evaluate",
    "names",
    "parse",
]

_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")
_ESCAPES: Final = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}
_MAX_DEPTH: Final = 64


@dataclass(frozen=True, slots=True)
class Text:
    """A string literal."""

    value: str


@dataclass(frozen=True, slots=True)
class Name:
    """A variable, looked up when evaluated."""

    name: str


@dataclass(frozen=True, slots=True)
class BinOp:
    """``left <op> right``."""

    left: Expr
    op: Literal["==", "!=", "&&", "||"]
    right: Expr


Expr = Text | Name | BinOp


class ExprSyntaxError(ValueError):
    """The text between ``${{`` and ``}}`` is neither a name nor an expression."""


class Missing(KeyError):
    """A name the mapping does not define (``.name`` says which)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _Parser:
    def __init__(self, text: str, pos: int) -> None:
        self.text = text
        self.pos = pos
        self.depth = 0

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def peek(self, token: str) -> bool:
        self.skip()
        return self.text.startswith(token, self.pos)

    def fail(self, what: str) -> ExprSyntaxError:
        return ExprSyntaxError(f"{what} at offset {self.pos}")

    def expr(self) -> Expr:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.fail(f"expression nested more than {_MAX_DEPTH} deep")
        node = self.conjunction()
        while self.peek("||"):
            self.pos += 2
            node = BinOp(node, "||", self.conjunction())
        self.depth -= 1
        return node

    def conjunction(self) -> Expr:
        node = self.comparison()
        while self.peek("&&"):
            self.pos += 2
            node = BinOp(node, "&&", self.comparison())
        return node

    def comparison(self) -> Expr:
        node = self.operand()
        for op in ("==", "!="):
            if self.peek(op):
                self.pos += 2
                return BinOp(node, "==" if op == "==" else "!=", self.operand())
        return node

    def operand(self) -> Expr:
        self.skip()
        if self.pos >= len(self.text):
            raise self.fail("unexpected end of expression")
        char = self.text[self.pos]
        if char == "(":
            self.pos += 1
            inner = self.expr()
            if not self.peek(")"):
                raise self.fail("expected ')'")
            self.pos += 1
            return inner
        if char in "'\"":
            return self.string(char)
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _NAME_CHARS:
            self.pos += 1
        if self.pos == start:
            raise self.fail(f"unexpected character {char!r}")
        return Name(self.text[start : self.pos])

    def string(self, quote: str) -> Text:
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text) and self.text[self.pos] != quote:
            char = self.text[self.pos]
            if char == "\\" and self.pos + 1 < len(self.text):
                self.pos += 1
                escaped = self.text[self.pos]
                out.append(_ESCAPES.get(escaped, "\\" + escaped))
            else:
                out.append(char)
            self.pos += 1
        if self.pos >= len(self.text):
            raise self.fail("unterminated string")
        self.pos += 1
        return Text("".join(out))


def parse(text: str, start: int = 0) -> tuple[Expr, int]:
    """Parse the expression at ``text[start:]`` up to its closing ``}}``.

    Returns the tree and the index just past ``}}``; raises :class:`ExprSyntaxError`.
    """
    parser = _Parser(text, start)
    node = parser.expr()
    if not parser.peek("}}"):
        if parser.pos >= len(text):
            raise parser.fail("expected '}}'")
        raise parser.fail(f"unexpected {text[parser.pos : parser.pos + 10]!r}")
    return node, parser.pos + 2


def names(node: Expr) -> tuple[str, ...]:
    """The variables ``node`` refers to, in order of appearance."""
    if isinstance(node, Name):
        return (node.name,)
    if isinstance(node, BinOp):
        return names(node.left) + names(node.right)
    return ()


def evaluate(node: Expr, lookup: Mapping[str, str] | Callable[[str], str | None]) -> str:
    """The value of ``node``; a name ``lookup`` lacks raises :class:`Missing`."""
    get = lookup.get if isinstance(lookup, Mapping) else lookup

    def value(n: Expr) -> tuple[str, bool]:
        if isinstance(n, Text):
            return n.value, n.value != ""
        if isinstance(n, Name):
            found = get(n.name)
            if found is None:
                raise Missing(n.name)
            return found, found != ""
        if n.op in ("==", "!="):
            equal = value(n.left)[0] == value(n.right)[0]
            holds = equal if n.op == "==" else not equal
            return ("true" if holds else "false"), holds
        left = value(n.left)
        if n.op == "&&":
            return value(n.right) if left[1] else left
        return left if left[1] else value(n.right)

    return value(node)[0]
