"""Placement by resources: the pure rules (melange2.scheduler.placement), the pool's
books (melange2.pool.BackendPool.place/release/reserve) under random operations, and
the dry run's simulation on backends (graph.plan with requests)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from melange2.pool.config import BackendSpec, PoolConfig
from melange2.pool.pool import BackendPool, BackendSlot
from melange2.scheduler.graph import PackageNode, build_graph, plan
from melange2.scheduler.placement import (
    NOTHING,
    Candidate,
    Capacity,
    Chosen,
    Never,
    Request,
    Usage,
    Wait,
    choose,
    could_fit,
    fits_now,
    load_after,
    reservation,
)

GI = 2**30


def cores(n: float) -> int:
    return int(n * 1000)


def backend(addr: str, cpu: float | None, memory: int | None = None, **kw: object) -> Candidate:
    jobs = kw.pop("max_jobs", 4)
    return Candidate(
        addr=addr,
        capacity=Capacity(
            max_jobs=jobs,  # type: ignore[arg-type]
            cpu=None if cpu is None else cores(cpu),
            memory=memory,
        ),
        **kw,  # type: ignore[arg-type]
    )


# -- the rules, by example -----------------------------------------------------------


def test_a_package_goes_where_it_fits_least_loaded_after_placing_it() -> None:
    small, large = backend("tcp://small:1", 2), backend("tcp://large:1", 16)
    # both idle: one core is half of small's, a sixteenth of large's
    assert choose(Request(cpu=cores(1)), [small, large], where="arch x86_64") == Chosen(
        addr="tcp://large:1"
    )
    # three cores: large could, but has one free; the most free is small's two
    busy_large = backend("tcp://large:1", 16, used=Usage(jobs=1, cpu=cores(15)))
    assert choose(Request(cpu=cores(3)), [small, busy_large], where="x") == Wait(
        reason="waiting for cpu: needs 3, free at most 2 (backend tcp://small:1)",
        blocked_by="resources",
    )
    # asking nothing: jobs alone decide, in configuration order on ties
    a, b = backend("tcp://a:1", None), backend("tcp://b:1", None)
    assert choose(NOTHING, [a, b], where="x") == Chosen(addr="tcp://a:1")
    a_busy = backend("tcp://a:1", None, used=Usage(jobs=1))
    assert choose(NOTHING, [a_busy, b], where="x") == Chosen(addr="tcp://b:1")


def test_a_backend_where_it_failed_comes_last() -> None:
    a, b = backend("tcp://a:1", 8), backend("tcp://b:1", 4)
    ask = Request(cpu=cores(1))
    assert choose(ask, [a, b], where="x", avoid={"tcp://a:1"}) == Chosen(addr="tcp://b:1")
    assert choose(ask, [a], where="x", avoid={"tcp://a:1"}) == Chosen(addr="tcp://a:1")


def test_undeclared_resources_are_unlimited_and_max_jobs_stays_a_cap() -> None:
    anything = backend("tcp://any:1", None, max_jobs=1)
    huge = Request(cpu=cores(512), memory=4096 * GI)
    assert choose(huge, [anything], where="x") == Chosen(addr="tcp://any:1")
    full = backend("tcp://any:1", None, max_jobs=1, used=Usage(jobs=1))
    assert choose(huge, [full], where="x") == Wait(reason="waiting for a backend slot")
    cpu_only = backend("tcp://c:1", 4, max_jobs=8, used=Usage(jobs=1, cpu=cores(4)))
    assert choose(Request(memory=GI), [cpu_only], where="x") == Chosen(addr="tcp://c:1")


def test_what_never_fits_names_the_request_and_the_largest_backend() -> None:
    farm = [backend("tcp://a:1", 8, 16 * GI), backend("tcp://b:1", 4, 32 * GI)]
    found = choose(Request(cpu=cores(64), memory=16 * GI), farm, where="arch x86_64")
    assert found == Never(
        message="package asks cpu 64, memory 16Gi: no backend for arch x86_64 has that much "
        "(largest: cpu 8, memory 32Gi)"
    )
    apart = choose(Request(cpu=cores(8), memory=32 * GI), farm, where="arch x86_64")
    assert isinstance(apart, Never)
    assert apart.message.endswith("(largest: cpu 8, memory 32Gi; none has both)")
    assert choose(NOTHING, [], where="arch riscv64") == Never(message="no backend for arch riscv64")


def test_waiting_for_memory_and_for_both() -> None:
    a = backend("tcp://a:1", 8, 16 * GI, used=Usage(jobs=1, cpu=cores(1), memory=12 * GI))
    assert choose(Request(cpu=cores(1), memory=8 * GI), [a], where="x") == Wait(
        reason="waiting for memory: needs 8Gi, free at most 4Gi (backend tcp://a:1)",
        blocked_by="resources",
    )
    cpu_free = backend("tcp://c:1", 8, 16 * GI, used=Usage(jobs=1, cpu=cores(1), memory=15 * GI))
    mem_free = backend("tcp://m:1", 8, 16 * GI, used=Usage(jobs=1, cpu=cores(7), memory=GI))
    found = choose(Request(cpu=cores(4), memory=8 * GI), [cpu_free, mem_free], where="x")
    assert found == Wait(
        reason="waiting for cpu and memory together: needs cpu 4, memory 8Gi",
        blocked_by="resources",
    )


def test_a_kept_backend_is_free_only_to_its_holder() -> None:
    kept = backend("tcp://a:1", 4, reserved_for="bld-1/big")
    other = backend("tcp://b:1", 4, used=Usage(jobs=1, cpu=cores(4)))
    ask = Request(cpu=cores(1))
    assert choose(ask, [kept, other], where="x", holder="bld-1/small") == Wait(
        reason="waiting for cpu: needs 1, free at most 0 (backend tcp://b:1); "
        "tcp://a:1 is kept for bld-1/big",
        blocked_by="resources",
    )
    full = backend("tcp://b:1", 4, max_jobs=1, used=Usage(jobs=1, cpu=cores(1)))
    assert choose(ask, [kept, full], where="x", holder="bld-1/small") == Wait(
        reason="waiting for a backend slot; tcp://a:1 is kept for bld-1/big"
    )
    assert choose(ask, [kept, other], where="x", holder="bld-1/big") == Chosen(addr="tcp://a:1")


def test_reservation_keeps_the_holders_backend_else_the_closest_to_fitting() -> None:
    ask = Request(cpu=cores(4))
    nearly = backend("tcp://n:1", 4, used=Usage(jobs=1, cpu=cores(1)))
    far = backend("tcp://f:1", 4, used=Usage(jobs=3, cpu=cores(3)))
    small = backend("tcp://s:1", 2)
    assert reservation(ask, [far, small, nearly], holder="h") == "tcp://n:1"
    mine = backend("tcp://f:1", 4, used=Usage(jobs=3, cpu=cores(3)), reserved_for="h")
    assert reservation(ask, [mine, nearly], holder="h") == "tcp://f:1"
    theirs = backend("tcp://n:1", 4, reserved_for="other")
    closed = backend("tcp://f:1", 4, accepting=False)
    assert reservation(ask, [theirs, closed, small], holder="h") is None


# -- the rules, as properties ----------------------------------------------------------

amounts = st.one_of(st.none(), st.integers(min_value=1, max_value=16))
capacities = st.builds(
    Capacity,
    max_jobs=st.integers(min_value=1, max_value=4),
    cpu=amounts.map(lambda n: None if n is None else cores(n)),
    memory=amounts.map(lambda n: None if n is None else n * GI),
)
requests = st.builds(
    Request,
    cpu=st.integers(min_value=0, max_value=20).map(cores),
    memory=st.integers(min_value=0, max_value=20).map(lambda n: n * GI),
)


@st.composite
def candidates(draw: st.DrawFn) -> list[Candidate]:
    out = []
    for i, capacity in enumerate(draw(st.lists(capacities, min_size=0, max_size=4))):
        jobs = draw(st.integers(min_value=0, max_value=capacity.max_jobs))
        cpu = draw(st.integers(min_value=0, max_value=capacity.cpu or 8000))
        memory = draw(st.integers(min_value=0, max_value=capacity.memory or 8 * GI))
        out.append(
            Candidate(
                addr=f"tcp://b{i}:1",
                capacity=capacity,
                used=Usage(jobs=jobs, cpu=cpu, memory=memory),
                accepting=draw(st.booleans()),
                reserved_for=draw(st.sampled_from(["", "", "me", "them"])),
            )
        )
    return out


@given(request=requests, found=candidates())
def test_choose_agrees_with_its_rules(request: Request, found: list[Candidate]) -> None:
    result = choose(request, found, where="x", holder="me")
    if isinstance(result, Never):
        assert not any(could_fit(request, c.capacity) for c in found)
    elif isinstance(result, Wait):
        assert any(could_fit(request, c.capacity) for c in found)
        assert not any(fits_now(request, c, holder="me") for c in found)
        assert result.reason.startswith("waiting for ")
    else:
        fitting = [c for c in found if fits_now(request, c, holder="me")]
        assert result.addr in {c.addr for c in fitting}
        best = min(load_after(request, c) for c in fitting)
        chosen = next(c for c in fitting if c.addr == result.addr)
        assert load_after(request, chosen) == best


# -- the pool's books under random operations ------------------------------------------


def make_pool(specs: Sequence[Capacity]) -> BackendPool:
    return BackendPool.from_config(
        PoolConfig(
            backends=tuple(
                BackendSpec(
                    addr=f"tcp://b{i}:1",
                    arch="x86_64",
                    max_jobs=c.max_jobs,
                    cpu=c.cpu,
                    memory=c.memory,
                )
                for i, c in enumerate(specs)
            )
        )
    )


operations = st.lists(
    st.tuples(
        st.sampled_from(["place", "release", "reserve", "unreserve"]),
        requests,
        st.integers(min_value=0, max_value=5),  # which holder / which slot
    ),
    max_size=60,
)


@settings(max_examples=200)
@given(specs=st.lists(capacities, min_size=1, max_size=4), ops=operations)
def test_the_pool_never_overcommits_jobs_cpu_or_memory(
    specs: list[Capacity], ops: list[tuple[str, Request, int]]
) -> None:
    pool = make_pool(specs)
    held: list[BackendSlot] = []
    for op, request, n in ops:
        holder = f"bld-1/p{n}"
        if op == "place":
            slot = pool.place("x86_64", {}, request, holder=holder)
            if isinstance(slot, BackendSlot):
                held.append(slot)
                assert pool.reserved_for(holder) is None  # starting ends its reservation
        elif op == "release" and held:
            pool.release(held.pop(n % len(held)), outcome="success")
        elif op == "reserve":
            kept = pool.reserve(holder, "x86_64", {}, request)
            if kept is not None:
                assert pool.reserved_for(holder) == kept
        elif op == "unreserve":
            pool.unreserve(holder)
        for b in pool.backends.values():
            mine = [s.request for s in held if s.backend is b]
            assert b.active == len(mine) <= b.max_jobs
            assert b.cpu_used == sum(r.cpu for r in mine)
            assert b.memory_used == sum(r.memory for r in mine)
            assert b.cpu is None or b.cpu_used <= b.cpu
            assert b.memory is None or b.memory_used <= b.memory
        kept_for = [b.reserved_for for b in pool.backends.values() if b.reserved_for]
        assert len(kept_for) == len(set(kept_for))  # one backend per holder
    for slot in held:
        pool.release(slot, outcome="neutral")
    assert all(b.active == b.cpu_used == b.memory_used == 0 for b in pool.backends.values())


def test_a_backend_removed_while_kept_ends_the_reservation() -> None:
    pool = make_pool([Capacity(max_jobs=1, cpu=cores(4)), Capacity(max_jobs=1, cpu=cores(4))])
    assert pool.reserve("bld-1/big", "x86_64", {}, Request(cpu=cores(4))) == "tcp://b0:1"
    pool.remove("tcp://b0:1")
    assert pool.reserved_for("bld-1/big") is None


def test_re_adding_a_draining_backend_keeps_what_it_runs() -> None:
    pool = make_pool([Capacity(max_jobs=2, cpu=cores(4)), Capacity(max_jobs=2)])
    slot = pool.place("x86_64", {}, Request(cpu=cores(3)), avoid={"tcp://b1:1"})
    assert isinstance(slot, BackendSlot) and slot.backend.addr == "tcp://b0:1"
    pool.remove("tcp://b0:1")
    again = pool.add(BackendSpec(addr="tcp://b0:1", arch="x86_64", max_jobs=2, cpu=cores(4)))
    assert (again.active, again.cpu_used) == (1, cores(3))
    assert pool.never("x86_64", {}, Request(cpu=cores(5))) is None  # b1 declares no cpu


# -- the dry run on backends ---------------------------------------------------------


@st.composite
def planned(
    draw: st.DrawFn,
) -> tuple[list[PackageNode], dict[str, Request], dict[str, float], list[Capacity]]:
    n = draw(st.integers(min_value=1, max_value=14))
    names = [f"p{i}" for i in range(n)]
    nodes = [
        PackageNode(
            name=name,
            needs=tuple(sorted(draw(st.sets(st.sampled_from(names[:i]), max_size=2)))) if i else (),
        )
        for i, name in enumerate(names)
    ]
    asks = {name: draw(requests) for name in names}
    durations = {name: float(draw(st.integers(min_value=1, max_value=9))) for name in names}
    backends = draw(st.lists(capacities, min_size=1, max_size=3))
    return nodes, asks, durations, backends


@settings(max_examples=150, deadline=None)
@given(case=planned())
def test_the_dry_run_on_backends_never_overcommits_and_runs_what_fits(
    case: tuple[list[PackageNode], dict[str, Request], dict[str, float], list[Capacity]],
) -> None:
    nodes, asks, durations, backends = case
    graph = build_graph(nodes)
    result = plan(graph, durations, slots=1, backends=backends, requests=asks, where="x")
    if all(r.empty for r in asks.values()):
        assert not result.backend_of  # the plain slot simulation
        return
    never = {n for n, r in asks.items() if not any(could_fit(r, c) for c in backends)}
    doomed = set(never)
    for node in nodes:  # in dependency order
        if any(d in doomed for d in graph.deps[node.name]):
            doomed.add(node.name)
    assert set(result.unplaceable) == doomed
    assert set(result.order) == {n.name for n in nodes} - doomed
    assert result.lower_bound_s <= result.estimated_makespan_s + 1e-9
    assert set(result.critical_path) <= set(result.order)
    for name in result.order:  # after its dependencies, on a backend it fits
        start = result.start_s[name]
        for dep in graph.deps[name]:
            assert result.start_s[dep] + durations[dep] <= start
        assert could_fit(asks[name], backends[result.backend_of[name]])
    for b, capacity in enumerate(backends):  # at every start, nothing overcommitted
        mine = [n for n in result.order if result.backend_of[n] == b]
        for name in mine:
            t = result.start_s[name]
            now = [m for m in mine if result.start_s[m] <= t < result.start_s[m] + durations[m]]
            assert len(now) <= capacity.max_jobs
            if capacity.cpu is not None:
                assert sum(asks[m].cpu for m in now) <= capacity.cpu
            if capacity.memory is not None:
                assert sum(asks[m].memory for m in now) <= capacity.memory


def test_the_dry_run_flags_what_can_never_be_placed() -> None:
    graph = build_graph(
        [PackageNode(name="huge"), PackageNode(name="app", needs=("huge",)), PackageNode(name="ok")]
    )
    result = plan(
        graph,
        {},
        slots=4,
        backends=[Capacity(max_jobs=4, cpu=cores(8))],
        requests={"huge": Request(cpu=cores(64)), "ok": Request(cpu=cores(2))},
        where="arch x86_64",
    )
    assert dict(result.unplaceable) == {
        "huge": "package asks cpu 64: no backend for arch x86_64 has that much (largest: cpu 8)",
        "app": "dependency huge can never be placed",
    }
    assert result.order == ("ok",)


def test_a_four_cpu_farm_runs_four_cpu_packages_one_at_a_time_per_backend() -> None:
    graph = build_graph([PackageNode(name=f"p{i}") for i in range(6)])
    result = plan(
        graph,
        {},
        slots=8,
        backends=[Capacity(max_jobs=4, cpu=cores(4)), Capacity(max_jobs=4, cpu=cores(4))],
        requests={f"p{i}": Request(cpu=cores(4)) for i in range(6)},
    )
    assert result.estimated_makespan_s == pytest.approx(3.0)  # 6 packages, 2 at a time
    assert sorted(result.start_s.values()) == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]
