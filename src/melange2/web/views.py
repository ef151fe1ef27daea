"""What the pages show, worked out from the store's values: pure functions, no I/O.

A build's progress, its ETA and critical path come from what the submission planned:
each package's ``priority`` is its bottom level (its expected duration plus the largest
level among its dependents, :func:`melange2.scheduler.graph.priorities`), so a package's
expected duration is its level less its dependents' largest, and the plan's critical
path is the chain of largest levels.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from markupsafe import Markup, escape

from melange2.jobs import Build, PackageJob, PackageStatus

#: the dependency graph is drawn for builds up to this many packages
GRAPH_LIMIT = 300
#: statuses in the order the pages list them
STATUS_ORDER = tuple(PackageStatus)
WAITING = frozenset({PackageStatus.BLOCKED, PackageStatus.PENDING})


def seconds(s: float | None) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 03 min``; ``""`` for ``None``."""
    if s is None:
        return ""
    s = max(0.0, s)
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def duration(start: datetime | None, end: datetime | None, now: datetime) -> float | None:
    if start is None:
        return None
    return ((end or now) - start).total_seconds()


def done_count(counts: Mapping[str, int]) -> int:
    return sum(n for s, n in counts.items() if PackageStatus(s).terminal)


@dataclass(frozen=True, kw_only=True)
class Progress:
    done: int
    total: int
    counts: Mapping[str, int]

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0


def progress(counts: Mapping[str, int]) -> Progress:
    return Progress(done=done_count(counts), total=sum(counts.values()), counts=counts)


def count_statuses(jobs: Iterable[PackageJob]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status.value] = counts.get(job.status.value, 0) + 1
    return {s.value: counts[s.value] for s in STATUS_ORDER if s.value in counts}


@dataclass(frozen=True, kw_only=True)
class Plan:
    """The build's plan as the pages use it."""

    #: expected seconds per package (from the levels; unit weights when none was known)
    cost: Mapping[str, float]
    dependents: Mapping[str, Sequence[str]]
    critical_path: Sequence[str]
    critical_path_s: float
    #: False when the submission knew no past duration (the levels are unit weights)
    timed: bool


def plan_of(build: Build) -> Plan:
    jobs = build.packages
    dependents: dict[str, list[str]] = {j.name: [] for j in jobs}
    for job in jobs:
        for dep in job.dependencies:
            if dep in dependents:
                dependents[dep].append(job.name)
    level = {j.name: j.priority for j in jobs}
    cost = {
        name: max(0.0, level[name] - max((level[d] for d in after), default=0.0))
        for name, after in dependents.items()
    }
    path: list[str] = []
    if jobs:
        # the first-submitted of the highest levels, as the plan picks it
        v = max(jobs, key=lambda j: (j.priority, -j.seq)).name
        path.append(v)
        seq = {j.name: j.seq for j in jobs}
        while dependents[v]:
            v = max(dependents[v], key=lambda d: (level[d], -seq[d]))
            path.append(v)
    timed = any(abs(c - 1.0) > 1e-9 for c in cost.values() if c > 0)
    return Plan(
        cost=cost,
        dependents=dependents,
        critical_path=path,
        critical_path_s=level[path[0]] if path else 0.0,
        timed=timed,
    )


def eta_seconds(build: Build, plan: Plan, slots: int, now: datetime) -> float | None:
    """Expected seconds to the end: the longer of what is left of the critical path and
    the work left spread over ``slots``; ``None`` once finished or with no durations."""
    if not plan.timed:
        return None
    path = work = 0.0
    left = False
    for job in build.packages:
        if job.status.terminal:
            continue
        left = True
        cost = plan.cost[job.name]
        spent = 0.0
        if job.status is PackageStatus.RUNNING and job.attempts:
            spent = min(cost, (now - job.attempts[-1].started_at).total_seconds())
        work += cost - spent
        path = max(path, job.priority - spent)
    if not left:
        return None
    return max(path, work / max(1, slots))


@dataclass(frozen=True, kw_only=True)
class Node:
    name: str
    status: str
    x: float
    y: float


@dataclass(frozen=True, kw_only=True)
class Edge:
    dep: str
    dependent: str
    path: str  #: SVG path data


@dataclass(frozen=True, kw_only=True)
class GraphView:
    nodes: Sequence[Node]
    edges: Sequence[Edge]
    width: float
    height: float
    node_w: float
    node_h: float


