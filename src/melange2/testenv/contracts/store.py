"""The :class:`~melange2.store.base.JobStore` contract: what every store must do.

Subclass :class:`StoreContract` and override its ``store`` fixture (an async generator
yielding an empty, open store, closed afterwards)::

    class TestSqliteStore(StoreContract):
        @pytest.fixture
        async def store(self, tmp_path: Path) -> AsyncIterator[JobStore]:
            async with await SqliteStore.open(tmp_path / "store.db") as store:
                yield store

What a store may or may not do is a capability fixture the subclass overrides where
its store has it: ``supports_listen_notify`` (``False`` here).

The tests are async and run on anyio's pytest plugin (asyncio backend). Helpers to make
builds (:func:`make_build`, :func:`make_job`) are public so other suites can share them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from itertools import product
from typing import Any

import pytest

from melange2.buildkit.tls import ClientTLS
from melange2.errors import InvalidTransition, NotFound, RequestError, StoreConflict, StoreError
from melange2.ids import BuildId
from melange2.jobs import (
    ALLOWED_TRANSITIONS,
    Attempt,
    Backend,
    Build,
    BuildSpec,
    BuildStatus,
    GitSpec,
    PackageJob,
    PackageStatus,
    StepOptions,
)
from melange2.store.base import JobStore, Move, StoredBackend
from melange2.store.rules import LEASE_EXPIRED_REASON
from melange2.testenv.contracts.replicas import ReplicaStoreContract
from melange2.testenv.contracts.tokens import TokenStoreContract

__all__ = ["T0", "StoreContract", "make_build", "make_job"]

#: a fixed, aware "now" for the tests
T0 = datetime(2025, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
#: a non-UTC zone: the store must hand the same instants back in UTC
CEST = timezone(timedelta(hours=2))

ALL_MOVES = list(product(PackageStatus, PackageStatus))
ALLOWED_MOVES = [(a, b) for a, b in ALL_MOVES if b in ALLOWED_TRANSITIONS[a]]
REFUSED_MOVES = [(a, b) for a, b in ALL_MOVES if b not in ALLOWED_TRANSITIONS[a]]


def make_job(
    build_id: str,
    name: str,
    seq: int = 0,
    status: PackageStatus = PackageStatus.PENDING,
    **fields: Any,
) -> PackageJob:
    """A package job with plausible defaults."""
    defaults: dict[str, Any] = {
        "config_yaml": f"package:\n  name: {name}\n",
        "arch": "x86_64",
    }
    return PackageJob(
        build_id=BuildId(build_id),
        name=name,
        seq=seq,
        status=status,
        **{**defaults, **fields},
    )


def make_build(
    build_id: str = "bld-0000000000000001",
    *,
    names: Sequence[str] = ("a",),
    status: BuildStatus = BuildStatus.PENDING,
    created_at: datetime = T0,
    package_status: PackageStatus = PackageStatus.PENDING,
    **fields: Any,
) -> Build:
    """A build with one package per name (``seq`` in the given order)."""
    return Build(
        id=BuildId(build_id),
        status=status,
        spec=BuildSpec(arch="x86_64", configs=tuple(names)),
        created_at=created_at,
        packages=tuple(
            make_job(build_id, name, seq, package_status) for seq, name in enumerate(names)
        ),
        **fields,
    )


def _pair_name(source: PackageStatus, target: PackageStatus) -> str:
    return f"{source.value}-to-{target.value}"


class StoreContract(TokenStoreContract, ReplicaStoreContract):
    """Every :class:`~melange2.store.base.JobStore` passes these (and, as a
    :class:`~melange2.store.base.TokenStore`, :class:`TokenStoreContract`'s)."""

    pytestmark = [pytest.mark.anyio]

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def store(self) -> AsyncIterator[JobStore]:
        """An empty, open store; override in the subclass."""
        raise NotImplementedError("override the `store` fixture")
        yield  # pragma: no cover

    @pytest.fixture
    def supports_listen_notify(self) -> bool:
        """Whether the store wakes other processes on its database; override where so."""
        return False

    # capabilities

    async def test_declares_its_capabilities(
        self, store: JobStore, supports_listen_notify: bool
    ) -> None:
        assert store.supports_listen_notify is supports_listen_notify

    # create and get

    async def test_get_returns_every_field_as_created(self, store: JobStore) -> None:
        build_id = BuildId("bld-roundtrip")
        started = datetime(2025, 3, 1, 14, 0, 1, 123_456, tzinfo=CEST)
        job = make_job(
            build_id,
            "curl",
            seq=3,
            status=PackageStatus.RUNNING,
            dependencies=("openssl", "zlib"),
            priority=42.5,
            reason="leased",
            error="none yet",
            attempts=(
                Attempt(number=1, backend="tcp://a:1234", started_at=started, error="boom"),
                Attempt(
                    number=2,
                    backend="tcp://b:1234",
                    started_at=started + timedelta(minutes=1),
                    finished_at=started + timedelta(minutes=2),
                    log_path="logs/curl.2.log",
                ),
            ),
            started_at=started,
            finished_at=started + timedelta(seconds=90),
            log_path="logs/curl.log",
            output_path="out/x86_64/curl-8.0-r0.apk",
            backend=Backend(addr="tcp://b:1234", arch="x86_64", labels={"tier": "fast"}),
            lease_owner="replica-1",
            lease_expires=started + timedelta(minutes=5),
            cpu_millis=64_000,
            memory_bytes=256 * 2**30,  # beyond 32 bits
        )
        build = Build(
            id=build_id,
            status=BuildStatus.RUNNING,
            # every field of the spec away from its default: all of it round-trips
            spec=BuildSpec(
                config_yaml="package: {name: curl}",
                configs=("package: {name: curl}", "package: {name: zlib}"),
                git_source=GitSpec(repository="https://git.example/os", ref="main", path="p"),
                pipelines={"p/x.yaml": "runs: true"},
                arch="aarch64",
                backend_selector={"tier": "fast"},
                mode="dag",
                options=StepOptions(env={"A": "1", "B": ""}, with_test=True, debug=True),
                cycle_policy="break",
                schedule="fifo",
                force=True,
                publish="build",
                replace=True,
                source_files={"curl": ("a.txt", "d/b.bin")},
            ),
            created_at=started - timedelta(hours=1),
            started_at=started,
            finished_at=None,
            cancel_requested=True,
            packages=(job,),
            submitted_by="alice@example.org",
            source_commit="0f" * 20,
        )
        await store.create_build(build)

        got = await store.get_build(build_id)

        assert got == build
        got_job = got.packages[0]
        assert isinstance(got_job.status, PackageStatus)
        assert isinstance(got.status, BuildStatus)
        assert isinstance(got_job.dependencies, tuple)
        stamps = [
            got.created_at,
            got.started_at,
            got_job.started_at,
            got_job.finished_at,
            got_job.lease_expires,
            *(a.started_at for a in got_job.attempts),
        ]
        for stamp in stamps:
            assert stamp is not None
            assert stamp.tzinfo is not None
            assert stamp.utcoffset() == timedelta(0)
        assert got_job.duration_s == 90.0

    async def test_get_lists_packages_in_seq_order(self, store: JobStore) -> None:
        build = make_build(names=("c", "a", "b"))
        shuffled = build.evolve(packages=tuple(reversed(build.packages)))
        await store.create_build(shuffled)

        got = await store.get_build(build.id)

        assert [j.name for j in got.packages] == ["c", "a", "b"]
        assert [j.seq for j in got.packages] == [0, 1, 2]

    async def test_get_of_unknown_build_raises_not_found(self, store: JobStore) -> None:
        with pytest.raises(NotFound):
            await store.get_build(BuildId("bld-missing"))

    @pytest.mark.parametrize("name", ["a..b", "x" * 129, "caf\u00e9", "\u0661\u0662", "-a", ""])
    async def test_create_refuses_a_name_outside_the_one_name_rule(
        self, store: JobStore, name: str
    ) -> None:
        build = make_build(names=("ok", name))
        with pytest.raises(ValueError, match="name"):
            await store.create_build(build)
        with pytest.raises(NotFound):
            await store.get_build(build.id)

    @pytest.mark.parametrize("bad", ["\ud800", "a\x00b"])
    async def test_every_write_refuses_text_no_store_can_keep(
        self, store: JobStore, bad: str
    ) -> None:
        poisoned = make_build(names=("a",))
        poisoned = poisoned.evolve(spec=BuildSpec(backend_selector={"tier": bad}))
        with pytest.raises(ValueError, match="backend_selector"):
            await store.create_build(poisoned)
        with pytest.raises(NotFound):
            await store.get_build(poisoned.id)
        build = make_build(names=("a",))
        await store.create_build(build)
        with pytest.raises(ValueError, match="error"):
            await store.transition(build.id, "a", PackageStatus.FAILED, error=f"no backend {bad}")
        with pytest.raises(ValueError, match="reason"):
            await store.update_package(build.id, "a", reason=bad)
        with pytest.raises(ValueError, match="labels"):
            await store.save_backend(
                StoredBackend(addr="tcp://b:1", arch="x86_64", labels={"k": bad}, max_jobs=1)
            )
        got = await store.get_build(build.id)
        assert got.packages[0].status is PackageStatus.PENDING and not got.packages[0].reason
        assert await store.list_backends() == []

    async def test_create_with_a_taken_id_fails_and_keeps_the_first(self, store: JobStore) -> None:
        first = make_build(names=("a",))
        await store.create_build(first)
        second = make_build(names=("b", "c"), status=BuildStatus.RUNNING)

        with pytest.raises(StoreConflict):
            await store.create_build(second)

        assert await store.get_build(first.id) == first

    async def test_create_is_all_or_nothing(self, store: JobStore) -> None:
        build = make_build(names=("a", "b"))
        doubled = build.evolve(packages=(*build.packages, make_job(build.id, "a", 2)))

        with pytest.raises(StoreConflict):
            await store.create_build(doubled)

        with pytest.raises(NotFound):
            await store.get_build(build.id)
        assert (await store.list_builds(limit=10)).builds == []

    async def test_create_and_get_copy_values(self, store: JobStore) -> None:
        env = {"A": "1"}
        build = make_build().evolve(spec=BuildSpec(options=StepOptions(env=env)))
        await store.create_build(build)
        env["A"] = "mutated"

        got = await store.get_build(build.id)
        assert got.spec == BuildSpec(options=StepOptions(env={"A": "1"}))
        assert isinstance(got.spec, BuildSpec)
        with pytest.raises(TypeError):  # a spec is frozen, its mappings too
            got.spec.options.env["A"] = "again"  # type: ignore[index]
        assert (await store.get_build(build.id)).spec.options.env == {"A": "1"}

    async def test_a_build_without_packages(self, store: JobStore) -> None:
        build = make_build(names=())
        await store.create_build(build)
        assert await store.get_build(build.id) == build

    # list_builds

    async def _create_many(self, store: JobStore, count: int) -> list[Build]:
        """``count`` builds; every three share a ``created_at`` (ties broken by id)."""
        made = []
        for i in range(count):
            build = make_build(
                f"bld-{i:04d}",
                names=(f"p{i}",),
                created_at=T0 + timedelta(seconds=i // 3),
                status=BuildStatus.RUNNING if i % 2 else BuildStatus.PENDING,
            )
            await store.create_build(build)
            made.append(build)
        return made

    @staticmethod
    def _newest_first(builds: Sequence[Build]) -> list[BuildId]:
        return [b.id for b in sorted(builds, key=lambda b: (b.created_at, b.id), reverse=True)]

    async def test_list_builds_newest_first_with_limit(self, store: JobStore) -> None:
        made = await self._create_many(store, 7)

        page = await store.list_builds(limit=4)

        assert [b.id for b in page.builds] == self._newest_first(made)[:4]
        assert page.next_cursor is not None
        assert page.builds[0] == made[6]  # packages included

    async def test_list_builds_without_packages_counts_them(self, store: JobStore) -> None:
        made = await self._create_many(store, 3)
        big = make_build("bld-9999", names=("a", "b", "c"), created_at=T0 + timedelta(hours=1))
        await store.create_build(big)
        await store.transition(big.id, "a", PackageStatus.RUNNING)

        page = await store.list_builds(limit=2, packages=False)

        assert [b.id for b in page.builds] == [big.id, self._newest_first(made)[0]]
        assert all(b.packages == () for b in page.builds)
        assert page.builds[0].status == big.status
        assert page.counts[big.id] == {PackageStatus.RUNNING: 1, PackageStatus.PENDING: 2}
        assert page.counts[page.builds[1].id] == {PackageStatus.PENDING: 1}
        assert page.next_cursor is not None

    async def test_list_builds_pages_cover_everything_once(self, store: JobStore) -> None:
        made = await self._create_many(store, 11)
        for limit in (1, 2, 3, 11, 12):
            seen: list[BuildId] = []
            cursor: str | None = None
            while True:
                page = await store.list_builds(limit=limit, cursor=cursor)
                assert len(page.builds) <= limit
                seen.extend(b.id for b in page.builds)
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert seen == self._newest_first(made), limit

    async def test_list_builds_by_status(self, store: JobStore) -> None:
        made = await self._create_many(store, 9)
        running = [b for b in made if b.status == BuildStatus.RUNNING]

        first = await store.list_builds(limit=2, status=BuildStatus.RUNNING)
        assert first.next_cursor is not None
        rest = await store.list_builds(
            limit=10, cursor=first.next_cursor, status=BuildStatus.RUNNING
        )

        assert [b.id for b in (*first.builds, *rest.builds)] == self._newest_first(running)
        assert rest.next_cursor is None
        assert (await store.list_builds(limit=5, status=BuildStatus.SUCCESS)).builds == []

    async def test_list_builds_on_an_empty_store(self, store: JobStore) -> None:
        page = await store.list_builds(limit=3)
        assert page.builds == []
        assert page.next_cursor is None

    async def test_list_builds_refuses_bad_cursor_and_limit(self, store: JobStore) -> None:
        with pytest.raises(RequestError):
            await store.list_builds(limit=3, cursor="not a cursor")
        with pytest.raises(ValueError):
            await store.list_builds(limit=0)

    # transition

    async def _create_pairs(self, store: JobStore, pairs: Sequence[tuple[Any, Any]]) -> BuildId:
        """One build with a package ``<from>-to-<to>`` in state ``from`` for each pair."""
        build_id = BuildId("bld-moves")
        jobs = tuple(
            make_job(build_id, _pair_name(source, target), seq, source)
            for seq, (source, target) in enumerate(pairs)
        )
        await store.create_build(make_build(build_id, names=()).evolve(packages=jobs))
        return build_id

    async def test_every_allowed_move_works(self, store: JobStore) -> None:
        build_id = await self._create_pairs(store, ALLOWED_MOVES)
        for source, target in ALLOWED_MOVES:
            name = _pair_name(source, target)
            moved = await store.transition(build_id, name, target, reason=f"to {target}")
            assert (moved.status, moved.reason) == (target, f"to {target}")
        got = await store.get_build(build_id)
        assert {j.name: j.status for j in got.packages} == {
            _pair_name(s, t): t for s, t in ALLOWED_MOVES
        }
        assert all(j.reason == f"to {j.status}" for j in got.packages)

    async def test_every_refused_move_raises_and_changes_nothing(self, store: JobStore) -> None:
        build_id = await self._create_pairs(store, REFUSED_MOVES)
        before = await store.get_build(build_id)
        for source, target in REFUSED_MOVES:
            name = _pair_name(source, target)
            with pytest.raises(InvalidTransition) as caught:
                await store.transition(build_id, name, target, reason="changed", error="x")
            message = str(caught.value)
            for part in (build_id, name, source.value, target.value):
                assert part in message
        assert await store.get_build(build_id) == before

    async def test_expect_narrows_the_allowed_states(self, store: JobStore) -> None:
        build = make_build(names=("a",))
        await store.create_build(build)
        only_blocked = frozenset({PackageStatus.BLOCKED})

        with pytest.raises(InvalidTransition):
            await store.transition(build.id, "a", PackageStatus.CANCELLED, expect=only_blocked)
        assert (await store.get_build(build.id)).packages[0].status == PackageStatus.PENDING

        # expect cannot widen the table either
        with pytest.raises(InvalidTransition):
            await store.transition(
                build.id, "a", PackageStatus.SKIPPED, expect=frozenset({PackageStatus.PENDING})
            )

        moved = await store.transition(
            build.id, "a", PackageStatus.CANCELLED, expect=frozenset({PackageStatus.PENDING})
        )
        assert moved.status == PackageStatus.CANCELLED

    async def test_transition_of_unknown_package_raises_not_found(self, store: JobStore) -> None:
        build = make_build(names=("a",))
        await store.create_build(build)
        with pytest.raises(NotFound):
            await store.transition(build.id, "nope", PackageStatus.RUNNING)
        with pytest.raises(NotFound):
            await store.transition(BuildId("bld-nope"), "a", PackageStatus.RUNNING)

    async def test_transition_sets_fields_in_the_same_update(self, store: JobStore) -> None:
        build = make_build(names=("a", "b"))
        await store.create_build(build)
        backend = Backend(addr="tcp://d:1", arch="x86_64", labels={"zone": "1"})
        attempt = Attempt(number=1, backend=backend.addr, started_at=T0)

        moved = await store.transition(
            build.id,
            "a",
            PackageStatus.RUNNING,
            started_at=T0,
            backend=backend,
            lease_owner="replica-1",
            lease_expires=T0 + timedelta(seconds=30),
            attempts=(attempt,),
            priority=7.0,
        )

        expected = build.packages[0].evolve(
            status=PackageStatus.RUNNING,
            started_at=T0,
            backend=backend,
            lease_owner="replica-1",
            lease_expires=T0 + timedelta(seconds=30),
            attempts=(attempt,),
            priority=7.0,
        )
        assert moved == expected
        got = await store.get_build(build.id)
        assert got.packages == (expected, build.packages[1])

    async def test_transition_refuses_protected_and_unknown_fields(self, store: JobStore) -> None:
        build = make_build(names=("a",))
        await store.create_build(build)
        for bad in ({"status": PackageStatus.SUCCESS}, {"build_id": "x"}, {"colour": "red"}):
            with pytest.raises(TypeError):
                await store.transition(build.id, "a", PackageStatus.RUNNING, **bad)
        assert await store.get_build(build.id) == build

    async def test_concurrent_claims_have_one_winner(self, store: JobStore) -> None:
        build = make_build(names=("a",))
        await store.create_build(build)

        async def claim(owner: str) -> str | None:
            try:
                await store.transition(build.id, "a", PackageStatus.RUNNING, lease_owner=owner)
            except InvalidTransition:
                return None
            return owner

        results = await asyncio.gather(*(claim(f"owner-{i}") for i in range(16)))

        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        job = (await store.get_build(build.id)).packages[0]
        assert (job.status, job.lease_owner) == (PackageStatus.RUNNING, winners[0])

    # transition_many

    async def test_transition_many_moves_those_allowed_and_leaves_the_rest(
        self, store: JobStore
    ) -> None:
        build = make_build(names=())
        jobs = (
            make_job(build.id, "b1", 0, PackageStatus.BLOCKED),
            make_job(build.id, "run", 1, PackageStatus.RUNNING),
            make_job(build.id, "b2", 2, PackageStatus.BLOCKED),
            make_job(build.id, "done", 3, PackageStatus.SUCCESS),
            make_job(build.id, "b3", 4, PackageStatus.BLOCKED),
        )
        await store.create_build(build.evolve(packages=jobs))
        only_blocked = frozenset({PackageStatus.BLOCKED})

        moved = await store.transition_many(
            build.id,
            ["b2", "done", "run", "b1", "nope", "b1"],
            PackageStatus.PENDING,
            expect=only_blocked,
            reason="ready",
        )

        ready = {"status": PackageStatus.PENDING, "reason": "ready"}
        assert list(moved) == [jobs[0].evolve(**ready), jobs[2].evolve(**ready)]
        got = (await store.get_build(build.id)).packages
        assert got == (moved[0], jobs[1], moved[1], jobs[3], jobs[4])
        # the table still rules: running cannot go back to pending unless expected so
        assert await store.transition_many(build.id, ["run"], PackageStatus.BLOCKED) == []
        assert await store.transition_many(build.id, [], PackageStatus.PENDING) == []

    async def test_transition_many_refuses_bad_fields_and_unknown_builds(
        self, store: JobStore
    ) -> None:
        build = make_build(names=("a", "b"), package_status=PackageStatus.BLOCKED)
        await store.create_build(build)
        with pytest.raises(TypeError):
            await store.transition_many(build.id, ["a"], PackageStatus.PENDING, colour="red")
        with pytest.raises(ValueError):
            naive = datetime(2025, 1, 1)
            await store.transition_many(
                build.id, ["a", "b"], PackageStatus.PENDING, finished_at=naive
            )
        assert await store.get_build(build.id) == build
        with pytest.raises(NotFound):
            await store.transition_many(BuildId("bld-nope"), ["a"], PackageStatus.PENDING)

    # apply

    async def test_apply_answers_each_move_and_a_refusal_undoes_nothing(
        self, store: JobStore
    ) -> None:
        one = make_build("bld-0000000000000001", names=("a", "b", "c"))
        two = make_build(
            "bld-0000000000000002", names=("x", "y"), package_status=PackageStatus.BLOCKED
        )
        await store.create_build(one)
        await store.create_build(two)
        running = frozenset({PackageStatus.RUNNING})

        results = await store.apply(
            [
                Move(build_id=one.id, name="b", to=PackageStatus.RUNNING, fields={"reason": ""}),
                # refused: pending cannot succeed, and "c" is not running
                Move(build_id=one.id, name="a", to=PackageStatus.SUCCESS),
                Move(build_id=one.id, name="c", to=PackageStatus.FAILED, expect=running),
                Move(build_id=two.id, name="y", to=PackageStatus.PENDING, fields={"reason": "r"}),
                Move(build_id=one.id, name="nope", to=PackageStatus.RUNNING),
                Move(build_id=BuildId("bld-nope"), name="a", to=PackageStatus.RUNNING),
                Move(
                    build_id=one.id,
                    name="a",
                    to=PackageStatus.RUNNING,
                    fields={"lease_owner": "me", "lease_expires": T0, "started_at": T0},
                ),
            ]
        )

        a = one.packages[0].evolve(
            status=PackageStatus.RUNNING, lease_owner="me", lease_expires=T0, started_at=T0
        )
        b = one.packages[1].evolve(status=PackageStatus.RUNNING, reason="")
        y = two.packages[1].evolve(status=PackageStatus.PENDING, reason="r")
        assert list(results) == [b, None, None, y, None, None, a]
        assert (await store.get_build(one.id)).packages == (a, b, one.packages[2])
        assert (await store.get_build(two.id)).packages == (two.packages[0], y)
        assert await store.apply([]) == []

    async def test_apply_gives_each_package_its_own_values(self, store: JobStore) -> None:
        names = [f"p{i:03}" for i in range(150)]
        build = make_build(names=names, package_status=PackageStatus.RUNNING)
        await store.create_build(build)
        ends = [PackageStatus.SUCCESS, PackageStatus.FAILED, PackageStatus.CANCELLED]
        moves = []
        for i, name in enumerate(names):
            at = (T0 + timedelta(seconds=i)).astimezone(CEST if i % 2 else UTC)
            moves.append(
                Move(
                    build_id=build.id,
                    name=name,
                    to=ends[i % 3],
                    expect=frozenset({PackageStatus.RUNNING}),
                    fields={
                        "finished_at": at,
                        "error": "" if i % 3 == 0 else f"error {i}",
                        "lease_owner": "",
                        "lease_expires": None if i % 5 else at,
                        "backend": None
                        if i % 4
                        else Backend(addr=f"tcp://b{i}:1", arch="x86_64", labels={"n": str(i)}),
                        "attempts": (
                            Attempt(number=1, backend=f"tcp://b{i}:1", started_at=T0),
                            Attempt(number=2, backend="tcp://x:1", started_at=at, error=str(i)),
                        )[: 1 + i % 2],
                        "cached": i % 7 == 0,
                    },
                )
            )

        results = await store.apply(moves)

        expected = [
            job.evolve(status=move.to, **move.fields)
            for job, move in zip(build.packages, moves, strict=True)
        ]
        assert list(results) == expected
        assert (await store.get_build(build.id)).packages == tuple(expected)

    async def test_apply_moves_one_package_twice_in_order(self, store: JobStore) -> None:
        build = make_build(names=("a",))
        await store.create_build(build)
        running = frozenset({PackageStatus.RUNNING})

        results = await store.apply(
            [
                Move(build_id=build.id, name="a", to=PackageStatus.RUNNING),
                Move(build_id=build.id, name="a", to=PackageStatus.SUCCESS, expect=running),
                Move(build_id=build.id, name="a", to=PackageStatus.FAILED, expect=running),
            ]
        )

        first, second, third = results
        assert first is not None and first.status is PackageStatus.RUNNING
        assert second is not None and second.status is PackageStatus.SUCCESS
        assert third is None
        assert (await store.get_build(build.id)).packages == (second,)

    async def test_a_finish_by_a_stale_owner_is_refused_and_changes_nothing(
        self, store: JobStore
    ) -> None:
        """Move.owner / transition(owner=): a replica whose lease expired and whose
        package another replica started again cannot write its result over that run."""
        build = make_build(names=("a", "b", "c"), package_status=PackageStatus.RUNNING)
        await store.create_build(build)
        for name in ("a", "b", "c"):
            await store.update_package(build.id, name, lease_owner="new", lease_expires=T0)
        before = await store.get_build(build.id)
        running = frozenset({PackageStatus.RUNNING})
        done = {"finished_at": T0, "error": "", "lease_owner": "", "lease_expires": None}

        results = await store.apply(
            [
                Move(
                    build_id=build.id,
                    name=n,
                    to=PackageStatus.SUCCESS,
                    expect=running,
                    owner="old",
                    fields=done,
                )
                for n in ("a", "b")
            ]
            + [
                Move(
                    build_id=build.id,
                    name="c",
                    to=PackageStatus.SUCCESS,
                    expect=running,
                    owner="new",
                    fields=done,
                )
            ]
        )
        assert results[:2] == [None, None]
        assert results[2] is not None and results[2].status is PackageStatus.SUCCESS
        with pytest.raises(InvalidTransition):
            await store.transition(
                build.id,
                "a",
                PackageStatus.PENDING,
                expect=running,
                owner="old",
                lease_owner="",
                lease_expires=None,
            )
        after = await store.get_build(build.id)
        assert after.packages[:2] == before.packages[:2]
        assert after.packages[2] == results[2]
        failed = await store.transition(
            build.id, "a", PackageStatus.FAILED, expect=running, owner="new", error="x"
        )
        assert failed.status is PackageStatus.FAILED and failed.error == "x"

    async def test_apply_with_a_bad_value_writes_nothing(self, store: JobStore) -> None:
        build = make_build(names=("a", "b"))
        await store.create_build(build)
        good = Move(build_id=build.id, name="a", to=PackageStatus.RUNNING)
        with pytest.raises(TypeError):
            await store.apply(
                [good, Move(build_id=build.id, name="b", to=PackageStatus.RUNNING, fields={"x": 1})]
            )
        naive = {"started_at": datetime(2025, 1, 1)}
        with pytest.raises(ValueError):
            await store.apply(
                [good, Move(build_id=build.id, name="b", to=PackageStatus.RUNNING, fields=naive)]
            )
        with pytest.raises(ValueError):
            await store.apply([good, Move(build_id=build.id, name="b", to="flying")])  # type: ignore[arg-type]
        assert await store.get_build(build.id) == build

    async def test_apply_round_trips_every_column(self, store: JobStore) -> None:
        # what a move sets comes back as a fresh read gives it: text, numbers past 32
        # bits, JSON (dependencies, backend labels, attempts), NULLs, aware datetimes
        build = make_build(names=("a", "b"))
        await store.create_build(build)
        at = datetime(2025, 3, 1, 14, 30, 5, 123_456, tzinfo=CEST)
        attempts = (
            Attempt(number=2, backend="tcp://b:1", started_at=at),
            Attempt(
                number=1,
                backend="tcp://c:1",
                started_at=T0,
                finished_at=at,
                error="fault",
                log_path="logs/a/0.log",
            ),
        )
        every: dict[str, Any] = {
            "config_yaml": "package:\n  name: ä ☃\n",
            "arch": "aarch64",
            "dependencies": ("x", "y-ü"),
            "priority": 2.5,
            "reason": "why ✓",
            "error": "",
            "started_at": at,
            "finished_at": None,
            "log_path": "logs/a/1.log",
            "output_path": "out/a",
            "cached": True,
            "input_digest": "sha256:" + "0" * 64,
            "backend": Backend(addr="tcp://b:1", arch="aarch64", labels={"k": "v", "ü": "☃"}),
            "lease_owner": "owner-1",
            "lease_expires": at + timedelta(seconds=30),
            "attempts": attempts,
            "cpu_millis": 16_000,
            "memory_bytes": 64 * 2**30,
        }
        one = Move(build_id=build.id, name="a", to=PackageStatus.RUNNING, fields=every)
        # "b" in one statement with "a" but its own values (a CASE per row)
        other = {**every, "lease_expires": None, "backend": None, "memory_bytes": 1}
        two = Move(build_id=build.id, name="b", to=PackageStatus.RUNNING, fields=other)

        alone = await store.apply([one])
        moved_a = alone[0]
        together = await store.apply(
            [
                Move(build_id=build.id, name="a", to=PackageStatus.SUCCESS, fields={}),
                two,
            ]
        )
        moved_b = together[1]

        expected_a = build.packages[0].evolve(
            status=PackageStatus.RUNNING,
            **{**every, "attempts": tuple(sorted(attempts, key=lambda a: a.number))},
        )
        assert moved_a == expected_a
        assert moved_b == build.packages[1].evolve(
            status=PackageStatus.RUNNING,
            **{**other, "attempts": expected_a.attempts},
        )
        assert moved_a is not None and moved_a.started_at is not None
        assert moved_a.started_at.utcoffset() is not None
        assert moved_a.lease_expires is not None
        assert moved_a.lease_expires.utcoffset() is not None
        assert type(moved_a.priority) is float and type(moved_a.cached) is bool
        assert type(moved_a.dependencies) is tuple
        # another path reads the same rows alike
        assert await store.update_package(build.id, "b") == moved_b
        assert (await store.get_build(build.id)).packages == (
            expected_a.evolve(status=PackageStatus.SUCCESS),
            moved_b,
        )

    async def test_apply_names_where_text_it_refuses_sits(self, store: JobStore) -> None:
        build = make_build(names=("a",))
        await store.create_build(build)
        bad = (Attempt(number=1, backend="tcp://b:1", started_at=T0, error="a\x00b"),)
        with pytest.raises(ValueError, match=r"attempts'\]\[0\]\.error: contains a NUL"):
            await store.apply(
                [
                    Move(
                        build_id=build.id,
                        name="a",
                        to=PackageStatus.RUNNING,
                        fields={"attempts": bad},
                    )
                ]
            )
        labels = Backend(addr="tcp://b:1", arch="x86_64", labels={"k\ud800": "v"})
        with pytest.raises(ValueError, match=r"\.labels key: is not valid Unicode"):
            await store.apply(
                [
                    Move(
                        build_id=build.id,
                        name="a",
                        to=PackageStatus.RUNNING,
                        fields={"backend": labels},
                    )
                ]
            )
        assert await store.get_build(build.id) == build

    async def test_concurrent_applies_give_each_package_one_winner(self, store: JobStore) -> None:
        names = ("a", "b", "c", "d")
        build = make_build(names=names)
        await store.create_build(build)

        async def claim(owner: int) -> list[str]:
            order = names[owner % 4 :] + names[: owner % 4]  # each in its own order
            moves = [
                Move(
                    build_id=build.id,
                    name=name,
                    to=PackageStatus.RUNNING,
                    expect=frozenset({PackageStatus.PENDING}),
                    fields={"lease_owner": f"owner-{owner}"},
                )
                for name in order
            ]
            results = await store.apply(moves)
            return [j.name for j in results if j is not None]

        won = await asyncio.gather(*(claim(i) for i in range(16)))

        winners = {name: [i for i, got in enumerate(won) if name in got] for name in names}
        assert all(len(w) == 1 for w in winners.values()), winners
        for job in (await store.get_build(build.id)).packages:
            assert job.status is PackageStatus.RUNNING
            assert job.lease_owner == f"owner-{winners[job.name][0]}"

    # update_package and add_attempt

    async def test_update_package_sets_fields(self, store: JobStore) -> None:
        build = make_build(names=("a", "b"))
        await store.create_build(build)

        updated = await store.update_package(
            build.id, "b", reason="waiting for a slot", priority=3.5, log_path="logs/b.log"
        )

        expected = build.packages[1].evolve(
            reason="waiting for a slot", priority=3.5, log_path="logs/b.log"
        )
        assert updated == expected
        assert (await store.get_build(build.id)).packages == (build.packages[0], expected)
        assert await store.update_package(build.id, "a") == build.packages[0]

    async def test_update_package_refuses_status_and_unknown(self, store: JobStore) -> None:
        build = make_build(names=("a",))
        await store.create_build(build)
        with pytest.raises(TypeError):
            await store.update_package(build.id, "a", status=PackageStatus.SUCCESS)
        with pytest.raises(NotFound):
            await store.update_package(build.id, "zz", reason="x")
        with pytest.raises(NotFound):
            await store.update_package(BuildId("bld-zz"), "a", reason="x")

    async def test_add_attempt_appends_and_replaces_by_number(self, store: JobStore) -> None:
        build = make_build(names=("a", "b"))
        await store.create_build(build)
        first = Attempt(number=1, backend="tcp://a:1", started_at=T0)
        second = Attempt(number=2, backend="tcp://b:1", started_at=T0 + timedelta(minutes=1))
        finished = Attempt(
            number=1,
            backend="tcp://a:1",
            started_at=T0,
            finished_at=T0 + timedelta(seconds=5),
            error="daemon went away",
            log_path="logs/a.1.log",
        )

        await store.add_attempt(build.id, "a", second)
        await store.add_attempt(build.id, "a", first)
        await store.add_attempt(build.id, "a", finished)

        got = await store.get_build(build.id)
        assert got.packages[0].attempts == (finished, second)
        assert got.packages[1].attempts == ()
        with pytest.raises(NotFound):
            await store.add_attempt(build.id, "zz", first)

    # update_build and unfinished_builds

    async def test_update_build_sets_fields(self, store: JobStore) -> None:
        build = make_build(names=("a",))
        await store.create_build(build)

        updated = await store.update_build(
            build.id,
            status=BuildStatus.RUNNING,
            started_at=T0.astimezone(CEST),
            cancel_requested=True,
        )

        expected = build.evolve(status=BuildStatus.RUNNING, started_at=T0, cancel_requested=True)
        assert updated == expected
        assert updated.started_at is not None
        assert updated.started_at.utcoffset() == timedelta(0)
        assert await store.get_build(build.id) == expected

        done = await store.update_build(
            build.id, status=BuildStatus.CANCELLED, finished_at=T0 + timedelta(seconds=3)
        )
        assert (done.status, done.finished_at) == (
            BuildStatus.CANCELLED,
            T0 + timedelta(seconds=3),
        )

    async def test_update_build_without_packages_still_keeps_them(self, store: JobStore) -> None:
        build = make_build(names=("a", "b"))
        await store.create_build(build)

        updated = await store.update_build(
            build.id, with_packages=False, status=BuildStatus.RUNNING, started_at=T0
        )

        expected = build.evolve(status=BuildStatus.RUNNING, started_at=T0)
        assert updated == expected.evolve(packages=())
        assert await store.get_build(build.id) == expected
        with pytest.raises(NotFound):
            await store.update_build(BuildId("bld-zz"), with_packages=False, status="running")
        with pytest.raises(TypeError):
            await store.update_build(build.id, with_packages=False, packages=())

    async def test_update_build_refuses_unknown_and_protected(self, store: JobStore) -> None:
        build = make_build()
        await store.create_build(build)
        with pytest.raises(NotFound):
            await store.update_build(BuildId("bld-zz"), status=BuildStatus.RUNNING)
        for bad in ({"id": "bld-other"}, {"packages": ()}, {"colour": "red"}):
            with pytest.raises(TypeError):
                await store.update_build(build.id, **bad)
        assert await store.get_build(build.id) == build

    async def test_unfinished_builds_are_pending_or_running_oldest_first(
        self, store: JobStore
    ) -> None:
        statuses = [
            BuildStatus.SUCCESS,
            BuildStatus.RUNNING,
            BuildStatus.FAILED,
            BuildStatus.PENDING,
            BuildStatus.PARTIAL,
            BuildStatus.CANCELLED,
            BuildStatus.RUNNING,
        ]
        made = []
        for i, status in enumerate(statuses):
            build = make_build(
                f"bld-{i:04d}",
                names=("a", "b"),
                status=status,
                created_at=T0 - timedelta(minutes=i),
            )
            await store.create_build(build)
            made.append(build)

        unfinished = await store.unfinished_builds()

        assert list(unfinished) == [made[6], made[3], made[1]]

    # leases

    async def test_renew_extends_only_the_owners_running_leases(self, store: JobStore) -> None:
        old, new = T0 + timedelta(seconds=10), T0 + timedelta(seconds=60)
        build = make_build(names=())
        jobs = (
            make_job(
                build.id, "mine", 0, PackageStatus.RUNNING, lease_owner="r1", lease_expires=old
            ),
            make_job(
                build.id, "mine2", 1, PackageStatus.RUNNING, lease_owner="r1", lease_expires=old
            ),
            make_job(
                build.id, "theirs", 2, PackageStatus.RUNNING, lease_owner="r2", lease_expires=old
            ),
            make_job(
                build.id, "done", 3, PackageStatus.SUCCESS, lease_owner="r1", lease_expires=old
            ),
            make_job(build.id, "nobody", 4, PackageStatus.RUNNING),
        )
        await store.create_build(build.evolve(packages=jobs))

        assert await store.renew_leases("r1", new) == 2
        assert await store.renew_leases("r3", new) == 0

        got = {j.name: j.lease_expires for j in (await store.get_build(build.id)).packages}
        assert got == {"mine": new, "mine2": new, "theirs": old, "done": old, "nobody": None}

    async def test_expire_moves_expired_running_packages_to_pending(self, store: JobStore) -> None:
        now = T0
        build = make_build(names=())
        expired_at = now - timedelta(seconds=1)
        running = PackageStatus.RUNNING

        def leased(name: str, seq: int, owner: str, expires: datetime, **kw: Any) -> PackageJob:
            return make_job(
                build.id, name, seq, running, lease_owner=owner, lease_expires=expires, **kw
            )

        jobs = (
            leased("late", 0, "r1", expired_at),
            leased("edge", 1, "r1", now),
            leased("fresh", 2, "r2", now + timedelta(seconds=5)),
            make_job(
                build.id,
                "ended",
                3,
                PackageStatus.SUCCESS,
                lease_owner="r1",
                lease_expires=expired_at,
            ),
            make_job(build.id, "unleased", 4, running),
            leased("late2", 5, "r2", expired_at, started_at=expired_at),
        )
        await store.create_build(build.evolve(packages=jobs))

        expired = await store.expire_leases(now)

        requeued = {
            "status": PackageStatus.PENDING,
            "lease_owner": "",
            "lease_expires": None,
            "reason": LEASE_EXPIRED_REASON,
        }
        assert list(expired) == [jobs[0].evolve(**requeued), jobs[5].evolve(**requeued)]
        got = (await store.get_build(build.id)).packages
        assert got == (expired[0], *jobs[1:5], expired[1])
        assert await store.expire_leases(now) == []

    # durations

    async def test_durations_are_the_latest_successful_per_name(self, store: JobStore) -> None:
        def run(name: str, status: PackageStatus, start: int, seconds: int) -> PackageJob:
            begun = T0 + timedelta(minutes=start)
            return make_job(
                "",
                name,
                status=status,
                started_at=begun,
                finished_at=begun + timedelta(seconds=seconds),
            )

        history = [
            [run("a", PackageStatus.SUCCESS, 0, 10), run("b", PackageStatus.SUCCESS, 0, 20)],
            [run("a", PackageStatus.SUCCESS, 10, 30), run("b", PackageStatus.FAILED, 10, 5)],
            [run("a", PackageStatus.FAILED, 20, 1), run("c", PackageStatus.RUNNING, 20, 7)],
        ]
        for i, jobs in enumerate(history):
            build_id = BuildId(f"bld-{i:04d}")
            packages = tuple(j.evolve(build_id=build_id, seq=seq) for seq, j in enumerate(jobs))
            await store.create_build(make_build(build_id).evolve(packages=packages))

        assert await store.durations(["a", "b", "c", "d"]) == {"a": 30.0, "b": 20.0}
        assert await store.durations(["b"]) == {"b": 20.0}
        assert await store.durations([]) == {}

    # runtime backends

    async def test_backends_save_replace_delete_in_added_order(self, store: JobStore) -> None:
        one = StoredBackend(addr="tcp://1:1", arch="x86_64", labels={}, max_jobs=2)
        two = StoredBackend(addr="tcp://2:1", arch="aarch64", labels={"a": "b"}, max_jobs=4)
        three = StoredBackend(addr="tcp://3:1", arch="x86_64", labels={}, max_jobs=1)
        assert list(await store.list_backends()) == []

        for backend in (two, one, three):
            await store.save_backend(backend)
        assert list(await store.list_backends()) == [two, one, three]

        replaced = StoredBackend(addr=one.addr, arch="riscv64", labels={"x": "y"}, max_jobs=9)
        await store.save_backend(replaced)
        assert list(await store.list_backends()) == [two, replaced, three]

        await store.delete_backend(two.addr)
        await store.delete_backend("tcp://never:1")
        assert list(await store.list_backends()) == [replaced, three]

        await store.save_backend(two)
        assert list(await store.list_backends()) == [replaced, three, two]

    async def test_a_backends_tls_settings_are_kept_whole(self, store: JobStore) -> None:
        tls = ClientTLS(
            ca_cert=b"-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n",
            cert=b"-----BEGIN CERTIFICATE-----\nleaf\n-----END CERTIFICATE-----\n",
            key=b"-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n",
            server_name="buildkit.internal",
        )
        ca_only = ClientTLS(ca_cert=tls.ca_cert)
        backends = [
            StoredBackend(addr="tcp://tls:1", arch="x86_64", labels={}, max_jobs=2, tls=tls),
            StoredBackend(addr="tcp://ca:1", arch="x86_64", labels={}, max_jobs=2, tls=ca_only),
            StoredBackend(addr="tcp://plain:1", arch="x86_64", labels={}, max_jobs=2),
        ]
        for backend in backends:
            await store.save_backend(backend)
        assert list(await store.list_backends()) == backends

        plain_again = StoredBackend(addr="tcp://tls:1", arch="x86_64", labels={}, max_jobs=2)
        await store.save_backend(plain_again)
        assert (await store.list_backends())[0].tls is None

    async def test_a_backends_resources_are_kept(self, store: JobStore) -> None:
        sized = StoredBackend(
            addr="tcp://big:1",
            arch="x86_64",
            labels={},
            max_jobs=4,
            cpu_millis=96_000,
            memory_bytes=768 * 2**30,
        )
        cpu_only = StoredBackend(
            addr="tcp://cpu:1", arch="x86_64", labels={}, max_jobs=2, cpu_millis=500
        )
        undeclared = StoredBackend(addr="tcp://any:1", arch="x86_64", labels={}, max_jobs=2)
        for backend in (sized, cpu_only, undeclared):
            await store.save_backend(backend)
        assert list(await store.list_backends()) == [sized, cpu_only, undeclared]
        assert (await store.list_backends())[2].cpu_millis is None

    # lifecycle

    async def test_a_closed_store_refuses_calls(self, store: JobStore) -> None:
        await store.aclose()
        with pytest.raises(StoreError):
            await store.get_build(BuildId("bld-any"))
        await store.aclose()  # closing twice is fine
