"""build_graph: matching, ordering, errors and cycle breaking, on small hand-made graphs."""

from __future__ import annotations

import pytest

from melange2.recipe import compile_build, load_config
from melange2.scheduler import (
    CycleError,
    DuplicatePackage,
    GraphError,
    PackageNode,
    build_graph,
    dependency_name,
    node_from_config,
)

from .helpers import is_acyclic, is_topological, nodes, reaches

# -- matching ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("foo", "foo"),
        ("foo>=1.2", "foo"),
        ("foo=1.2-r0", "foo"),
        ("foo<2", "foo"),
        ("foo~1.2", "foo"),
        ("foo>1", "foo"),
        ("foo<=1", "foo"),
        ("foo@testing", "foo"),
        (" foo ", "foo"),
        ("so:libfoo.so.1=1", "so:libfoo.so.1"),
        ("cmd:bar=1.0-r2", "cmd:bar"),
        ("py3.12-pip", "py3.12-pip"),
        ("!foo", None),
        ("", None),
        ("=1.0", None),
    ],
)
def test_dependency_name_strips_constraints(spec: str, name: str | None) -> None:
    assert dependency_name(spec) == name


def test_chain() -> None:
    graph = build_graph(nodes({"app": ["lib"], "lib": ["base"], "base": []}))
    assert graph.order == ("base", "lib", "app")
    assert dict(graph.deps) == {"app": ("lib",), "lib": ("base",), "base": ()}
    assert dict(graph.dependents) == {"app": (), "lib": ("app",), "base": ("lib",)}
    assert graph.names == ("app", "lib", "base")
    assert graph.cut_edges == ()
    assert graph.cyclic_components == ()


def test_diamond_orders_ties_by_submission() -> None:
    graph = build_graph(
        nodes({"app": ["left", "right"], "right": ["base"], "left": ["base"], "base": []})
    )
    assert graph.order == ("base", "right", "left", "app")
    assert graph.deps["app"] == ("left", "right")
    assert graph.dependents["base"] == ("right", "left")


def test_longer_remaining_chain_goes_first() -> None:
    # x and b are both ready; b has a dependent (a), so its remaining chain is longer.
    graph = build_graph(nodes({"x": [], "a": ["b"], "b": []}))
    assert graph.order == ("b", "x", "a")


def test_provides_and_subpackages_and_versions() -> None:
    graph = build_graph(
        [
            PackageNode(name="app", needs=("openssl-dev>=3", "so:libcrypto.so.3", "busybox")),
            PackageNode(name="tool", needs=("cmd:openssl=3.4.0-r1",)),
            PackageNode(
                name="openssl",
                provides=("openssl-dev", "libcrypto3", "so:libcrypto.so.3=3", "cmd:openssl=3.4.0"),
            ),
        ]
    )
    assert graph.deps["app"] == ("openssl",)
    assert graph.deps["tool"] == ("openssl",)
    assert graph.order == ("openssl", "app", "tool")


def test_external_names_are_ignored() -> None:
    graph = build_graph(nodes({"app": ["busybox", "glibc>=2.40", "ca-certificates-bundle"]}))
    assert dict(graph.deps) == {"app": ()}
    assert graph.order == ("app",)


def test_self_edges_are_ignored() -> None:
    graph = build_graph(
        [
            PackageNode(
                name="gcc", provides=("libstdc++",), needs=("gcc", "libstdc++>=14", "busybox")
            )
        ]
    )
    assert dict(graph.deps) == {"gcc": ()}
    assert graph.cut_edges == ()


def test_package_name_beats_provides_and_providers_all_count() -> None:
    graph = build_graph(
        [
            PackageNode(name="app", needs=("foo", "cmd:x")),
            PackageNode(name="foo-compat", provides=("foo", "cmd:x")),
            PackageNode(name="foo"),
            PackageNode(name="x-alt", provides=("cmd:x=2",)),
        ]
    )
    # "foo" is a package name: that package only. "cmd:x" is only provided: every provider.
    assert graph.deps["app"] == ("foo", "foo-compat", "x-alt")


def test_repeated_needs_give_one_edge() -> None:
    graph = build_graph(
        [
            PackageNode(name="app", needs=("lib", "lib-dev", "lib>=1")),
            PackageNode(name="lib", provides=("lib-dev",)),
        ]
    )
    assert graph.deps["app"] == ("lib",)


def test_empty_submission() -> None:
    graph = build_graph([])
    assert graph.order == ()
    assert dict(graph.deps) == {}


# -- node_from_config --------------------------------------------------------------------

CONFIG = """\
package:
  name: openssl
  version: "3.4.0"
  epoch: 1
  dependencies:
    provides:
      - openssl-provider=${{package.full-version}}
environment:
  contents:
    packages: [build-base, busybox, perl>=5]
pipeline:
  - runs: make
    needs:
      packages: [zlib-dev]
subpackages:
  - name: openssl-dev
    dependencies:
      provides: [libssl-dev=3]
  - name: libcrypto3
    dependencies:
      provides:
        - so:libcrypto.so.3=3
"""