def graph_view(build: Build, *, node_w: float = 150, node_h: float = 22) -> GraphView | None:
    """A layered drawing of the dependency graph (dependencies left of dependents), or
    ``None`` past :data:`GRAPH_LIMIT` packages. Layers by longest path from the roots;
    within a layer, ordered by the mean position of each package's dependencies."""
    jobs = build.packages
    if not jobs or len(jobs) > GRAPH_LIMIT:
        return None
    names = {j.name for j in jobs}
    deps = {j.name: [d for d in j.dependencies if d in names] for j in jobs}
    layer: dict[str, int] = {}

    def depth(name: str) -> int:
        # iterative longest path from the roots (the graph is acyclic as stored)
        stack = [(name, False)]
        while stack:
            n, ready = stack.pop()
            if n in layer:
                continue
            if ready:
                layer[n] = 1 + max((layer[d] for d in deps[n]), default=-1)
                continue
            stack.append((n, True))
            stack.extend((d, False) for d in deps[n] if d not in layer)
        return layer[name]

    for j in jobs:
        depth(j.name)
    layers: dict[int, list[str]] = {}
    for j in jobs:  # submission order first
        layers.setdefault(layer[j.name], []).append(j.name)
    row: dict[str, float] = {}
    for n in sorted(layers):
        members = layers[n]
        if n > 0:
            members.sort(
                key=lambda m: sum(row[d] for d in deps[m]) / len(deps[m]) if deps[m] else 0.0
            )
        for i, m in enumerate(members):
            row[m] = float(i)
    gap_x, gap_y, pad = 40.0, 8.0, 4.0
    status = {j.name: j.status.value for j in jobs}
    nodes = [
        Node(
            name=m,
            status=status[m],
            x=pad + layer[m] * (node_w + gap_x),
            y=pad + row[m] * (node_h + gap_y),
        )
        for j in jobs
        for m in (j.name,)
    ]
    at = {n.name: n for n in nodes}
    edges = []
    for j in jobs:
        for d in deps[j.name]:
            a, b = at[d], at[j.name]
            x1, y1 = a.x + node_w, a.y + node_h / 2
            x2, y2 = b.x, b.y + node_h / 2
            mid = (x1 + x2) / 2
            edges.append(
                Edge(
                    dep=d,
                    dependent=j.name,
                    path=f"M{x1:.0f},{y1:.0f} C{mid:.0f},{y1:.0f} {mid:.0f},{y2:.0f} "
                    f"{x2:.0f},{y2:.0f}",
                )
            )
    width = pad * 2 + (max(layer.values()) + 1) * (node_w + gap_x) - gap_x
    height = pad * 2 + max(len(m) for m in layers.values()) * (node_h + gap_y) - gap_y
    return GraphView(
        nodes=nodes, edges=edges, width=width, height=height, node_w=node_w, node_h=node_h
    )


_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9._~+-]+")


def path_segment(value: str) -> str:
    """``value`` as one URL path segment: package names (letters, digits, ``. _ + -``)
    as they are, anything else percent-quoted."""
    if _SAFE_SEGMENT.fullmatch(value):
        return value
    return quote(value, safe="")


def package_rows(
    build: Build,
    reason_of: Callable[[PackageJob], str],
    reused: Mapping[str, str],
    now: datetime,
) -> Markup:
    """The build page's package table body, one ``<tr>`` per package: the pages' one
    hot loop (3,401 rows for a distribution), so written here rather than in the
    template, every value from the store escaped as the template would."""
    out = []
    base = f"/builds/{escape(path_segment(build.id))}/packages/"
    for job in build.packages:
        name = escape(job.name)
        status = job.status
        took = seconds(duration(job.started_at, job.finished_at, now))
        note = escape(reason_of(job) if status in WAITING else job.error)
        backend = escape(job.backend.addr) if job.backend is not None else ""
        cached = ""
        if job.cached:
            origin = reused.get(job.name)
            cached = "cached"
            if origin:
                link = escape(path_segment(origin.split("/", 1)[0]))
                cached = f'cached from <a href="/builds/{link}">{escape(origin)}</a>'
        out.append(
            f'<tr data-pkg="{name}" class="st-{status}"><td><a href="{base}'
            f'{escape(path_segment(job.name))}">{name}</a></td><td class="s">{status}</td>'
            f'<td class="d">{took}</td><td class="b">{backend}</td><td class="r">{note}</td>'
            f'<td class="c">{cached}</td><td class="a">{len(job.attempts)}</td></tr>\n'
        )
    return Markup("".join(out))
