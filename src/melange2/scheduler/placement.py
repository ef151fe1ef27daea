"""Placement: which backend a package goes to, by what it asks and what is free. Pure:
no I/O, no clock, no mutation; :class:`~melange2.pool.BackendPool` keeps the books and
asks these functions.

A package asks a :class:`Request` (``package.resources``: cpu in millicores, memory in
bytes; a config without them asks nothing). A backend has a :class:`Capacity`
(``maxJobs``, and optionally ``cpu`` and ``memory``: a resource a backend does not
declare is unlimited there, only ``maxJobs`` caps it) and a :class:`Usage` (what its
running packages asked). Given the backends of the package's arch and labels
(:class:`Candidate`), :func:`choose` answers:

1. :class:`Never`: none of them could ever run it, not even idle: none exists, or the
   request exceeds every one's capacity (``package asks cpu 64, memory 16Gi: no
   backend for arch x86_64 has that much (largest: cpu 8, memory 32Gi)``). The package
   fails at once.
2. :class:`Chosen`: it fits now on these backends: accepting jobs (not draining, circuit
   closed or a free half-open trial, arch offered), fewer than ``maxJobs`` running, the
   request within what is free (capacity minus usage) for every resource, and not
   reserved for another package (see below). Among them the least loaded *after*
   placing it wins, load being the largest fraction in use of jobs, cpu and memory (of
   the resources it declares); a backend where this package already failed comes last;
   then the order backends were configured in.
3. :class:`Wait`: it could run somewhere but nothing is free now; ``reason`` says what
   it waits for (``waiting for cpu: needs 4, free at most 2 (backend tcp://b:1)``).

Starvation: a package asking 4 cpus would wait forever on a busy farm if packages
asking 1 took every cpu as it freed. So the scheduler lets the first package of a queue
(the highest priority) that waits for resources (a job slot is free somewhere, but not
the cpu or memory it asks: ``Wait.blocked_by == "resources"``) *reserve* one backend
(:func:`reservation`): that backend takes no other package until the holder starts
there. Its running packages end, and it then fits (the backend is one that could fit it
idle). The others backfill the remaining backends meanwhile. One reservation per queue
(arch and backend selector) at a time, and it stays with its holder until the holder
starts, so a stream of later arrivals never takes it away. A package waiting only for a job slot
reserves nothing (a farm that declares no cpu or memory never reserves): any free slot
fits it, and slots are taken in priority order.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

from melange2.resources import format_cpu, format_memory

__all__ = [
    "NOTHING",
    "Candidate",
    "Capacity",
    "Chosen",
    "Never",
    "Placement",
    "Request",
    "Usage",
    "Wait",
    "choose",
    "could_fit",
    "fits_now",
    "load_after",
    "never_message",
    "reservation",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class Request:
    """What one package asks (``package.resources``); zero: nothing of that resource."""

    #: millicores
    cpu: int = 0
    #: bytes
    memory: int = 0

    @property
    def empty(self) -> bool:
        return self.cpu == 0 and self.memory == 0

    def describe(self) -> str:
        """``cpu 4, memory 16Gi`` (the resources it asks)."""
        parts = []
        if self.cpu:
            parts.append(f"cpu {format_cpu(self.cpu)}")
        if self.memory:
            parts.append(f"memory {format_memory(self.memory)}")
        return ", ".join(parts) or "nothing"


#: the request of a package that asks no resources
NOTHING: Final = Request()


@dataclass(frozen=True, kw_only=True, slots=True)
class Capacity:
    """What a backend has. ``None``: not declared, unlimited (only ``max_jobs`` caps)."""

    max_jobs: int
    #: millicores
    cpu: int | None = None
    #: bytes
    memory: int | None = None

    def describe(self) -> str:
        parts = []
        if self.cpu is not None:
            parts.append(f"cpu {format_cpu(self.cpu)}")
        if self.memory is not None:
            parts.append(f"memory {format_memory(self.memory)}")
        return ", ".join(parts) or "no declared resources"


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    """What a backend's running packages asked, summed."""

    jobs: int = 0
    cpu: int = 0
    memory: int = 0

    def plus(self, request: Request) -> Usage:
        return Usage(
            jobs=self.jobs + 1, cpu=self.cpu + request.cpu, memory=self.memory + request.memory
        )

    def minus(self, request: Request) -> Usage:
        return Usage(
            jobs=self.jobs - 1, cpu=self.cpu - request.cpu, memory=self.memory - request.memory
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Candidate:
    """A backend of the package's arch and labels, as placement sees it."""

    addr: str
    capacity: Capacity
    used: Usage = Usage()
    #: not draining, its circuit lets a job through, its platform is right
    accepting: bool = True
    #: the package (``build/name``) it is kept for, ``""``: none
    reserved_for: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Chosen:
    addr: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Wait:
    #: what it waits for, for people (``waiting for cpu: needs 4, ...``)
    reason: str
    #: ``slot``: every backend runs ``maxJobs`` (or none accepts jobs); ``resources``:
    #: a job slot is free somewhere but not what the package asks
    blocked_by: str = "slot"


@dataclass(frozen=True, kw_only=True, slots=True)
class Never:
    #: why no backend could ever run it (the package's error)
    message: str


Placement = Chosen | Wait | Never


def could_fit(request: Request, capacity: Capacity) -> bool:
    """Whether the request fits the backend when idle (its capacity)."""
    return (capacity.cpu is None or request.cpu <= capacity.cpu) and (
        capacity.memory is None or request.memory <= capacity.memory
    )


def _free_slot(candidate: Candidate, holder: str) -> bool:
    return (
        candidate.accepting
        and candidate.used.jobs < candidate.capacity.max_jobs
        and candidate.reserved_for in ("", holder)
    )


def _free_resources(request: Request, candidate: Candidate) -> bool:
    capacity, used = candidate.capacity, candidate.used
    return (capacity.cpu is None or used.cpu + request.cpu <= capacity.cpu) and (
        capacity.memory is None or used.memory + request.memory <= capacity.memory
    )


def fits_now(request: Request, candidate: Candidate, *, holder: str = "") -> bool:
    """Whether ``candidate`` can start the package now (``holder``: the package's own
    key, so a backend reserved for it counts as free)."""
    return _free_slot(candidate, holder) and _free_resources(request, candidate)


def load_after(request: Request, candidate: Candidate) -> float:
    """The largest fraction in use of jobs, cpu and memory once the package runs there
    (resources the backend does not declare do not count)."""
    capacity, used = candidate.capacity, candidate.used
    fractions = [(used.jobs + 1) / capacity.max_jobs]
    if capacity.cpu:
        fractions.append((used.cpu + request.cpu) / capacity.cpu)
    if capacity.memory:
        fractions.append((used.memory + request.memory) / capacity.memory)
    return max(fractions)


def never_message(request: Request, candidates: Sequence[Candidate], where: str) -> str | None:
    """Why no candidate could ever run the request (``None``: one could). ``where``
    names the candidates (``arch x86_64``, ``arch x86_64 and labels tier=big``)."""
    if not candidates:
        return f"no backend for {where}"
    if request.empty or any(could_fit(request, c.capacity) for c in candidates):
        return None
    largest = []
    fits_apart = True
    for what, asked in (("cpu", request.cpu), ("memory", request.memory)):
        if not asked:
            continue
        amounts = [c.capacity.cpu if what == "cpu" else c.capacity.memory for c in candidates]
        declared = [a for a in amounts if a is not None]
        if len(declared) < len(amounts):
            largest.append(f"{what} unlimited")
            continue
        shown = format_cpu if what == "cpu" else format_memory
        largest.append(f"{what} {shown(max(declared))}")
        fits_apart = fits_apart and max(declared) >= asked
    # each resource fits on some backend, just never both on the same one
    both = "; none has both" if fits_apart else ""
    return (
        f"package asks {request.describe()}: no backend for {where} has that much "
        f"(largest: {', '.join(largest)}{both})"
    )


def choose(
    request: Request,
    candidates: Sequence[Candidate],
    *,
    where: str,
    holder: str = "",
    avoid: Collection[str] = (),
) -> Placement:
    """Where the package goes now, or why it waits, or why it never can (see the
    module docstring). ``candidates`` are the serving backends of its arch and labels,
    in configuration order; ``holder`` the package's key (for its own reservation);
    ``avoid`` backends where it already failed (taken only if no other fits)."""
    never = never_message(request, candidates, where)
    if never is not None:
        return Never(message=never)
    best: tuple[bool, float, int] | None = None
    chosen = ""
    for order, candidate in enumerate(candidates):
        if not fits_now(request, candidate, holder=holder):
            continue
        key = (candidate.addr in avoid, load_after(request, candidate), order)
        if best is None or key < best:
            best, chosen = key, candidate.addr
    if chosen:
        return Chosen(addr=chosen)
    return _wait(request, candidates, holder)


def _wait(request: Request, candidates: Sequence[Candidate], holder: str) -> Wait:
    slots = [c for c in candidates if _free_slot(c, holder)]
    kept = [c for c in candidates if c.reserved_for not in ("", holder)]
    note = "".join(f"; {c.addr} is kept for {c.reserved_for}" for c in kept[:1])
    mine = [c.addr for c in candidates if holder and c.reserved_for == holder]
    if mine:
        note += f"; {mine[0]} is kept for it"
    if not slots:
        return Wait(reason="waiting for a backend slot" + note, blocked_by="slot")
    short: list[str] = []
    for what, asked, free in (
        ("cpu", request.cpu, _most_free(slots, "cpu")),
        ("memory", request.memory, _most_free(slots, "memory")),
    ):
        if free is not None and asked > free[0]:
            shown = format_cpu if what == "cpu" else format_memory
            short.append(
                f"{what}: needs {shown(asked)}, free at most {shown(max(free[0], 0))} "
                f"(backend {free[1]})"
            )
    if not short:  # each fits somewhere, but no backend has both free at once
        short.append(f"cpu and memory together: needs {request.describe()}")
    return Wait(reason="waiting for " + "; ".join(short) + note, blocked_by="resources")


def _most_free(candidates: Sequence[Candidate], what: str) -> tuple[int, str] | None:
    """The most of ``what`` free on one candidate and its address (``None``: some
    candidate does not declare it, so it is never short there)."""
    best: tuple[int, str] | None = None
    for c in candidates:
        capacity = c.capacity.cpu if what == "cpu" else c.capacity.memory
        if capacity is None:
            return None
        free = capacity - (c.used.cpu if what == "cpu" else c.used.memory)
        if best is None or free > best[0]:
            best = (free, c.addr)
    return best


def reservation(request: Request, candidates: Sequence[Candidate], *, holder: str) -> str | None:
    """The backend to keep for ``holder`` (a package that asks resources and waits):
    its current one if it still could run it, else the accepting backend, not kept
    for another package, that could fit it idle and is closest to fitting it now (the
    least missing, as a fraction of capacity; then the fewest jobs; then configuration
    order). ``None``: none qualifies (all are kept for others, or none accepts jobs)."""
    fitting = [c for c in candidates if could_fit(request, c.capacity)]
    for c in fitting:
        if c.reserved_for == holder and c.accepting:
            return c.addr
    best: tuple[float, int, int] | None = None
    chosen: str | None = None
    for order, c in enumerate(fitting):
        if not c.accepting or c.reserved_for not in ("", holder):
            continue
        key = (_missing(request, c), c.used.jobs, order)
        if best is None or key < best:
            best, chosen = key, c.addr
    return chosen


def _missing(request: Request, candidate: Candidate) -> float:
    capacity, used = candidate.capacity, candidate.used
    missing = 0.0
    if capacity.cpu:
        missing = max(missing, (used.cpu + request.cpu - capacity.cpu) / capacity.cpu)
    if capacity.memory:
        missing = max(missing, (used.memory + request.memory - capacity.memory) / capacity.memory)
    return missing
