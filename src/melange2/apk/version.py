"""APK versions and dependency constraints, ordered and matched as apk-tools does.

A version is ``number{.number}...{letter}{_suffix{number}}...{~hash}{-rN}``
(apk-tools ``version.c``, documented in ``apk-package(5)``)::

    compare_versions("1.2.10", "1.2.9") == 1        # numbers compare numerically
    compare_versions("1.02", "1.1") == -1           # ...unless one has a leading zero:
                                                    #    then as strings
    compare_versions("1.0_rc1", "1.0") == -1        # _alpha _beta _pre _rc sort before
    compare_versions("1.0_p1", "1.0") == 1          # _cvs _svn _git _hg _p sort after
    compare_versions("1.0a", "1.0") == 1            # one trailing letter
    compare_versions("1.0-r1", "1.0-r0") == 1       # the package revision

Invalid strings are compared too, token by token up to the first invalid token,
exactly as apk-tools does, so sorting never fails; :func:`is_valid_version` tells
them apart. Numbers are unbounded here (apk-tools wraps them at 64 bits).

A :class:`Constraint` is one dependency: ``name``, ``name=1.2-r0``, ``name>=1.2``,
``name<2``, ``name~1.2`` (fuzzy: any version starting with the tokens 1 and 2),
``name<~2`` / ``name>~1``, ``!name`` (a conflict), and provided names such as
``so:libc.musl-x86_64.so.1`` or ``cmd:foo=1.2-r0``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Self, TypeVar

from melange2.apk.errors import ApkFormatError

__all__ = ["Constraint", "Operator", "compare_versions", "is_valid_version"]


class _Token(IntEnum):
    """Token kinds, in the order they may follow each other."""

    INITIAL_DIGIT = 0
    DIGIT = 1
    LETTER = 2
    SUFFIX = 3
    SUFFIX_NUMBER = 4
    COMMIT_HASH = 5
    REVISION = 6
    END = 7
    INVALID = 8


# Suffix ranks: pre-release suffixes below _NO_SUFFIX, post-release ones above.
_NO_SUFFIX = 4
_SUFFIX_RANK = {
    **{name: rank for rank, name in enumerate(("alpha", "beta", "pre", "rc"))},
    **{name: rank for rank, name in enumerate(("cvs", "svn", "git", "hg", "p"), _NO_SUFFIX + 1)},
}
_DIGITS = re.compile(r"[0-9]*")
_LOWER = re.compile(r"[a-z]*")
_HEX = re.compile(r"[0-9a-f]*")


@dataclass(slots=True)
class _Tokenizer:
    """Walks a version string; ``kind``, ``text``, ``number`` and ``suffix`` describe
    the current token."""

    source: str
    pos: int = 0
    kind: _Token = _Token.INITIAL_DIGIT
    text: str = ""
    number: int = 0
    suffix: int = 0

    def first(self) -> None:
        self.kind = _Token.INITIAL_DIGIT
        self._digits()

    def _digits(self) -> None:
        match = _DIGITS.match(self.source, self.pos)
        assert match is not None
        self.text = match.group()
        self.pos = match.end()
        if not self.text:
            self.kind = _Token.INVALID
        else:
            self.number = int(self.text)

    def next(self) -> None:
        if self.pos >= len(self.source):
            self.kind = _Token.END
            return
        char = self.source[self.pos]
        previous = self.kind
        if "a" <= char <= "z":
            if previous > _Token.DIGIT:
                self.kind = _Token.INVALID
                return
            self.text = char
            self.kind = _Token.LETTER
            self.pos += 1
        elif char == "." or "0" <= char <= "9":
            if char == ".":
                if previous > _Token.DIGIT:
                    self.kind = _Token.INVALID
                    return
                self.pos += 1
            if previous in (_Token.INITIAL_DIGIT, _Token.DIGIT):
                self.kind = _Token.DIGIT
            elif previous is _Token.SUFFIX:
                self.kind = _Token.SUFFIX_NUMBER
            else:
                self.kind = _Token.INVALID
                return
            self._digits()
        elif char == "_":
            if previous > _Token.SUFFIX_NUMBER:
                self.kind = _Token.INVALID
                return
            match = _LOWER.match(self.source, self.pos + 1)
            assert match is not None
            self.text = match.group()
            self.pos = match.end()
            rank = _SUFFIX_RANK.get(self.text)
            if rank is None:
                self.kind = _Token.INVALID
                return
            self.suffix = rank
            self.kind = _Token.SUFFIX
        elif char == "~":
            if previous >= _Token.COMMIT_HASH:
                self.kind = _Token.INVALID
                return
            match = _HEX.match(self.source, self.pos + 1)
            assert match is not None
            self.text = match.group()
            self.pos = match.end()
            self.kind = _Token.COMMIT_HASH if self.text else _Token.INVALID
        elif char == "-":
            if previous >= _Token.REVISION or not self.source.startswith("-r", self.pos):
                self.kind = _Token.INVALID
                return
            self.pos += 2
            self.kind = _Token.REVISION
            self._digits()
        else:
            self.kind = _Token.INVALID


_Ordered = TypeVar("_Ordered", int, str)


def _sign(a: _Ordered, b: _Ordered) -> int:
    return (a > b) - (a < b)


def _token_cmp(a: _Tokenizer, b: _Tokenizer) -> int:
    match a.kind:
        case _Token.DIGIT if a.text.startswith("0") or b.text.startswith("0"):
            # a leading zero makes the component a string (as in Gentoo's rules)
            return _sign(a.text, b.text)
        case _Token.DIGIT | _Token.INITIAL_DIGIT | _Token.SUFFIX_NUMBER | _Token.REVISION:
            return _sign(a.number, b.number)
        case _Token.SUFFIX:
            return _sign(a.suffix, b.suffix)
        case _:
            return _sign(a.text, b.text)


def _compare(a: str, b: str, *, fuzzy: bool = False) -> int:
    ta, tb = _Tokenizer(a), _Tokenizer(b)
    ta.first()
    tb.first()
    while ta.kind == tb.kind and ta.kind < _Token.END:
        result = _token_cmp(ta, tb)
        if result:
            return result
        ta.next()
        tb.next()
    if ta.kind == tb.kind:
        return 0
    if fuzzy and tb.kind is _Token.END:
        # ``b`` is a prefix of ``a``, token-wise
        return 0
    # Equal so far: the longer one is newer, unless it continues with a pre-release suffix.
    if ta.kind is _Token.SUFFIX and ta.suffix < _NO_SUFFIX:
        return -1
    if tb.kind is _Token.SUFFIX and tb.suffix < _NO_SUFFIX:
        return 1
    return -1 if ta.kind > tb.kind else 1


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` is older than, the same as or newer than ``b`` (apk-tools order)."""
    return _compare(a, b)


