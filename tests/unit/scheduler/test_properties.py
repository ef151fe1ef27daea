"""Hypothesis properties of build_graph, priorities and plan on random graphs."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from melange2.scheduler import CycleError, PackageNode, build_graph, plan, priorities

from .helpers import is_acyclic, is_topological, reaches

NAMES = [f"p{i}" for i in range(40)]


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[PackageNode], dict[str, float]]:
    """A random DAG (edges only to earlier names), shuffled, with random durations."""
    n = draw(st.integers(min_value=0, max_value=30))
    names = NAMES[:n]
    needs = {
        name: draw(st.lists(st.sampled_from(names[:i]), max_size=5)) if i else []
        for i, name in enumerate(names)
    }
    shuffled = draw(st.permutations(names))
    durations = draw(
        st.dictionaries(
            st.sampled_from(names) if names else st.nothing(),
            st.integers(min_value=0, max_value=100).map(float),
        )
    )
    return [PackageNode(name=name, needs=tuple(needs[name])) for name in shuffled], durations


@st.composite
def digraphs(draw: st.DrawFn) -> list[PackageNode]:
    """A random directed graph, cycles and self-loops allowed, plus external names."""
    n = draw(st.integers(min_value=1, max_value=25))
    names = NAMES[:n]
    pool = st.sampled_from([*names, "external", "also-external>=1"])
    return [PackageNode(name=name, needs=tuple(draw(st.lists(pool, max_size=6)))) for name in names]


def _edges(spec: list[PackageNode]) -> set[tuple[str, str]]:
    known = {node.name for node in spec}
    return {(n.name, d) for n in spec for d in n.needs if d in known and d != n.name}


@settings(max_examples=100, deadline=None)
@given(dags())
def test_dag_order_is_topological(case: tuple[list[PackageNode], dict[str, float]]) -> None:
    spec, _ = case
    graph = build_graph(spec)
    assert is_topological(graph.order, graph.deps)
    assert sorted(graph.order) == sorted(node.name for node in spec)
    assert graph.cut_edges == ()
    assert {(u, v) for u, vs in graph.deps.items() for v in vs} == _edges(spec)
    for name, ds in graph.deps.items():
        for d in ds:
            assert name in graph.dependents[d]


@settings(max_examples=100, deadline=None)
@given(dags())
def test_priorities_dominate_dependents(case: tuple[list[PackageNode], dict[str, float]]) -> None:
    spec, durations = case
    graph = build_graph(spec)
    levels = priorities(graph, durations)
    for name, level in levels.items():
        own = durations.get(name, 1.0)
        assert level >= own
        for dependent in graph.dependents[name]:
            assert level >= levels[dependent] + own
        if not graph.dependents[name]:
            assert level == own


@settings(max_examples=100, deadline=None)
@given(dags(), st.integers(min_value=1, max_value=6))
def test_plan_bounds(case: tuple[list[PackageNode], dict[str, float]], slots: int) -> None:
    spec, durations = case
    graph = build_graph(spec)
    result = plan(graph, durations, slots=slots)
    assert is_topological(result.order, graph.deps)
    assert result.lower_bound_s <= result.estimated_makespan_s <= result.total_work_s
    levels = priorities(graph, durations)
    assert result.critical_path_s == max(levels.values(), default=0.0)
    path = result.critical_path
    assert sum(durations.get(name, 1.0) for name in path) == result.critical_path_s
    for first, second in pairwise(path):
        assert first in graph.deps[second]
    for name, start in result.start_s.items():
        for d in graph.deps[name]:
            assert result.start_s[d] + durations.get(d, 1.0) <= start


@settings(max_examples=100, deadline=None)
@given(digraphs())
def test_break_gives_acyclic_minimal_cuts(spec: list[PackageNode]) -> None:
    graph = build_graph(spec, cycle_policy="break")
    wanted = _edges(spec)
    kept = {(u, v) for u, vs in graph.deps.items() for v in vs}
    cut = set(graph.cut_edges)
    assert is_acyclic(graph.deps)
    assert is_topological(graph.order, graph.deps)
    assert cut <= wanted
    assert kept | cut == wanted and not kept & cut
    members = {name for component in graph.cyclic_components for name in component}
    for u, v in graph.cut_edges:
        assert u in members and v in members
        assert reaches(graph.deps, v, u)  # restoring it would close a cycle
    assert build_graph(spec, cycle_policy="break") == graph
    result = plan(graph, {}, slots=2)
    assert result.lower_bound_s <= result.estimated_makespan_s <= result.total_work_s


@settings(max_examples=100, deadline=None)
@given(digraphs())
def test_error_policy_raises_exactly_on_cycles(spec: list[PackageNode]) -> None:
    broken = build_graph(spec, cycle_policy="break")
    if not broken.cut_edges:
        assert build_graph(spec) == broken
        return

    try:
        build_graph(spec)
    except CycleError as exc:
        cycle = exc.cycle
        assert cycle[0] == cycle[-1] and len(cycle) >= 3
        assert len(set(cycle[:-1])) == len(cycle) - 1
        for u, v in pairwise(cycle):
            assert (u, v) in _edges(spec)
        assert exc.components == broken.cyclic_components
    else:  # pragma: no cover
        raise AssertionError("no CycleError")
