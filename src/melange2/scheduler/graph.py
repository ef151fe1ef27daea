"""The dependency graph of one submission, and a plan for building it.

Pure: no I/O, no asyncio. Everything is linear or ``O((V + E) log V)`` so that a whole
distribution (thousands of configs) plans in well under a second.

Input is one :class:`PackageNode` per config (:func:`node_from_config` makes one from a
parsed :class:`~melange2.recipe.Config`). :func:`build_graph` resolves what each node
needs against what the submission's nodes are called or provide, and returns a
:class:`Graph`. :func:`priorities` ranks packages for the scheduler (longest remaining
path first; :func:`typical_duration` stands in for a package with no past duration),
and :func:`plan` answers a dry run: build order, cut edges, critical path and an
estimated makespan on ``slots`` parallel build slots.

Edges
-----
A needs B when one of A's ``needs`` strings, with its version constraint stripped
(``foo>=1.2``, ``foo=1.2-r0``, ``so:libfoo.so.1=1`` and ``foo@repo`` all name ``foo`` or
``so:libfoo.so.1``, see :func:`dependency_name`), is

* B's package name: then B alone, even if other nodes also provide that name; else
* in B's ``provides`` (subpackage names and ``dependencies.provides``): then every node
  providing it, in submission order, so that whichever provider apk picks is built first.

Names nobody in the submission provides are external (the published repository has them)
and do not order anything; ``!name`` conflicts are not needs; self-edges are dropped.

Cycles
------
With ``cycle_policy="error"`` any cycle raises :class:`CycleError`, naming the shortest
cycle through the earliest-submitted package on one
(``circular dependency detected: A -> B -> A``). With ``cycle_policy="break"`` each
strongly connected component (found by an iterative Tarjan) is put in a *bootstrap order*
and every edge pointing against that order is cut: the package is built against the
already-published version of that dependency. The order is the Eades-Lin-Smyth greedy
heuristic for a small feedback arc set, applied within the component with deterministic
tie-breaks:

1. while some member has no remaining in-component dependents, move it to the *back*
   (the earliest-submitted such member first);
2. else while some member has no remaining in-component dependencies, move it to the
   *front* (the earliest-submitted first);
3. else move to the front the member with the largest (in-component dependents minus
   in-component dependencies), the earliest-submitted on ties.

So the toolchain members that much of the cycle needs (a compiler, a shell) are built
first, against the repository, and the rest is built against them. Every edge from a
member to one placed after it is cut; then each cut edge, in order, is put back if that
closes no cycle, so no single reported cut can be undone (the cut set is minimal by
inclusion; on Wolfi, 137 of 3,217 in-cycle edges before this pass, 113 after). Cut edges
are reported as ``(dependent, dependency)`` pairs in submission order of the dependent.
"""

from __future__ import annotations

import heapq
import math
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from melange2.errors import FarmError
from melange2.jobs import CyclePolicy
from melange2.scheduler.placement import (
    NOTHING,
    Candidate,
    Capacity,
    Chosen,
    Request,
    Usage,
    Wait,
    choose,
    never_message,
    reservation,
)

if TYPE_CHECKING:
    from melange2.recipe import Config

__all__ = [
    "CycleError",
    "CyclePolicy",
    "DuplicatePackage",
    "Graph",
    "GraphError",
    "PackageNode",
    "Plan",
    "build_graph",
    "dependency_name",
    "node_from_config",
    "plan",
    "priorities",
    "typical_duration",
]

# -- errors ------------------------------------------------------------------------------


class GraphError(FarmError, ValueError):
    """The submission's dependency graph is invalid."""

    code = "graph_error"
    exit_code = 2


class DuplicatePackage(GraphError):
    """Two configs in the submission build the same package."""

    code = "duplicate_package"

    def __init__(self, names: Sequence[str]) -> None:
        #: Every package name given more than once, in submission order.
        self.names: tuple[str, ...] = tuple(names)
        plural = "s" if len(self.names) > 1 else ""
        super().__init__(f"duplicate package name{plural}: {', '.join(self.names)}")