def is_valid_version(version: str) -> bool:
    """Whether apk-tools accepts ``version`` (``apk_version_validate``)."""
    tokens = _Tokenizer(version)
    tokens.first()
    while tokens.kind < _Token.END:
        tokens.next()
    return tokens.kind is _Token.END


# Result bits, as apk-tools combines them into an operator mask.
_EQUAL = 1
_LESS = 2
_GREATER = 4
_FUZZY = 8
_ANY = _EQUAL | _LESS | _GREATER


class Operator(StrEnum):
    """A constraint's comparison, spelled as apk-tools prints it."""

    ANY = ""
    EQUAL = "="
    LESS = "<"
    LESS_EQUAL = "<="
    GREATER = ">"
    GREATER_EQUAL = ">="
    #: the version starts with these tokens (``~``, also written ``=~``)
    FUZZY = "~"
    LESS_FUZZY = "<~"
    GREATER_FUZZY = ">~"


_OPERATOR_MASKS = {
    Operator.ANY: _ANY,
    Operator.EQUAL: _EQUAL,
    Operator.LESS: _LESS,
    Operator.LESS_EQUAL: _LESS | _EQUAL,
    Operator.GREATER: _GREATER,
    Operator.GREATER_EQUAL: _GREATER | _EQUAL,
    Operator.FUZZY: _EQUAL | _FUZZY,
    Operator.LESS_FUZZY: _LESS | _EQUAL | _FUZZY,
    Operator.GREATER_FUZZY: _GREATER | _EQUAL | _FUZZY,
}
_MASK_OPERATORS = {mask: op for op, mask in _OPERATOR_MASKS.items() if op is not Operator.ANY}
_OPERATOR_BITS = {"<": _LESS, ">": _GREATER, "=": _EQUAL, "~": _EQUAL | _FUZZY}
_COMPARER = re.compile(r"[<>=~]+")
_SEPARATOR = re.compile(r"\s")


