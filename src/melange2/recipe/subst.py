"""melange's ``${{...}}`` substitutions.

A reference is ``${{`` + optional spaces + a name of ``[A-Za-z0-9._-]`` + optional spaces +
``}}``, or ``${{`` + an expression + ``}}`` (``${{range.key == "64" && " (ILP64)" || ""}}``,
see :mod:`melange2.recipe.expr`: newer melange's form, beyond v0.34.0). Anything else that
starts with ``${{`` is malformed. Mappings here are keyed by the bare name
(``package.version``, not ``${{package.version}}``).

The standard mapping for a build (:func:`substitution_map`) holds, for ``x86_64``/glibc:

===============================  ==============================================
``package.name``                 the origin package's name
``package.version``              its version
``package.epoch``                its epoch
``package.full-version``         ``<version>-r<epoch>``
``package.description``          its description
``package.srcdir``               ``/home/build``
``targets.outdir``               ``/home/build/melange-out``
``targets.destdir``              ``/home/build/melange-out/<package.name>``
``targets.contextdir``           destdir of the package or subpackage being built
``targets.subpkgdir``            ``/home/build/melange-out/<subpackage>`` (subpackages only)
``targets.package.<name>``       ``/home/build/melange-out/<name>`` for every package
``subpkg.name``                  the subpackage's name (subpackages only)
``context.name``                 the name of the package or subpackage being built
``build.arch``                   ``x86_64`` (apk name; ``aarch64`` on arm64)
``build.goarch``                 ``amd64`` (OCI name; ``arm64`` on aarch64)
``host.triplet.gnu``             ``x86_64-pc-linux-gnu`` (``aarch64-unknown-linux-gnu``)
``host.triplet.rust``            ``x86_64-unknown-linux-gnu``
``cross.triplet.gnu.glibc``      ``x86_64-pc-linux-gnu``
``cross.triplet.gnu.musl``       ``x86_64-pc-linux-musl``
``cross.triplet.rust.glibc``     ``x86_64-unknown-linux-gnu``
``cross.triplet.rust.musl``      ``x86_64-unknown-linux-musl``
``options.<name>.enabled``       ``true``/``false`` for each build option
``vars.<name>``                  each var, and each var-transform's ``to``
===============================  ==============================================

``range.key``/``range.value`` exist while a ranged subpackage is expanded, and
``inputs.<name>`` while a ``uses:`` pipeline runs (:func:`with_inputs`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from melange2.names import excerpt
from melange2.recipe import expr as _expr
from melange2.recipe.arch import parse_arch
from melange2.recipe.cond import quote
from melange2.recipe.errors import RecipeFieldError, UndefinedVariable
from melange2.recipe.model import Config, Location, Package, Step, frozen_map

__all__ = [
    "BUILD_DIR",
    "OUT_DIR",
    "base_substitutions",
    "find_references",
    "go_regex_replace_all",
    "resolve_vars",
    "subpackage_substitutions",
    "substitute",
    "substitute_condition",
    "substitute_step",
    "substitute_steps",
    "substitution_map",
    "with_inputs",
]

#: The build workspace inside the build environment.
BUILD_DIR: Final = "/home/build"
#: Where packages are staged: one directory per (sub)package.
OUT_DIR: Final = "/home/build/melange-out"

_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Reference:
    """One ``${{name}}`` (or ``${{expression}}``) occurrence: ``text[start:end]`` is the
    whole reference."""

    start: int
    end: int
    #: The variable's name; ``""`` for an expression.
    name: str
    #: The parsed expression, when the braces hold one rather than a name.
    expr: _expr.Expr | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Every variable the reference needs."""
        return _expr.names(self.expr) if self.expr is not None else (self.name,)


class _Malformed(Exception):
    def __init__(self, index: int) -> None:
        self.index = index


_SIMPLE: Final = re.compile(r"\$\{\{ *([A-Za-z0-9._-]+) *\}\}")


def _scan(text: str) -> Iterable[Reference]:
    pos = 0
    while True:
        start = text.find("${{", pos)
        if start < 0:
            return
        simple = _SIMPLE.match(text, start)
        if simple is not None:  # the common case, matched in C
            yield Reference(start=start, end=simple.end(), name=simple.group(1))
            pos = simple.end()
            continue
        i = start + 3
        while i < len(text) and text[i] == " ":
            i += 1
        name_start = i
        while i < len(text) and text[i] in _NAME_CHARS:
            i += 1
        name = text[name_start:i]
        while i < len(text) and text[i] == " ":
            i += 1
        if name and text.startswith("}}", i):
            yield Reference(start=start, end=i + 2, name=name)
            pos = i + 2
            continue
        try:
            tree, end = _expr.parse(text, start + 3)
        except _expr.ExprSyntaxError:
            raise _Malformed(start) from None
        yield Reference(start=start, end=end, name="", expr=tree)
        pos = end