def test_node_from_config() -> None:
    config = load_config(CONFIG)
    node = node_from_config(config, compile_build(config).needs_packages)
    assert node.name == "openssl"
    assert node.provides == (
        "openssl-dev",
        "libcrypto3",
        "openssl-provider=3.4.0-r1",
        "libssl-dev=3",
        "so:libcrypto.so.3=3",
    )
    assert node.needs[:3] == ("build-base", "busybox", "perl>=5")
    assert "zlib-dev" in node.needs
    assert len(set(node.needs)) == len(node.needs)

    graph = build_graph(
        [
            node,
            PackageNode(name="zlib", provides=("zlib-dev",)),
            PackageNode(name="curl", needs=("so:libcrypto.so.3", "libssl-dev")),
        ]
    )
    assert graph.deps["openssl"] == ("zlib",)
    assert graph.deps["curl"] == ("openssl",)
    assert graph.order == ("zlib", "openssl", "curl")


# -- errors ------------------------------------------------------------------------------


def test_duplicate_package_names() -> None:
    with pytest.raises(DuplicatePackage) as info:
        build_graph(nodes({"a": []}) + nodes({"b": []}) + nodes({"a": []}) + nodes({"b": []}))
    assert info.value.names == ("a", "b")
    assert info.value.message == "duplicate package names: a, b"
    assert info.value.code == "duplicate_package"
    assert isinstance(info.value, GraphError)


def test_cycle_error_text() -> None:
    with pytest.raises(CycleError) as info:
        build_graph(nodes({"A": ["B"], "B": ["A"]}))
    assert str(info.value) == "circular dependency detected: A -> B -> A"
    assert info.value.cycle == ("A", "B", "A")
    assert info.value.components == (("A", "B"),)
    assert info.value.code == "circular_dependency"


def test_cycle_error_names_the_shortest_cycle_through_the_earliest_member() -> None:
    with pytest.raises(CycleError) as info:
        build_graph(
            nodes(
                {
                    "ok": [],
                    "x": ["y"],
                    "y": ["z"],
                    "z": ["x"],
                    "a": ["b"],
                    "b": ["c", "a"],
                    "c": ["a"],
                }
            )
        )
    assert info.value.message == "circular dependency detected: x -> y -> z -> x"
    assert info.value.components == (("x", "y", "z"), ("a", "b", "c"))


def test_cycle_error_through_provides_and_constraints() -> None:
    with pytest.raises(CycleError, match=r"^circular dependency detected: gcc -> glibc -> gcc$"):
        build_graph(
            [
                PackageNode(name="gcc", provides=("libgcc",), needs=("glibc-dev>=2",)),
                PackageNode(name="glibc", provides=("glibc-dev",), needs=("libgcc=14.2-r0",)),
            ]
        )


def test_unknown_cycle_policy() -> None:
    with pytest.raises(ValueError, match="cycle policy"):
        build_graph([], cycle_policy="ignore")  # type: ignore[arg-type]


# -- cycle breaking ----------------------------------------------------------------------


def test_break_two_cycle() -> None:
    graph = build_graph(nodes({"a": ["b"], "b": ["a"]}), cycle_policy="break")
    assert graph.cut_edges == (("a", "b"),)
    assert dict(graph.deps) == {"a": (), "b": ("a",)}
    assert graph.order == ("a", "b")
    assert graph.cyclic_components == (("a", "b"),)


def test_break_three_cycle_builds_the_most_needed_member_first() -> None:
    # shell is needed by both others and needs one: it goes first, against the repository.
    graph = build_graph(
        nodes({"make": ["shell", "cc"], "cc": ["shell"], "shell": ["make"]}),
        cycle_policy="break",
    )
    assert graph.cut_edges == (("shell", "make"),)
    assert graph.order == ("shell", "cc", "make")
    assert dict(graph.deps) == {"make": ("shell", "cc"), "cc": ("shell",), "shell": ()}


def test_break_nested_components() -> None:
    spec = {
        # One component with overlapping cycles a<->b and b->c->d->b ...
        "a": ["b"],
        "b": ["a", "c"],
        "c": ["d"],
        "d": ["b", "ext"],
        # ... a second component depending on it, with a cycle of its own ...
        "e": ["f", "a"],
        "f": ["e", "g"],
        "g": ["e"],
        # ... and acyclic packages around them.
        "app": ["e", "d"],
        "lone": [],
    }
    graph = build_graph(nodes(spec), cycle_policy="break")
    assert graph.cyclic_components == (("a", "b", "c", "d"), ("e", "f", "g"))
    assert is_acyclic(graph.deps)
    assert is_topological(graph.order, graph.deps)
    wanted = {(u, v) for u, vs in spec.items() for v in vs if v in spec}
    kept = {(u, v) for u, vs in graph.deps.items() for v in vs}
    cut = set(graph.cut_edges)
    assert len(cut) == len(graph.cut_edges)
    assert cut <= wanted
    assert kept | cut == wanted
    assert not kept & cut
    # Edges between components, and outside them, are never cut.
    assert ("e", "a") in kept and ("app", "e") in kept and ("app", "d") in kept
    # Minimal: putting any single cut edge back closes a cycle.
    for u, v in graph.cut_edges:
        assert reaches(graph.deps, v, u)
    # Two edge-disjoint cycles (a-b-a, b-c-d-b) and one in the second component: 3 cuts.
    assert graph.cut_edges == (("a", "b"), ("b", "c"), ("e", "f"))


def test_break_is_deterministic() -> None:
    spec = nodes({"a": ["b", "c"], "b": ["c", "a"], "c": ["a", "b"], "d": ["a"]})
    first = build_graph(spec, cycle_policy="break")
    assert build_graph(list(spec), cycle_policy="break") == first


def test_break_policy_leaves_acyclic_graphs_alone() -> None:
    spec = nodes({"app": ["lib"], "lib": []})
    assert build_graph(spec, cycle_policy="break") == build_graph(spec)