class CycleError(GraphError):
    """The submission's dependencies form a cycle."""

    code = "circular_dependency"

    def __init__(self, cycle: Sequence[str], components: Sequence[Sequence[str]] = ()) -> None:
        #: The reported cycle as a closed walk along "needs": ``("A", "B", "A")``.
        self.cycle: tuple[str, ...] = tuple(cycle)
        #: Every strongly connected component with a cycle (members in submission order,
        #: components ordered by their earliest member).
        self.components: tuple[tuple[str, ...], ...] = tuple(tuple(c) for c in components)
        super().__init__(f"circular dependency detected: {' -> '.join(self.cycle)}")


# -- input -------------------------------------------------------------------------------

_CONSTRAINT: Final = re.compile(r"[<>=~@]")


def dependency_name(spec: str) -> str | None:
    """The name part of an apk dependency string, or ``None`` if it is not a need.

    >>> dependency_name("foo>=1.2"), dependency_name("so:libfoo.so.1=1")
    ('foo', 'so:libfoo.so.1')
    >>> dependency_name("!foo") is None, dependency_name("  ") is None
    (True, True)
    """
    spec = spec.strip()
    if not spec or spec.startswith("!"):
        return None
    match = _CONSTRAINT.search(spec)
    name = spec[: match.start()] if match else spec
    return name.strip() or None


@dataclass(frozen=True, kw_only=True, slots=True)
class PackageNode:
    """One config of a submission, as the graph sees it."""

    #: The config's package name (``package.name``).
    name: str
    #: Its subpackage names and every ``dependencies.provides`` of the package and its
    #: subpackages (raw; version constraints are stripped when matching).
    provides: tuple[str, ...] = ()
    #: ``environment.contents.packages`` followed by every ``needs.packages`` and what
    #: the tests install (raw constraint strings such as ``foo>=1.2``).
    needs: tuple[str, ...] = ()


def _unique(items: Iterable[str], *, exclude: str = "") -> tuple[str, ...]:
    return tuple(x for x in dict.fromkeys(items) if x and x != exclude)


def node_from_config(
    config: Config, needs_packages: Sequence[str] = (), test_packages: Sequence[str] = ()
) -> PackageNode:
    """The :class:`PackageNode` of ``config``.

    ``needs_packages`` is what the config's steps and pipelines need
    (:attr:`melange2.recipe.BuildPlan.needs_packages` from
    :func:`melange2.recipe.compile_build`); it is appended to
    ``environment.contents.packages``. ``test_packages`` is what its tests install (the
    :attr:`~melange2.recipe.TestPlan.contents` packages of
    :func:`melange2.recipe.compile_tests`): tests run right after the build, so those
    are build-order edges too (its own packages among them are dropped as self-edges).
    """
    package = config.package
    provides = [sp.name for sp in config.subpackages]
    provides.extend(package.dependencies.provides)
    for sp in config.subpackages:
        provides.extend(sp.dependencies.provides)
    return PackageNode(
        name=package.name,
        provides=_unique(provides, exclude=package.name),
        needs=_unique((*config.environment.contents.packages, *needs_packages, *test_packages)),
    )


# -- the graph ---------------------------------------------------------------------------


def _frozen(items: dict[str, tuple[str, ...]]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType(items)


def _empty() -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True, slots=True)
class Graph:
    """A submission's dependency graph, acyclic (after any cuts)."""

    #: Package names in submission order.
    names: tuple[str, ...] = ()
    #: A topological build order: among ready packages, the longest remaining chain (in
    #: packages) first, then submission order.
    order: tuple[str, ...] = ()
    #: Direct in-submission dependencies of each package, after cuts (every name a key).
    deps: Mapping[str, tuple[str, ...]] = field(default_factory=_empty)
    #: The reverse of ``deps``, in submission order (every name a key).
    dependents: Mapping[str, tuple[str, ...]] = field(default_factory=_empty)
    #: ``(dependent, dependency)`` edges cut to break cycles: the dependent is built
    #: against the already-published dependency.
    cut_edges: tuple[tuple[str, str], ...] = ()
    #: The strongly connected components that had cycles (members in submission order).
    cyclic_components: tuple[tuple[str, ...], ...] = ()


