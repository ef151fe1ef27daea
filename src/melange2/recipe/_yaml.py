"""A typed, position-aware view of a composed YAML document (private).

We compose (not construct): every node keeps its original text and its start mark, so
``version: 1.10`` stays ``"1.10"`` (as Go's yaml.v3 decodes it into a string) and every
error can name a line.

Composing is libyaml's (PyYAML's C parser): a submission can bring a whole distribution's
configs, and it composes about five times faster than ruamel.yaml's C parser did (both are
libyaml; ruamel's Python layer costs the difference). Plain scalars are resolved with the
YAML 1.2 core schema (``yes``/``on`` are strings, ``010`` is a decimal integer), as
ruamel.yaml did and as Go's yaml.v3 mostly does.

Limits that hold before anything recurses: libyaml's composer recurses once per level
of nesting (in PyYAML's binding as in ruamel's: 100,000 ``[`` crash the process), so the
text is first walked as the parser's event stream (:func:`yaml.parse`), which is
iterative, and refused past :data:`MAX_DEPTH` levels, :data:`MAX_EVENTS` nodes or
:data:`MAX_TEXT` characters. Aliases share nodes; a budget bounds how many nodes one
parse may visit, so alias bombs and recursive anchors end in a ``RecipeError``, and merge
(``<<``) chains are bounded too. Scalars are quoted back in errors as short, escaped
excerpts only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

import yaml
from yaml.events import MappingEndEvent, MappingStartEvent, SequenceEndEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from melange2.names import excerpt
from melange2.recipe.errors import RecipeFieldError
from melange2.recipe.model import FieldMark, Location

_TAG_PREFIX: Final = "tag:yaml.org,2002:"
_MAX_NODES: Final = 50_000
#: deepest nesting of mappings and lists in one document
MAX_DEPTH: Final = 100
#: most nodes (scalars, aliases, mappings, lists) in one document
MAX_EVENTS: Final = 200_000
#: longest document, in characters
MAX_TEXT: Final = 8 * 1024 * 1024
#: longest chain of merges (``<<: *a`` where ``a`` merges another...)
MAX_MERGE_DEPTH: Final = 32
_TRUE: Final = frozenset({"true", "yes", "on"})
_FALSE: Final = frozenset({"false", "no", "off"})


_STR: Final = _TAG_PREFIX + "str"
_NULL: Final = _TAG_PREFIX + "null"
_MERGE: Final = _TAG_PREFIX + "merge"
#: The tag the composer gives every plain scalar: resolved when asked (:func:`_tag`); a
#: config has many scalars and most only need "is it null?" (:data:`_NULL_WORDS`).
_PLAIN: Final = "?plain"
_NULL_WORDS: Final = frozenset({"", "~", "null", "Null", "NULL"})
_DEFAULT_TAGS: Final = {
    ScalarNode: _STR,
    SequenceNode: _TAG_PREFIX + "seq",
    MappingNode: _TAG_PREFIX + "map",
}


def _tag(node: Node) -> str:
    """The node's tag, a plain scalar's resolved with the YAML 1.2 core schema."""
    tag = str(node.tag or "")
    if tag == _PLAIN:
        value = str(node.value)
        for name, pattern in _Loader.yaml_implicit_resolvers.get(value[:1], ()):
            if pattern.match(value):
                return name
        return _STR
    return tag


class _Loader(yaml.CSafeLoader):
    """libyaml's composer with the YAML 1.2 core schema's implicit tags."""

    yaml_implicit_resolvers: dict[str, list[tuple[str, re.Pattern[str]]]] = {}

    # No path resolvers: the composer's per-node bookkeeping for them is skipped.
    def descend_resolver(self, current_node: object, current_index: object) -> None:
        pass

    def ascend_resolver(self) -> None:
        pass

    def resolve(self, kind: type[Node], value: object, implicit: tuple[bool, bool] | bool) -> str:
        if kind is ScalarNode and implicit[0]:  # type: ignore[index]  # a pair for scalars
            return _PLAIN
        return _DEFAULT_TAGS[kind]


#: (tag, pattern, first characters) of the YAML 1.2 core schema, as ruamel.yaml has them
_CORE_SCHEMA: Final = [
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    (
        "float",
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        list("-+0123456789."),
    ),
    (
        "int",
        r"""^(?:[-+]?0b[0-1_]+
        |[-+]?0o?[0-7_]+
        |[-+]?[0-9_]+
        |[-+]?0x[0-9a-fA-F_]+)$""",
        list("-+0123456789"),
    ),
    ("merge", r"^(?:<<)$", ["<"]),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
]
for _name, _pattern, _first in _CORE_SCHEMA:
    _Loader.add_implicit_resolver(_TAG_PREFIX + _name, re.compile(_pattern, re.X), _first)


@dataclass(kw_only=True, slots=True)
class Document:
    """Per-parse state: the file name and the node budget."""

    file: str
    budget: int = _MAX_NODES
    #: Mapping nodes already checked (id -> keys), so shared aliases are walked once.
    _maps: dict[int, dict[str, tuple[Node, Node]]] = field(default_factory=dict)

    def spend(self, where: Value) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise where.error("document too large (too many nodes or alias expansions)")


def depth_bound(text: str) -> int:
    """An upper bound of ``text``'s nesting depth, without parsing it. A block
    collection nested in another starts further right, except a sequence that is a
    mapping's value (``key:`` then ``- item`` at the key's column), at most once per
    level: so block levels are at most twice the widest leading indentation (spaces,
    ``-``, ``?``) plus one; each flow level needs a ``[`` or ``{``."""
    prefix = max((len(line) - len(line.lstrip(" -?")) for line in text.splitlines()), default=0)
    return 2 * (prefix + 1) + text.count("[") + text.count("{") + 2


def _check_shape(text: str, file: str) -> None:
    """Refuse a document too large or nested too deeply, from the parser's events (no
    recursion, nothing composed yet). Skipped when the document cannot exceed the
    limits: at most :data:`MAX_EVENTS` characters (a node takes one at least) and a
    :func:`depth_bound` within :data:`MAX_DEPTH` (most configs: the pass costs a third
    of a parse). libyaml's scanner, which reads ahead of the events, has a nesting
    limit of its own (1,000 levels, in libyaml 0.2.6): past it, it is the same error."""
    if len(text) <= MAX_EVENTS and depth_bound(text) <= MAX_DEPTH:
        return
    depth = 0
    try:
        for events, event in enumerate(yaml.parse(text, Loader=yaml.CSafeLoader), 1):
            kind = type(event)
            if kind is MappingStartEvent or kind is SequenceStartEvent:
                depth += 1
                if depth > MAX_DEPTH:
                    raise _shape_error(
                        event.start_mark, file, f"nested more than {MAX_DEPTH} levels deep"
                    )
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                depth -= 1
            if events > MAX_EVENTS:
                raise _shape_error(event.start_mark, file, f"more than {MAX_EVENTS} nodes")
    except yaml.MarkedYAMLError as exc:
        if exc.problem != "exceeded maximum nesting depth":
            raise  # any other YAML error: compose() reports it
        raise _shape_error(
            exc.problem_mark, file, f"nested more than {MAX_DEPTH} levels deep"
        ) from None


def _shape_error(mark: object, file: str, problem: str) -> RecipeFieldError:
    line, column = getattr(mark, "line", None), getattr(mark, "column", None)
    return RecipeFieldError(
        f"document too large: {problem}",
        location=Location(
            file=file,
            line=line + 1 if isinstance(line, int) else 0,
            column=column + 1 if isinstance(column, int) else 0,
        ),
    )


def compose(text: str, file: str) -> tuple[Document, Value | None]:
    """Compose ``text``; ``None`` for an empty document. YAML errors become RecipeErrors."""
    doc = Document(file=file)
    if len(text) > MAX_TEXT:
        raise RecipeFieldError(
            f"document too large: {len(text)} characters, more than {MAX_TEXT}",
            location=Location(file=file, line=0, column=0),
        )
    try:
        _check_shape(text, file)
        node = yaml.compose(text, Loader=_Loader)
    except RecipeFieldError:
        raise
    except Exception as exc:  # PyYAML raises several unrelated types; keep the cause
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = getattr(mark, "line", None)
        column = getattr(mark, "column", None)
        problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
        problem = str(problem).strip().splitlines()[0][:200] if str(problem).strip() else ""
        location = Location(
            file=file,
            line=line + 1 if isinstance(line, int) else 0,
            column=column + 1 if isinstance(column, int) else 0,
        )
        raise RecipeFieldError(
            f"invalid YAML: {problem or type(exc).__name__}", location=location
        ) from exc
    if node is None:
        return doc, None
    return doc, Value(doc=doc, node=node, path="")


class Value:
    """One YAML node at a field path (a plain slotted class: one is made per node)."""

    __slots__ = ("doc", "node", "path")

    def __init__(self, *, doc: Document, node: Node, path: str) -> None:
        self.doc = doc
        self.node = node
        self.path = path

    @property
    def loc(self) -> Location:
        node = self.node
        mark = node.start_mark
        return Location(
            file=self.doc.file,
            line=mark.line + 1,
            column=mark.column + 1,
            path=self.path,
            literal=getattr(node, "style", None) == "|",
        )

    @property
    def mark(self) -> FieldMark:
        """Where the value is, as a cheap :data:`~melange2.recipe.model.FieldMark`."""
        node = self.node
        mark = node.start_mark
        return (mark.line + 1, mark.column + 1, self.path, getattr(node, "style", None) == "|")

    def error(self, problem: str) -> RecipeFieldError:
        return RecipeFieldError(problem, location=self.loc)

    def _sub(self, node: Node, suffix: str) -> Value:
        path = self.path
        if path and suffix[:1] != "[":
            path = f"{path}.{suffix}"
        else:
            path += suffix
        return Value(doc=self.doc, node=node, path=path)

    @property
    def is_null(self) -> bool:
        node = self.node
        if type(node) is not ScalarNode:
            return False
        tag = node.tag
        return (tag == _PLAIN and node.value in _NULL_WORDS) or tag == _NULL

    @property
    def kind(self) -> str:
        if isinstance(self.node, MappingNode):
            return "a mapping"
        if isinstance(self.node, SequenceNode):
            return "a list"
        if self.is_null:
            return "null"
        return f"{self.scalar_type} {excerpt(self.node.value, 40)}"

    @property
    def scalar_type(self) -> str:
        tag = _tag(self.node)
        if tag.startswith(_TAG_PREFIX):
            tag = tag[len(_TAG_PREFIX) :]
        return {"str": "the string", "int": "the number", "float": "the number"}.get(
            tag, f"the {tag}"
        )

    # -- mappings -------------------------------------------------------------------

    def _pairs(self, merges: int = 0) -> dict[str, tuple[Node, Node]]:
        cached = self.doc._maps.get(id(self.node))
        if cached is not None:
            return cached
        if merges > MAX_MERGE_DEPTH:
            raise self.error(f"merges (<<) nested more than {MAX_MERGE_DEPTH} deep")
        if not isinstance(self.node, MappingNode):
            raise self.error(f"expected a mapping, got {self.kind}")
        explicit: dict[str, tuple[Node, Node]] = {}
        # Registered before filling, so a mapping that merges itself cannot loop.
        self.doc._maps[id(self.node)] = explicit
        merged: list[Node] = []
        doc = self.doc
        for key, value in self.node.value:
            doc.budget -= 1
            if doc.budget < 0:
                doc.spend(self)
            if (key.tag == _PLAIN and key.value == "<<") or key.tag == _MERGE:
                if isinstance(value, SequenceNode):
                    merged.extend(value.value)
                else:
                    merged.append(value)
                continue
            if not isinstance(key, ScalarNode):
                raise Value(doc=self.doc, node=key, path=self.path).error(
                    "mapping keys must be strings"
                )
            name = str(key.value)
            if name in explicit:
                first = explicit[name][0].start_mark.line + 1
                raise Value(doc=self.doc, node=key, path=self.path).error(
                    f"key {excerpt(name, 40)} is already defined on line {first}"
                )
            explicit[name] = (key, value)
        for source in merged:
            source_value = Value(doc=self.doc, node=source, path=self.path)
            if not isinstance(source, MappingNode):
                raise source_value.error(f"merge (<<) needs a mapping, got {source_value.kind}")
            for name, pair in source_value._pairs(merges + 1).items():
                explicit.setdefault(name, pair)
        return explicit

    def mapping(self) -> dict[str, Value]:
        """The mapping's entries by key (``null`` is an empty mapping)."""
        if self.is_null:
            return {}
        return {name: self._sub(value, name) for name, (_, value) in self._pairs().items()}

    # -- sequences ------------------------------------------------------------------

    def items(self) -> list[Value]:
        """The list's items (``null`` is an empty list)."""
        if self.is_null:
            return []
        if not isinstance(self.node, SequenceNode):
            raise self.error(f"expected a list, got {self.kind}")
        out = []
        for index, item in enumerate(self.node.value):
            self.doc.spend(self)
            out.append(self._sub(item, f"[{index}]"))
        return out

    # -- scalars --------------------------------------------------------------------

    def text(self) -> str:
        """A string field: any scalar's original text (``null`` is ``""``)."""
        if self.is_null:
            return ""
        if not isinstance(self.node, ScalarNode):
            raise self.error(f"expected a string, got {self.kind}")
        return str(self.node.value)

    def integer(self, *, minimum: int = 0, maximum: int = 2**64 - 1) -> int:
        """An integer field (plain YAML integers only, as Go's decoder)."""
        if self.is_null:
            return 0
        if not isinstance(self.node, ScalarNode) or _tag(self.node) != _TAG_PREFIX + "int":
            raise self.error(f"expected an integer, got {self.kind}")
        raw = str(self.node.value).replace("_", "")
        try:
            value = int(raw, 0)
        except ValueError:
            try:
                value = int(raw, 10)
            except ValueError:
                raise self.error(f"expected an integer, got {self.kind}") from None
        if not minimum <= value <= maximum:
            raise self.error(f"{value} is out of range ({minimum}..{maximum})")
        return value

    def boolean(self) -> bool:
        """A boolean field (``true``/``false``, also ``yes``/``no``/``on``/``off``)."""
        if self.is_null:
            return False
        if isinstance(self.node, ScalarNode):
            word = str(self.node.value).lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
        raise self.error(f"expected true or false, got {self.kind}")