@dataclass(frozen=True, kw_only=True)
class Constraint:
    """One dependency (``D:``, ``depend =``, a world entry) or one provided name (``p:``)."""

    #: a package name or a provided name (``so:libz.so.1``, ``cmd:sh``, ``pc:zlib``)
    name: str
    operator: Operator = Operator.ANY
    #: ``None`` exactly when ``operator`` is :attr:`Operator.ANY`
    version: str | None = None
    #: ``!name``: nothing matching may be installed
    conflict: bool = False
    #: ``name@tag``: pinned to a tagged repository
    tag: str | None = None

    def __post_init__(self) -> None:
        if not self.name or _SEPARATOR.search(self.name) or _COMPARER.search(self.name):
            raise ApkFormatError(f"invalid dependency name: {self.name!r}")
        if (self.operator is Operator.ANY) != (self.version is None):
            raise ApkFormatError("a constraint has a version exactly when it has an operator")
        if self.version is not None and not is_valid_version(self.version):
            raise ApkFormatError(f"invalid version in dependency {self.name!r}: {self.version!r}")

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse ``[!]name[@tag][op version]`` as apk-tools does (``apk_dep_parse``).

        Operators are made of ``<``, ``>``, ``=`` and ``~`` (``=~`` means ``~``);
        checksum pins (``name><Q1...``) are not supported.
        """
        spec = text.strip()
        conflict = spec.startswith("!")
        if conflict:
            spec = spec[1:]
        operator, version = Operator.ANY, None
        found = _COMPARER.search(spec)
        name = spec
        if found is not None:
            name, version = spec[: found.start()], spec[found.end() :]
            mask = 0
            for char in found.group():
                mask |= _OPERATOR_BITS[char]
            if mask & _ANY == _LESS | _GREATER:
                raise ApkFormatError(f"checksum dependencies are not supported: {text!r}")
            if mask not in _MASK_OPERATORS:
                raise ApkFormatError(f"invalid operator in dependency: {text!r}")
            operator = _MASK_OPERATORS[mask]
        name, at, tag = name.partition("@")
        if at and not tag:
            raise ApkFormatError(f"empty repository tag in dependency: {text!r}")
        try:
            return cls(
                name=name, operator=operator, version=version, conflict=conflict, tag=tag or None
            )
        except ApkFormatError as exc:
            raise ApkFormatError(f"invalid dependency {text!r}: {exc}") from exc

    def matches(self, version: str | None) -> bool:
        """Whether a package offering :attr:`name` at ``version`` satisfies this constraint.

        ``version`` is ``None`` for an unversioned provide (``p:cmd:foo``); as in apk-tools
        it satisfies any version requirement. A conflict matches what it does not forbid.
        """
        mask = _OPERATOR_MASKS[self.operator]
        if mask & _ANY == _ANY or version is None:
            ok = True
        else:
            assert self.version is not None
            result = _compare(version, self.version, fuzzy=bool(mask & _FUZZY))
            ok = bool(mask & {-1: _LESS, 0: _EQUAL, 1: _GREATER}[result])
        return ok != self.conflict

    def __str__(self) -> str:
        tag = f"@{self.tag}" if self.tag else ""
        version = self.version or ""
        return f"{'!' if self.conflict else ''}{self.name}{tag}{self.operator.value}{version}"