def build_graph(nodes: Sequence[PackageNode], *, cycle_policy: CyclePolicy = "error") -> Graph:
    """Resolve ``nodes``' needs against each other and order them.

    Raises :class:`DuplicatePackage` if two nodes share a name, and :class:`CycleError`
    on a cycle unless ``cycle_policy == "break"`` (see the module docstring for the
    matching and cut rules).
    """
    if cycle_policy not in ("error", "break"):
        raise ValueError(f"unknown cycle policy {cycle_policy!r}")
    names = tuple(node.name for node in nodes)
    index: dict[str, int] = {}
    duplicates: list[str] = []
    for i, name in enumerate(names):
        if name in index:
            if name not in duplicates:
                duplicates.append(name)
        else:
            index[name] = i
    if duplicates:
        raise DuplicatePackage(duplicates)

    providers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for spec in node.provides:
            provided = dependency_name(spec)
            if provided is None:
                continue
            owners = providers.setdefault(provided, [])
            if not owners or owners[-1] != i:
                owners.append(i)

    n = len(nodes)
    resolved: dict[str, tuple[int, ...]] = {}  # need spec -> the nodes it names
    deps: list[list[int]] = []
    for i, node in enumerate(nodes):
        out: list[int] = []
        seen: set[int] = {i}
        for spec in node.needs:
            targets = resolved.get(spec)
            if targets is None:
                needed = dependency_name(spec)
                if needed is None:
                    targets = ()
                elif needed in index:
                    targets = (index[needed],)
                else:
                    targets = tuple(providers.get(needed, ()))
                resolved[spec] = targets
            for j in targets:
                if j not in seen:
                    seen.add(j)
                    out.append(j)
        deps.append(out)

    components = _tarjan(deps)
    comp_of = [0] * n
    cyclic: list[list[int]] = []
    for c, members in enumerate(components):
        for v in members:
            comp_of[v] = c
        if len(members) > 1:
            cyclic.append(sorted(members))
    cyclic.sort(key=lambda members: members[0])
    cyclic_names = tuple(tuple(names[v] for v in members) for members in cyclic)

    cut: list[tuple[int, int]] = []
    if cyclic:
        if cycle_policy == "error":
            cycle = _shortest_cycle(cyclic[0][0], deps, comp_of)
            raise CycleError([names[v] for v in cycle], cyclic_names)
        rank = [0] * n
        for members in cyclic:
            for r, v in enumerate(_bootstrap_order(members, deps, comp_of)):
                rank[v] = r
        wanted = deps
        deps = [
            [v for v in out if comp_of[u] != comp_of[v] or rank[v] < rank[u]]
            for u, out in enumerate(wanted)
        ]
        backward = [
            (u, v)
            for u, out in enumerate(wanted)
            for v in out
            if comp_of[u] == comp_of[v] and rank[v] > rank[u]
        ]
        cut = _restore(backward, deps, comp_of)
        if len(cut) < len(backward):
            dropped = set(cut)
            deps = [[v for v in out if (u, v) not in dropped] for u, out in enumerate(wanted)]

    dependents: list[list[int]] = [[] for _ in range(n)]
    for u in range(n):
        for v in deps[u]:
            dependents[v].append(u)

    levels = _bottom_levels(_topological(deps, dependents), dependents, [1.0] * n)
    order = _priority_order(deps, dependents, levels)
    return Graph(
        names=names,
        order=tuple(names[v] for v in order),
        deps=_frozen({names[u]: tuple(names[v] for v in deps[u]) for u in range(n)}),
        dependents=_frozen({names[v]: tuple(names[u] for u in dependents[v]) for v in range(n)}),
        cut_edges=tuple((names[u], names[v]) for u, v in cut),
        cyclic_components=cyclic_names,
    )


def _tarjan(deps: Sequence[Sequence[int]]) -> list[list[int]]:
    """Strongly connected components, iteratively (dependencies' components first)."""
    n = len(deps)
    number = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack: list[int] = []
    components: list[list[int]] = []
    counter = 0
    for root in range(n):
        if number[root] != -1:
            continue
        number[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        work: list[tuple[int, int]] = [(root, 0)]
        while work:
            v, i = work[-1]
            adjacent = deps[v]
            if i < len(adjacent):
                work[-1] = (v, i + 1)
                w = adjacent[i]
                if number[w] == -1:
                    number[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, 0))
                elif on_stack[w] and number[w] < low[v]:
                    low[v] = number[w]
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                if low[v] < low[parent]:
                    low[parent] = low[v]
            if low[v] == number[v]:
                members: list[int] = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    members.append(w)
                    if w == v:
                        break
                components.append(members)
    return components