@functools.lru_cache(maxsize=16384)
def _template(text: str) -> tuple[tuple[Reference, ...], int]:
    """The references of ``text`` and where a malformed one starts (``-1``: none).

    Cached: the same pipeline scripts are substituted for every config of a submission."""
    refs: list[Reference] = []
    try:
        for ref in _scan(text):
            refs.append(ref)
    except _Malformed as exc:
        return tuple(refs), exc.index
    return tuple(refs), -1


def find_references(text: str, *, location: Location | None = None) -> tuple[Reference, ...]:
    """Every ``${{...}}`` reference in ``text``; a malformed one is a ``RecipeError``."""
    try:
        return tuple(_scan(text))
    except _Malformed as exc:
        raise _malformed_error(text, exc.index, location) from None


def _at(location: Location | None, text: str, index: int) -> Location | None:
    if location is None:
        return None
    return dataclasses.replace(location, line=location.line_of(text, index), literal=False)


def _malformed_error(text: str, index: int, location: Location | None) -> RecipeFieldError:
    snippet = text[index : index + 40].split("\n", 1)[0]
    return RecipeFieldError(
        f"malformed substitution {snippet!r} (expected ${{{{name}}}})",
        location=_at(location, text, index),
    )


def substitute(
    text: str,
    mapping: Mapping[str, str],
    *,
    location: Location | None = None,
    passthrough: tuple[str, ...] = (),
    quote_values: bool = False,
) -> str:
    """Replace every ``${{name}}`` in ``text`` with ``mapping[name]``, in one pass.

    An undefined name raises :class:`~melange2.recipe.errors.UndefinedVariable` naming
    ``location`` (the line is adjusted within multi-line values), unless it starts with one
    of the ``passthrough`` prefixes: those references are left exactly as written (use
    ``("inputs.",)`` before ``uses:`` is resolved; ``("",)`` leaves every unknown name and
    malformed reference alone). With ``quote_values`` each value is inserted as a quoted
    condition literal, which is how melange substitutes ``if:`` expressions.

    >>> substitute("${{package.name}}-${{ vars.x }}", {"package.name": "a", "vars.x": "b"})
    'a-b'
    """
    if "${{" not in text:
        return text
    refs, malformed = _template(text)
    if malformed >= 0 and "" not in passthrough:
        raise _malformed_error(text, malformed, location)
    out: list[str] = []
    pos = 0
    for ref in refs:
        if ref.expr is None:
            value = mapping.get(ref.name)
            missing = ref.name if value is None else ""
        else:
            try:
                value, missing = _expr.evaluate(ref.expr, mapping), ""
            except _expr.Missing as exc:
                value, missing = None, exc.name
        if value is None:
            if passthrough and missing.startswith(passthrough):
                continue
            raise UndefinedVariable(missing, location=_at(location, text, ref.start))
        out.append(text[pos : ref.start])
        out.append(quote(value) if quote_values else value)
        pos = ref.end
    out.append(text[pos:])
    return "".join(out)


def substitute_condition(
    expr: str,
    mapping: Mapping[str, str],
    *,
    location: Location | None = None,
    passthrough: tuple[str, ...] = (),
) -> str:
    """Substitute an ``if:`` expression, quoting values (see :func:`substitute`)."""
    return substitute(expr, mapping, location=location, passthrough=passthrough, quote_values=True)


def base_substitutions(
    package: Package,
    *,
    arch: str = "x86_64",
    libc: str = "gnu",
    package_names: Iterable[str] = (),
    build_options: Iterable[str] = (),
    enabled_options: Iterable[str] = (),
) -> dict[str, str]:
    """The origin package's mapping without ``vars.*`` (see the module table)."""
    target = parse_arch(arch)
    destdir = f"{OUT_DIR}/{package.name}"
    mapping = {
        "package.name": package.name,
        "package.version": package.version,
        "package.epoch": str(package.epoch),
        "package.full-version": package.full_version,
        "package.description": package.description,
        "package.srcdir": BUILD_DIR,
        "targets.outdir": OUT_DIR,
        "targets.destdir": destdir,
        "targets.contextdir": destdir,
        "context.name": package.name,
        "host.triplet.gnu": target.gnu_triplet(libc),
        "host.triplet.rust": target.rust_triplet(libc),
        "cross.triplet.gnu.glibc": target.gnu_triplet("gnu"),
        "cross.triplet.gnu.musl": target.gnu_triplet("musl"),
        "cross.triplet.rust.glibc": target.rust_triplet("gnu"),
        "cross.triplet.rust.musl": target.rust_triplet("musl"),
        "build.arch": target.apk,
        "build.goarch": target.oci,
    }
    for name in (package.name, *package_names):
        mapping[f"targets.package.{name}"] = f"{OUT_DIR}/{name}"
    for option in build_options:
        mapping[f"options.{option}.enabled"] = "false"
    for option in enabled_options:
        mapping[f"options.{option}.enabled"] = "true"
    return mapping


