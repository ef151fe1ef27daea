"""priorities and plan on small hand-computed graphs."""

from __future__ import annotations

import math

import pytest

from melange2.scheduler import build_graph, plan, priorities, typical_duration

from .helpers import is_topological, nodes

DIAMOND = nodes({"app": ["left", "right"], "left": ["base"], "right": ["base"], "base": []})
DURATIONS = {"base": 10.0, "left": 5.0, "right": 20.0, "app": 1.0}


def test_priorities_are_bottom_levels() -> None:
    graph = build_graph(DIAMOND)
    assert priorities(graph, DURATIONS) == {"app": 1.0, "left": 6.0, "right": 21.0, "base": 31.0}


def test_priorities_default_and_bad_durations() -> None:
    graph = build_graph(DIAMOND)
    # Missing, negative and non-finite durations fall back to the default.
    assert priorities(graph, {"base": math.nan, "right": -3.0, "left": math.inf}, 2.0) == {
        "app": 2.0,
        "left": 4.0,
        "right": 4.0,
        "base": 6.0,
    }
    assert priorities(graph, {}) == {"app": 1.0, "left": 2.0, "right": 2.0, "base": 3.0}
    with pytest.raises(ValueError, match="default duration"):
        priorities(graph, {}, -1.0)


def test_typical_duration_is_the_median_of_the_known_ones() -> None:
    assert typical_duration({}) == 1.0  # nothing known: unit weights
    assert typical_duration({"a": 30.0, "b": 90.0, "c": 60.0}) == 60.0
    assert typical_duration({"a": 30.0, "b": 90.0}) == 60.0
    # the durations priorities() would not use are not counted either
    assert typical_duration({"a": math.nan, "b": -1.0, "c": math.inf, "d": 8.0}) == 8.0
    assert typical_duration({"a": math.nan}) == 1.0


def test_a_package_never_built_ranks_as_a_typical_one() -> None:
    # "new" has no past duration; "old" took 60 s; each heads a chain of 60 s of known work
    graph = build_graph(nodes({"new": [], "old": [], "after-new": ["new"], "after-old": ["old"]}))
    known = {"old": 60.0, "after-new": 60.0, "after-old": 60.0}
    levels = priorities(graph, known, typical_duration(known))
    assert levels["new"] == levels["old"] == 120.0
    # with the unit default its chain would rank below every known one and start last
    assert priorities(graph, known)["new"] == 61.0
    one_slot = plan(graph, known, slots=1, default=typical_duration(known))
    assert one_slot.order[0] == "new"  # the tie goes to submission order
    assert one_slot.estimated_makespan_s == 240.0


def test_plan_diamond_on_two_slots() -> None:
    result = plan(build_graph(DIAMOND), DURATIONS, slots=2)
    # base 0-10; right 10-30 and left 10-15 in parallel; app 30-31.
    assert result.order == ("base", "right", "left", "app")
    assert dict(result.start_s) == {"base": 0.0, "right": 10.0, "left": 10.0, "app": 30.0}
    assert result.estimated_makespan_s == 31.0
    assert result.critical_path == ("base", "right", "app")
    assert result.critical_path_s == 31.0
    assert result.total_work_s == 36.0
    assert result.lower_bound_s == 31.0
    assert result.slots == 2
    assert result.deps["app"] == ("left", "right")
    assert result.cut_edges == ()


def test_plan_diamond_on_one_slot_is_total_work() -> None:
    result = plan(build_graph(DIAMOND), DURATIONS, slots=1)
    assert result.estimated_makespan_s == 36.0
    assert result.lower_bound_s == 36.0


def test_plan_longest_chain_first_beats_submission_order() -> None:
    # Submission order would start "short" first and leave "long" -> "tail" for later.
    graph = build_graph(nodes({"short": [], "long": [], "tail": ["long"]}))
    durations = {"short": 3.0, "long": 2.0, "tail": 2.0}
    result = plan(graph, durations, slots=1)
    assert result.order == ("long", "short", "tail")  # then the longer remaining one
    two = plan(graph, durations, slots=2)
    assert two.order == ("long", "short", "tail")
    assert two.estimated_makespan_s == 4.0
    assert two.lower_bound_s == 4.0
    assert two.critical_path == ("long", "tail")


def test_plan_independent_packages() -> None:
    graph = build_graph(nodes({"a": [], "b": [], "c": []}))
    result = plan(graph, {"a": 2.0, "b": 2.0, "c": 3.0}, slots=2)
    assert result.order == ("c", "a", "b")
    assert result.estimated_makespan_s == 4.0
    assert result.lower_bound_s == 3.5
    assert result.critical_path == ("c",)


def test_plan_reports_cut_edges() -> None:
    graph = build_graph(nodes({"a": ["b"], "b": ["a"]}), cycle_policy="break")
    result = plan(graph, {}, slots=4)
    assert result.cut_edges == (("a", "b"),)
    assert result.order == ("a", "b")
    assert result.estimated_makespan_s == 2.0
    assert is_topological(result.order, result.deps)


def test_plan_empty_graph_and_bad_slots() -> None:
    result = plan(build_graph([]), {}, slots=3)
    assert result.order == ()
    assert result.critical_path == ()
    assert result.estimated_makespan_s == result.lower_bound_s == result.total_work_s == 0.0
    with pytest.raises(ValueError, match="slots"):
        plan(build_graph([]), {}, slots=0)