def _shortest_cycle(start: int, deps: Sequence[Sequence[int]], comp_of: Sequence[int]) -> list[int]:
    """The shortest closed walk ``start -> ... -> start`` along needs (BFS)."""
    comp = comp_of[start]
    parent: dict[int, int] = {start: start}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in deps[v]:
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                path.reverse()
                path.append(start)
                return path
            if comp_of[w] == comp and w not in parent:
                parent[w] = v
                queue.append(w)
    raise AssertionError("a strongly connected component without a cycle")  # pragma: no cover


def _bootstrap_order(
    members: Sequence[int], deps: Sequence[Sequence[int]], comp_of: Sequence[int]
) -> list[int]:
    """Order one cyclic component by Eades-Lin-Smyth (see the module docstring)."""
    comp = comp_of[members[0]]
    inner_deps: dict[int, list[int]] = {
        v: [w for w in deps[v] if comp_of[w] == comp] for v in members
    }
    inner_dependents: dict[int, list[int]] = {v: [] for v in members}
    for v in members:
        for w in inner_deps[v]:
            inner_dependents[w].append(v)
    needs = {v: len(inner_deps[v]) for v in members}
    needed_by = {v: len(inner_dependents[v]) for v in members}
    removed: set[int] = set()
    sources: list[int] = [v for v in members if needs[v] == 0]
    sinks: list[int] = [v for v in members if needed_by[v] == 0]
    by_delta: list[tuple[int, int]] = [(needs[v] - needed_by[v], v) for v in members]
    heapq.heapify(sources)
    heapq.heapify(sinks)
    heapq.heapify(by_delta)
    front: list[int] = []
    back: list[int] = []

    def remove(v: int) -> None:
        removed.add(v)
        for w in inner_deps[v]:
            if w not in removed:
                needed_by[w] -= 1
                if needed_by[w] == 0:
                    heapq.heappush(sinks, w)
                heapq.heappush(by_delta, (needs[w] - needed_by[w], w))
        for w in inner_dependents[v]:
            if w not in removed:
                needs[w] -= 1
                if needs[w] == 0:
                    heapq.heappush(sources, w)
                heapq.heappush(by_delta, (needs[w] - needed_by[w], w))

    while len(removed) < len(members):
        while sinks and sinks[0] in removed:
            heapq.heappop(sinks)
        if sinks:
            v = heapq.heappop(sinks)
            remove(v)
            back.append(v)
            continue
        while sources and sources[0] in removed:
            heapq.heappop(sources)
        if sources:
            v = heapq.heappop(sources)
            remove(v)
            front.append(v)
            continue
        delta, v = heapq.heappop(by_delta)
        if v in removed or delta != needs[v] - needed_by[v]:
            continue
        remove(v)
        front.append(v)
    back.reverse()
    return front + back


#: How many edges the cut-restoring pass of :func:`build_graph` may visit in total.
RESTORE_BUDGET: Final = 2_000_000


def _restore(
    backward: Sequence[tuple[int, int]], deps: list[list[int]], comp_of: Sequence[int]
) -> list[tuple[int, int]]:
    """Put back each backward edge that closes no cycle; return the edges left cut.

    ``deps`` (acyclic, without ``backward``) gains the edges put back. Edges are tried in
    the given order; adding ``u -> v`` closes a cycle iff ``v`` already reaches ``u``,
    which a search inside their component decides (the condensation is acyclic). After
    :data:`RESTORE_BUDGET` visited edges the rest stay cut (acyclic, just not minimal).
    """
    budget = RESTORE_BUDGET
    cut: list[tuple[int, int]] = []
    for u, v in backward:
        if budget <= 0:
            cut.append((u, v))
            continue
        comp = comp_of[u]
        seen = {v}
        stack = [v]
        closes = False
        while stack and not closes and budget > 0:
            x = stack.pop()
            out = deps[x]
            budget -= len(out)
            for y in out:
                if y == u:
                    closes = True
                    break
                if y not in seen and comp_of[y] == comp:
                    seen.add(y)
                    stack.append(y)
        if closes or stack:
            cut.append((u, v))
        else:
            deps[u].append(v)
    return cut


def _topological(deps: Sequence[Sequence[int]], dependents: Sequence[Sequence[int]]) -> list[int]:
    """Any topological order (dependencies first) of an acyclic graph (Kahn)."""
    waiting = [len(d) for d in deps]
    queue = deque(v for v, count in enumerate(waiting) if count == 0)
    order: list[int] = []
    while queue:
        v = queue.popleft()
        order.append(v)
        for u in dependents[v]:
            waiting[u] -= 1
            if waiting[u] == 0:
                queue.append(u)
    if len(order) != len(deps):  # pragma: no cover - build_graph cuts every cycle
        raise AssertionError("the graph still has a cycle")
    return order


