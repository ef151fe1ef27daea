"""The exception tree drawn in ``melange2.errors`` is the project's: every exception
class defined in a melange2 module is drawn (or listed as a private signal), under its
real parent, with the module it lives in; nothing drawn is missing."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import melange2
from melange2 import errors

#: the tree's lines: ``├── Name   module: ...`` (or ``└──``), indented 4 per level
_NODE = re.compile(r"^(?P<indent>(?:│   |    )*)(?:├── |└── )(?P<name>\w+)(?:\s+(?P<rest>.*))?$")
_ROOT = re.compile(r"^(?P<name>[A-Z]\w+)(?:\s+(?P<rest>.*))?$")
_SKIP = ("melange2.buildkit._proto", "melange2.store.migrations.env")


def _project_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(melange2.__path__, "melange2."):
        if info.name.startswith(_SKIP) or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == info.name
            ):
                assert obj.__name__ not in found, f"two exceptions named {obj.__name__}"
                found[obj.__name__] = obj
    return found


def _drawn() -> tuple[dict[str, str | None], dict[str, str]]:
    """Each drawn class's parent (``None`` for a root) and the module it is said to live in."""
    assert errors.__doc__ is not None
    parents: dict[str, str | None] = {}
    modules: dict[str, str] = {}
    stack: list[str] = []
    for block in errors.__doc__.split("::\n")[1:]:
        lines = block.lstrip("\n").split("\n\n")[0].splitlines()  # the literal block
        for raw in lines:
            line = raw[4:]
            node = _NODE.match(line)
            root = _ROOT.match(line) if node is None else None
            if node is not None:
                depth = len(node["indent"]) // 4 + 1
                name, rest = node["name"], node["rest"] or ""
            elif root is not None:
                depth, name, rest = 0, root["name"], root["rest"] or ""
            else:
                continue  # a description's second line
            del stack[depth:]
            parents[name] = stack[-1] if stack else None
            stack.append(name)
            where = re.match(r"([a-z_][\w.]*): ", rest)
            modules[name] = f"melange2.{where[1]}" if where else "melange2.errors"
    return parents, modules


def test_every_exception_class_is_drawn_under_its_parent_in_its_module() -> None:
    classes = _project_exceptions()
    parents, modules = _drawn()
    public = {n for n in classes if not n.startswith("_")}
    assert public - set(parents) == set(), "exceptions missing from errors.py's tree"
    assert set(parents) - public == set(), "drawn in errors.py but not in the code"
    for name, parent in parents.items():
        cls = classes[name]
        assert cls.__module__ == modules[name], (name, cls.__module__, modules[name])
        if parent is not None:
            assert classes[parent] in cls.__bases__, (name, parent, cls.__bases__)
        else:
            assert not any(b.__module__.startswith("melange2") for b in cls.__bases__), name


def test_every_private_signal_is_named() -> None:
    assert errors.__doc__ is not None
    private = {n for n in _project_exceptions() if n.startswith("_")}
    named = set(re.findall(r"``(_\w+)``", errors.__doc__))
    assert private == named
