"""Scheduling builds: the pure dependency graph and planning of a submission.

* :func:`build_graph` turns one :class:`PackageNode` per config (see
  :func:`node_from_config`) into an acyclic :class:`Graph`, cutting bootstrap cycles on
  request.
* :func:`priorities` ranks packages for the scheduler: longest remaining path first;
  :func:`typical_duration` is what to expect of a package never built before.
* :func:`plan` is a dry run: build order, cut edges, critical path, estimated makespan.

Every error is a :class:`GraphError` (a :class:`~melange2.errors.FarmError`).
"""

from __future__ import annotations

from melange2.scheduler.graph import (
    CycleError,
    CyclePolicy,
    DuplicatePackage,
    Graph,
    GraphError,
    PackageNode,
    Plan,
    build_graph,
    dependency_name,
    node_from_config,
    plan,
    priorities,
    typical_duration,
)

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