def _bottom_levels(
    topo: Sequence[int], dependents: Sequence[Sequence[int]], cost: Sequence[float]
) -> list[float]:
    """Each node's cost plus the largest bottom level among its dependents."""
    level = [0.0] * len(cost)
    for v in reversed(topo):
        longest = 0.0
        for u in dependents[v]:
            if level[u] > longest:
                longest = level[u]
        level[v] = cost[v] + longest
    return level


def _priority_order(
    deps: Sequence[Sequence[int]], dependents: Sequence[Sequence[int]], priority: Sequence[float]
) -> list[int]:
    """Kahn's algorithm picking the highest priority, then the earliest index, first."""
    waiting = [len(d) for d in deps]
    ready = [(-priority[v], v) for v, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, v = heapq.heappop(ready)
        order.append(v)
        for u in dependents[v]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, (-priority[u], u))
    return order


# -- priorities and plans ----------------------------------------------------------------


def _costs(names: Sequence[str], durations: Mapping[str, float], default: float) -> list[float]:
    """Expected durations by index; missing, negative or non-finite ones become ``default``."""
    if not (math.isfinite(default) and default >= 0):
        raise ValueError(f"default duration must be finite and >= 0, not {default!r}")
    costs: list[float] = []
    for name in names:
        value = durations.get(name)
        if value is None or not math.isfinite(value) or value < 0:
            costs.append(default)
        else:
            costs.append(float(value))
    return costs


def _indexed(graph: Graph) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """``deps``, ``dependents`` and ``order`` of ``graph`` by submission index."""
    index = {name: i for i, name in enumerate(graph.names)}
    deps = [[index[d] for d in graph.deps[name]] for name in graph.names]
    dependents = [[index[d] for d in graph.dependents[name]] for name in graph.names]
    return deps, dependents, [index[name] for name in graph.order]


def typical_duration(durations: Mapping[str, float]) -> float:
    """The duration to expect of a package with none on record: the median of the known
    ones (finite, ``>= 0``), or ``1.0`` (a unit weight) when none is known.

    Pass it as ``default`` to :func:`priorities` and :func:`plan` when only some packages
    have a past duration (new packages, ones that never succeeded): with ``1.0`` s beside
    durations of minutes, a new package and every chain through it would rank below
    everything known, and start last. On Wolfi with 10 % of the packages new, 32 slots,
    that costs 4-9 % of the makespan (``bench/virtual_bench.py --new-fraction 0.1``).
    """
    known = sorted(v for v in durations.values() if math.isfinite(v) and v >= 0)
    if not known:
        return 1.0
    middle = len(known) // 2
    return known[middle] if len(known) % 2 else (known[middle - 1] + known[middle]) / 2


def priorities(
    graph: Graph, durations: Mapping[str, float], default: float = 1.0
) -> dict[str, float]:
    """Each package's bottom level: the longest remaining path to the end of the graph.

    A package's level is its expected duration (``durations[name]``, else ``default``)
    plus the largest level among its dependents. The scheduler starts the ready package
    with the highest level first. ``O(V + E)``.
    """
    _, dependents, order = _indexed(graph)
    levels = _bottom_levels(order, dependents, _costs(graph.names, durations, default))
    return {name: levels[i] for i, name in enumerate(graph.names)}


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    """What building a graph would look like (a dry run)."""

    #: The order in which the simulation starts packages (a topological order).
    order: tuple[str, ...] = ()
    #: Direct in-submission dependencies of each package, after cuts.
    deps: Mapping[str, tuple[str, ...]] = field(default_factory=_empty)
    #: ``(dependent, dependency)`` edges cut to break cycles.
    cut_edges: tuple[tuple[str, str], ...] = ()
    #: The dependency chain with the largest total expected duration, first-built first.
    critical_path: tuple[str, ...] = ()
    #: Its total expected duration, in seconds.
    critical_path_s: float = 0.0
    #: The sum of every package's expected duration, in seconds.
    total_work_s: float = 0.0
    #: ``max(critical_path_s, total_work_s / slots)``: no schedule can be faster.
    lower_bound_s: float = 0.0
    #: The makespan of a list-scheduling simulation on ``slots`` slots, highest priority
    #: first.
    estimated_makespan_s: float = 0.0
    #: The number of parallel build slots simulated.
    slots: int = 1
    #: When the simulation starts each package, in seconds from the start.
    start_s: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    #: Packages no backend could ever run (what they ask exceeds every backend), and
    #: the packages that depend on them, with why; the simulation leaves them out.
    unplaceable: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: Where the simulation runs each package (index into ``backends``), when it was
    #: simulated on backends.
    backend_of: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


