"""melange's ``if:`` condition language.

A condition compares values with ``==`` and ``!=`` and chains comparisons with ``&&`` and
``||``; parentheses group. Values are quoted strings (``'x'`` or ``"x"``, with ``\\\\``,
``\\'``, ``\\"``, ``\\n`` and ``\\t`` escapes) or variables (``${{build.arch}}``)::

    ${{build.arch}} == 'x86_64' || (${{vars.flavour}} != "slim" && 'a' == 'a')

As in melange (``pkg/cond``), ``&&`` and ``||`` have *equal* precedence and associate to
the left, so ``a || b && c`` means ``(a || b) && c``. There is no negation and no bare
truthiness: every atom is a comparison or a parenthesised expression.

When a config is loaded, ``if:`` fields are substituted with every value *quoted* (see
:func:`quote`), so ``${{build.arch}} == 'x86_64'`` is stored as ``"x86_64" == 'x86_64'``
and evaluates without a lookup. Variables left in an expression are resolved through the
``lookup`` given to :func:`evaluate_condition`; without one they are ``""`` (melange's
``NullLookup``).

>>> evaluate_condition("${{build.arch}} == 'aarch64'", {"build.arch": "aarch64"})
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal as TypingLiteral

from melange2.names import excerpt
from melange2.recipe.errors import ConditionError, UndefinedVariable
from melange2.recipe.model import Location

__all__ = [
    "BoolOp",
    "Comparison",
    "Condition",
    "Lookup",
    "StringValue",
    "VariableRef",
    "condition_variables",
    "evaluate_condition",
    "parse_condition",
    "quote",
]

_WHITESPACE = " \t\n\r"
_VAR_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}


@dataclass(frozen=True, kw_only=True, slots=True)
class StringValue:
    """A quoted string literal (unescaped)."""

    value: str


@dataclass(frozen=True, kw_only=True, slots=True)
class VariableRef:
    """A ``${{name}}`` operand, resolved at evaluation time."""

    name: str


Operand = StringValue | VariableRef


@dataclass(frozen=True, kw_only=True, slots=True)
class Comparison:
    """``left == right`` or ``left != right``."""

    left: Operand
    op: TypingLiteral["==", "!="]
    right: Operand


@dataclass(frozen=True, kw_only=True, slots=True)
class BoolOp:
    """``left && right`` or ``left || right``."""

    left: Condition
    op: TypingLiteral["&&", "||"]
    right: Condition


Condition = Comparison | BoolOp

#: How variables are resolved: a mapping from bare names (``build.arch``) or a function.
Lookup = Mapping[str, str] | Callable[[str], str]


class _SyntaxError(Exception):
    pass


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
            self.pos += 1

    def startswith(self, token: str) -> bool:
        self.skip()
        return self.text.startswith(token, self.pos)

    def fail(self, what: str) -> _SyntaxError:
        return _SyntaxError(f"{what} at position {self.pos}")

    def expr(self) -> Condition:
        result = self.atom()
        while True:
            self.skip()
            op = self.text[self.pos : self.pos + 2]
            if op == "&&":
                self.pos += 2
                result = BoolOp(left=result, op="&&", right=self.atom())
            elif op == "||":
                self.pos += 2
                result = BoolOp(left=result, op="||", right=self.atom())
            else:
                return result

    def atom(self) -> Condition:
        if self.startswith("("):
            self.pos += 1
            inner = self.expr()
            if not self.startswith(")"):
                raise self.fail("expected ')'")
            self.pos += 1
            return inner
        return self.comparison()

    def comparison(self) -> Comparison:
        left = self.value()
        self.skip()
        op = self.text[self.pos : self.pos + 2]
        if op == "==":
            self.pos += 2
            return Comparison(left=left, op="==", right=self.value())
        if op == "!=":
            self.pos += 2
            return Comparison(left=left, op="!=", right=self.value())
        if self.pos >= len(self.text):
            raise self.fail("expected '==' or '!=' but the condition ended")
        raise self.fail(f"expected '==' or '!=', got {excerpt(op)}")

    def value(self) -> Operand:
        self.skip()
        if self.pos >= len(self.text):
            raise self.fail("unexpected end of condition")
        quote_char = self.text[self.pos]
        if quote_char in "'\"":
            return self.string(quote_char)
        if self.text.startswith("${{", self.pos):
            return self.variable()
        raise self.fail(f"unexpected character {self.text[self.pos]!r}")

    def string(self, quote_char: str) -> StringValue:
        start = self.pos
        self.pos += 1
        out: list[str] = []
        text = self.text
        while self.pos < len(text) and text[self.pos] != quote_char:
            char = text[self.pos]
            if char == "\\" and self.pos + 1 < len(text):
                self.pos += 1
                escaped = text[self.pos]
                out.append(_ESCAPES.get(escaped, "\\" + escaped))
            else:
                out.append(char)
            self.pos += 1
        if self.pos >= len(text):
            self.pos = start
            raise self.fail("unterminated string literal")
        self.pos += 1
        return StringValue(value="".join(out))

    def variable(self) -> VariableRef:
        self.pos += 3
        self.skip()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _VAR_CHARS:
            self.pos += 1
        if self.pos == start:
            raise self.fail("empty variable name")
        name = self.text[start : self.pos]
        if not self.startswith("}}"):
            raise self.fail(f"unterminated variable reference ${{{{{name}")
        self.pos += 2
        return VariableRef(name=name)


def parse_condition(expr: str, *, location: Location | None = None) -> Condition:
    """Parse ``expr``; raise :class:`ConditionError` (a ``RecipeError``) if it is invalid."""
    parser = _Parser(expr)
    try:
        tree = parser.expr()
        parser.skip()
        if parser.pos != len(expr):
            raise parser.fail(f"unexpected trailing input {excerpt(expr[parser.pos :])}")
    except _SyntaxError as exc:
        raise ConditionError(
            f"invalid condition {excerpt(expr)}: {exc}", location=location
        ) from None
    return tree


def condition_variables(cond: Condition) -> frozenset[str]:
    """The names of the variables an expression still refers to."""
    if isinstance(cond, BoolOp):
        return condition_variables(cond.left) | condition_variables(cond.right)
    return frozenset(v.name for v in (cond.left, cond.right) if isinstance(v, VariableRef))


def evaluate_condition(
    expr: str | Condition,
    lookup: Lookup | None = None,
    *,
    location: Location | None = None,
) -> bool:
    """Evaluate a condition (text or parsed).

    ``lookup`` resolves ``${{name}}`` operands; a mapping that lacks a name raises
    :class:`~melange2.recipe.errors.UndefinedVariable`. Without a lookup every variable is
    ``""``, as in melange.
    """
    tree = parse_condition(expr, location=location) if isinstance(expr, str) else expr

    def resolve(operand: Operand) -> str:
        if isinstance(operand, StringValue):
            return operand.value
        if lookup is None:
            return ""
        if callable(lookup):
            return lookup(operand.name)
        try:
            return lookup[operand.name]
        except KeyError:
            raise UndefinedVariable(operand.name, location=location) from None

    def walk(node: Condition) -> bool:
        if isinstance(node, BoolOp):
            left, right = walk(node.left), walk(node.right)
            return (left and right) if node.op == "&&" else (left or right)
        equal = resolve(node.left) == resolve(node.right)
        return equal if node.op == "==" else not equal

    return walk(tree)


def quote(value: str) -> str:
    """Quote ``value`` as a condition string literal that evaluates back to ``value``.

    This is what substitution into ``if:`` fields inserts (melange uses Go's
    ``strconv.Quote``; this quoting round-trips every string exactly).
    """
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\t", "\\t") + '"'
