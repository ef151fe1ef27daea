"""The whole Wolfi distribution (3,401 packages, bootstrap cycles included) plans."""

from __future__ import annotations

import json
from pathlib import Path

from melange2.scheduler import PackageNode, build_graph, plan, priorities

from .helpers import is_acyclic, is_topological

DATA = Path(__file__).parents[3].parent / "shared/bench/wolfi-dag.json"


def test_wolfi_plans_every_package() -> None:
    assert DATA.is_file(), f"missing benchmark data {DATA}"
    data = json.loads(DATA.read_text())
    packages = data["packages"]
    assert len(packages) == 3401
    spec = [
        PackageNode(name=p["name"], needs=(*p["deps"], *p.get("cycle_deps", ()))) for p in packages
    ]
    durations = {p["name"]: 60.0 * p["steps"] * float(p["cpu"]) for p in packages}

    graph = build_graph(spec, cycle_policy="break")
    assert sorted(len(c) for c in graph.cyclic_components) == [2, 17, 375]
    assert is_acyclic(graph.deps)
    assert is_topological(graph.order, graph.deps)
    cycle_edges = {(p["name"], d) for p in packages for d in p.get("cycle_deps", ())}
    acyclic_edges = {(p["name"], d) for p in packages for d in p["deps"]}
    kept = {(u, v) for u, vs in graph.deps.items() for v in vs}
    assert set(graph.cut_edges) <= cycle_edges
    assert acyclic_edges <= kept
    assert len(kept) + len(graph.cut_edges) == data["meta"]["edges"] + data["meta"]["cycle_edges"]

    levels = priorities(graph, durations)
    assert len(levels) == 3401
    result = plan(graph, durations, slots=8)
    assert len(result.order) == 3401
    assert is_topological(result.order, graph.deps)
    assert result.lower_bound_s <= result.estimated_makespan_s <= result.total_work_s
    assert result.critical_path_s == max(levels.values())