def subpackage_substitutions(mapping: Mapping[str, str], name: str) -> dict[str, str]:
    """``mapping`` as seen while building subpackage ``name``."""
    out = dict(mapping)
    subpkgdir = f"{OUT_DIR}/{name}"
    out["subpkg.name"] = name
    out["context.name"] = name
    out["targets.subpkgdir"] = subpkgdir
    out["targets.contextdir"] = subpkgdir
    return out


def resolve_vars(
    vars: Mapping[str, str],
    transforms: Iterable[tuple[str, str, str, str]],
    base: Mapping[str, str],
    *,
    locations: Callable[[str], Location | None] = lambda _key: None,
) -> dict[str, str]:
    """Compute ``vars.*``: each var substituted (it may use ``base`` and earlier vars),
    then each var-transform ``(from, match, replace, to)`` in order.

    Returns bare var names (``{"x": "1"}`` for ``vars.x``). ``locations`` maps a key such
    as ``"vars.x"`` or ``"var-transforms[0].match"`` to where it was written.
    """
    current = dict(base)
    resolved: dict[str, str] = {}
    for key, raw in vars.items():
        value = substitute(raw, current, location=locations(f"vars.{key}"))
        resolved[key] = current[f"vars.{key}"] = value
    for index, (from_, match, replace, to) in enumerate(transforms):
        prefix = f"var-transforms[{index}]"
        source = substitute(from_, current, location=locations(f"{prefix}.from"))
        try:
            value = go_regex_replace_all(match, source, replace)
        except ValueError as exc:
            raise RecipeFieldError(
                f"match {excerpt(match)} is not a valid regular expression: {exc}",
                location=locations(f"{prefix}.match"),
            ) from None
        resolved[to] = current[f"vars.{to}"] = value
    return resolved


def substitution_map(
    config: Config,
    *,
    subpackage: str | None = None,
) -> dict[str, str]:
    """The standard mapping for building ``config`` (or one of its subpackages).

    ``config`` is a loaded :class:`~melange2.recipe.model.Config`; its ``arch``, ``libc``,
    options and resolved vars are used.
    """
    mapping = base_substitutions(
        config.package,
        arch=config.arch,
        libc=config.libc,
        package_names=config.package_names[1:],
        build_options=config.build_options,
        enabled_options=config.enabled_options,
    )
    mapping.update({f"vars.{k}": v for k, v in config.resolved_vars.items()})
    if subpackage is not None:
        mapping = subpackage_substitutions(mapping, subpackage)
        for sp in config.subpackages:
            if sp.name == subpackage and sp.range:
                mapping.update({"range.key": sp.range_key, "range.value": sp.range_value})
    return mapping


def with_inputs(
    mapping: Mapping[str, str],
    with_: Mapping[str, str],
    *,
    locations: Callable[[str], Location | None] = lambda _key: None,
) -> dict[str, str]:
    """``mapping`` plus ``inputs.<key>`` for each ``with:`` argument, as melange's
    ``MutateWith``: the argument values are themselves substituted against the result.
    """
    out = dict(mapping)
    for key, value in with_.items():
        out[key[3:-2].strip() if key.startswith("${{") else f"inputs.{key}"] = value
    snapshot = dict(out)
    for key, value in with_.items():
        name = key[3:-2].strip() if key.startswith("${{") else f"inputs.{key}"
        out[name] = substitute(value, snapshot, location=locations(f"with.{key}"))
    return out


# -- steps -------------------------------------------------------------------------------


