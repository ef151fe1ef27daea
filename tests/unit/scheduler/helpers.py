"""Checks shared by the scheduler tests (plain functions, no fixtures)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from melange2.scheduler import PackageNode


def nodes(spec: Mapping[str, Sequence[str]]) -> list[PackageNode]:
    """One node per key, needing the values, in the mapping's order."""
    return [PackageNode(name=name, needs=tuple(needs)) for name, needs in spec.items()]


def is_topological(order: Sequence[str], deps: Mapping[str, Sequence[str]]) -> bool:
    """Every package once, each after all its dependencies."""
    position = {name: i for i, name in enumerate(order)}
    if len(position) != len(order) or set(position) != set(deps):
        return False
    return all(position[d] < position[name] for name, ds in deps.items() for d in ds)


def reaches(deps: Mapping[str, Sequence[str]], start: str, goal: str) -> bool:
    """Whether ``goal`` is reachable from ``start`` along ``deps`` (``start`` itself counts)."""
    seen = {start}
    stack = [start]
    while stack:
        here = stack.pop()
        if here == goal:
            return True
        for nxt in deps[here]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return False


def is_acyclic(deps: Mapping[str, Sequence[str]]) -> bool:
    """Kahn's check: every node can be peeled off."""
    waiting = {name: len(ds) for name, ds in deps.items()}
    dependents: dict[str, list[str]] = {name: [] for name in deps}
    for name, ds in deps.items():
        for d in ds:
            dependents[d].append(name)
    ready = [name for name, count in waiting.items() if count == 0]
    seen = 0
    while ready:
        name = ready.pop()
        seen += 1
        for u in dependents[name]:
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    return seen == len(deps)