def plan(
    graph: Graph,
    durations: Mapping[str, float],
    *,
    slots: int,
    default: float = 1.0,
    backends: Sequence[Capacity] = (),
    requests: Mapping[str, Request] | None = None,
    where: str = "this build",
) -> Plan:
    """Simulate building ``graph`` on ``slots`` parallel slots; ``O((V + E) log V)``.

    Whenever a slot is free, the ready package with the highest :func:`priorities` level
    starts (earliest submitted on ties) and takes its expected duration (``durations``,
    else ``default``).

    With ``backends`` and ``requests`` (what packages ask, ``package.resources``) where
    some package asks resources, the simulation runs on those backends, idle at the
    start, by the scheduler's placement rules (:mod:`melange2.scheduler.placement`):
    a ready package starts on the least-loaded backend where it fits, the first one of
    a kind that does not fit waits and lets lower-priority ones backfill, and the first
    package waiting for cpu or memory keeps a backend until it fits. Packages no
    backend could ever run (and their dependents) are left out, in ``unplaceable``
    (``where`` names the backends in the messages).
    """
    if slots < 1:
        raise ValueError(f"slots must be at least 1, not {slots}")
    if backends and requests and any(not r.empty for r in requests.values()):
        return _plan_on_backends(graph, durations, default, backends, requests, where)
    names = graph.names
    deps, dependents, order = _indexed(graph)
    costs = _costs(names, durations, default)
    levels = _bottom_levels(order, dependents, costs)

    critical: list[int] = []
    if names:
        v = max(range(len(names)), key=lambda i: (levels[i], -i))
        critical.append(v)
        while dependents[v]:
            v = max(dependents[v], key=lambda i: (levels[i], -i))
            critical.append(v)
    critical_s = levels[critical[0]] if critical else 0.0
    total = math.fsum(costs)

    waiting = [len(d) for d in deps]
    ready = [(-levels[v], v) for v, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    running: list[tuple[float, int, int]] = []
    started: list[int] = []
    start = [0.0] * len(names)
    now = 0.0
    free = slots
    while ready or running:
        while free and ready:
            _, v = heapq.heappop(ready)
            start[v] = now
            heapq.heappush(running, (now + costs[v], len(started), v))
            started.append(v)
            free -= 1
        now, _, v = heapq.heappop(running)
        finished = [v]
        while running and running[0][0] <= now:
            finished.append(heapq.heappop(running)[2])
        free += len(finished)
        for v in finished:
            for u in dependents[v]:
                waiting[u] -= 1
                if waiting[u] == 0:
                    heapq.heappush(ready, (-levels[u], u))

    return Plan(
        order=tuple(names[v] for v in started),
        deps=graph.deps,
        cut_edges=graph.cut_edges,
        critical_path=tuple(names[v] for v in critical),
        critical_path_s=critical_s,
        total_work_s=total,
        lower_bound_s=max(critical_s, total / slots),
        estimated_makespan_s=now,
        slots=slots,
        start_s=MappingProxyType({names[v]: start[v] for v in started}),
    )


def _plan_on_backends(
    graph: Graph,
    durations: Mapping[str, float],
    default: float,
    backends: Sequence[Capacity],
    requests: Mapping[str, Request],
    where: str,
) -> Plan:
    """:func:`plan` on real backends with what each package asks (see there)."""
    names = graph.names
    n = len(names)
    deps, dependents, order = _indexed(graph)
    costs = _costs(names, durations, default)
    asks = [requests.get(name, NOTHING) for name in names]

    idle = [Candidate(addr=str(i), capacity=c) for i, c in enumerate(backends)]
    unplaceable: dict[str, str] = {}
    out = [False] * n
    for v in order:  # dependencies first
        why = never_message(asks[v], idle, where)
        if why is not None:
            unplaceable[names[v]], out[v] = why, True
            continue
        gone = next((d for d in deps[v] if out[d]), None)
        if gone is not None:
            unplaceable[names[v]] = f"dependency {names[gone]} can never be placed"
            out[v] = True
    kept = [v for v in range(n) if not out[v]]
    # priorities and the critical path over what is built: the dependents of a package
    # left out are left out too, so a left-out package simply costs nothing
    levels = _bottom_levels(order, dependents, [0.0 if out[v] else costs[v] for v in range(n)])

    critical: list[int] = []
    if kept:
        v = max(kept, key=lambda i: (levels[i], -i))
        critical.append(v)
        while any(not out[u] for u in dependents[v]):
            v = max((u for u in dependents[v] if not out[u]), key=lambda i: (levels[i], -i))
            critical.append(v)
    critical_s = levels[critical[0]] if critical else 0.0
    total = math.fsum(costs[v] for v in kept)

    used = [Usage() for _ in backends]
    reserved = [""] * len(backends)
    holder = -1
    waiting = [len(d) for d in deps]
    ready: dict[Request, list[tuple[float, int]]] = {}
    for v in kept:
        if waiting[v] == 0:
            heapq.heappush(ready.setdefault(asks[v], []), (-levels[v], v))
    running: list[tuple[float, int, int, int]] = []
    started: list[int] = []
    is_started = [False] * n
    start = [0.0] * n
    backend_of: dict[str, int] = {}
    now = 0.0

    def candidates() -> list[Candidate]:
        return [
            Candidate(addr=str(i), capacity=c, used=used[i], reserved_for=reserved[i])
            for i, c in enumerate(backends)
        ]

    def try_start(v: int) -> bool:
        nonlocal holder
        found = choose(asks[v], candidates(), where=where, holder=str(v))
        if not isinstance(found, Chosen):
            waits_for_resources = isinstance(found, Wait) and found.blocked_by == "resources"
            if holder == v or (holder == -1 and waits_for_resources):
                kept_on = reservation(asks[v], candidates(), holder=str(v))
                reserved[:] = ["" if r == str(v) else r for r in reserved]
                holder = -1
                if kept_on is not None:
                    reserved[int(kept_on)] = str(v)
                    holder = v
            return False
        b = int(found.addr)
        if holder == v:
            reserved[:] = ["" if r == str(v) else r for r in reserved]
            holder = -1
        used[b] = used[b].plus(asks[v])
        start[v] = now
        backend_of[names[v]] = b
        heapq.heappush(running, (now + costs[v], len(started), v, b))
        started.append(v)
        is_started[v] = True
        return True

    while ready or running:
        if holder != -1:
            try_start(holder)
        blocked: set[Request] = set()
        while True:
            heads = []
            for request, queue in list(ready.items()):
                while queue and is_started[queue[0][1]]:  # the holder, started above
                    heapq.heappop(queue)
                if not queue:
                    del ready[request]
                elif request not in blocked:
                    heads.append((queue[0], request))
            if not heads:
                break
            (_, v), request = min(heads)
            if try_start(v):
                heapq.heappop(ready[request])
            else:
                blocked.add(request)
        if not running:
            if ready:  # pragma: no cover - an idle backend always fits a kept package
                raise AssertionError("placement simulation stalled")
            break
        now, _, v, b = heapq.heappop(running)
        finished = [(v, b)]
        while running and running[0][0] <= now:
            _, _, v, b = heapq.heappop(running)
            finished.append((v, b))
        for v, b in finished:
            used[b] = used[b].minus(asks[v])
            for u in dependents[v]:
                waiting[u] -= 1
                if waiting[u] == 0 and not out[u]:
                    heapq.heappush(ready.setdefault(asks[u], []), (-levels[u], u))

    slots = sum(c.max_jobs for c in backends)
    return Plan(
        order=tuple(names[v] for v in started),
        deps=graph.deps,
        cut_edges=graph.cut_edges,
        critical_path=tuple(names[v] for v in critical),
        critical_path_s=critical_s,
        total_work_s=total,
        lower_bound_s=max(critical_s, total / max(1, slots)),
        estimated_makespan_s=now,
        slots=slots,
        start_s=MappingProxyType({names[v]: start[v] for v in started}),
        unplaceable=MappingProxyType(unplaceable),
        backend_of=MappingProxyType(backend_of),
    )