def substitute_step(
    step: Step,
    mapping: Mapping[str, str],
    *,
    passthrough: tuple[str, ...] = (),
) -> Step:
    """Substitute every field of ``step`` that melange substitutes, recursively.

    ``name``, ``with`` values, ``runs``, ``working-directory``, ``environment`` values and
    ``needs.packages`` are substituted; ``if`` is substituted with quoted values; ``uses``
    and ``label`` are kept.
    """

    def text(key: str, value: str) -> str:
        return substitute(value, mapping, location=step.where(key), passthrough=passthrough)

    return dataclasses.replace(
        step,
        name=text("name", step.name),
        with_=frozen_map({k: text(f"with.{k}", v) for k, v in step.with_.items()}),
        runs=text("runs", step.runs),
        working_directory=text("working-directory", step.working_directory),
        if_=substitute_condition(
            step.if_, mapping, location=step.where("if"), passthrough=passthrough
        ),
        environment=frozen_map(
            {k: text(f"environment.{k}", v) for k, v in step.environment.items()}
        ),
        needs_packages=tuple(
            text(f"needs.packages[{i}]", v) for i, v in enumerate(step.needs_packages)
        ),
        pipeline=substitute_steps(step.pipeline, mapping, passthrough=passthrough),
    )


def substitute_steps(
    steps: Iterable[Step],
    mapping: Mapping[str, str],
    *,
    passthrough: tuple[str, ...] = (),
) -> tuple[Step, ...]:
    """:func:`substitute_step` over a sequence of steps."""
    return tuple(substitute_step(s, mapping, passthrough=passthrough) for s in steps)


# -- Go regular expressions ------------------------------------------------------------

_POSIX_CLASSES: Final = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7F",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1F\\x7F",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}


def _translate_go_regex(pattern: str) -> str:
    """Rewrite the RE2 spellings Python lacks (``\\z``, ``(?<n>``, ``[[:alpha:]]``)."""
    out: list[str] = []
    i = 0
    in_class = False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            pair = pattern[i : i + 2]
            out.append("\\Z" if pair == "\\z" and not in_class else pair)
            i += 2
            continue
        if in_class:
            if pattern.startswith("[:", i):
                end = pattern.find(":]", i + 2)
                name = pattern[i + 2 : end] if end > 0 else ""
                negated = name.startswith("^")
                body = _POSIX_CLASSES.get(name.lstrip("^"))
                if body is not None and not negated:
                    out.append(body)
                    i = end + 2
                    continue
            if char == "]":
                in_class = False
            out.append(char)
            i += 1
            continue
        if char == "[":
            in_class = True
            out.append(char)
            i += 1
            if pattern.startswith("^", i):
                out.append("^")
                i += 1
            if pattern.startswith("]", i):
                out.append("\\]")
                i += 1
            continue
        if pattern.startswith("(?<", i) and not pattern.startswith(("(?<=", "(?<!"), i):
            out.append("(?P<")
            i += 3
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _expand_go_template(template: str, match: re.Match[str]) -> str:
    """Go's ``Regexp.Expand``: ``$1``, ``${1}``, ``$name``, ``${name}``, ``$$``."""
    out: list[str] = []
    rest = template
    while True:
        before, dollar, after = rest.partition("$")
        out.append(before)
        if not dollar:
            return "".join(out)
        rest = after
        if rest.startswith("$"):
            out.append("$")
            rest = rest[1:]
            continue
        brace = rest.startswith("{")
        body = rest[1:] if brace else rest
        end = 0
        while end < len(body) and (body[end].isalnum() or body[end] == "_"):
            end += 1
        name = body[:end]
        if not name or (brace and not body.startswith("}", end)):
            out.append("$")
            continue
        rest = body[end + 1 :] if brace else body[end:]
        group: int | str | None = name
        if name.isdigit() and name.isascii():
            group = int(name) if not (name.startswith("0") and len(name) > 1) else None
            if group is not None and group > 10**8:
                group = None
        if group is None:
            continue
        if isinstance(group, str) and group not in match.re.groupindex:
            continue
        if isinstance(group, int) and group > match.re.groups:
            continue
        value = match.group(group)
        if value is not None:
            out.append(value)


def go_regex_replace_all(pattern: str, text: str, template: str) -> str:
    """Go's ``regexp.MustCompile(pattern).ReplaceAllString(text, template)``.

    Empty matches right after a previous match are skipped, as in Go. Raises
    ``ValueError`` when the pattern does not compile.
    """
    try:
        compiled = re.compile(_translate_go_regex(pattern))
    except (re.error, FutureWarning, OverflowError, RecursionError) as exc:
        raise ValueError(str(exc)) from None
    out: list[str] = []
    last_end = 0
    for match in compiled.finditer(text):
        start, end = match.span()
        if end == start == last_end and start != 0:
            continue
        out.append(text[last_end:start])
        out.append(_expand_go_template(template, match))
        last_end = end
    out.append(text[last_end:])
    return "".join(out)
