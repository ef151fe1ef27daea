"""Several melange-server replicas on one PostgreSQL database and one storage, end to
end: real server processes (``python -m melange2.server``), the real farm's two
buildkitd daemons, the session's PostgreSQL cluster (a fresh database per test, migrated
as the token is made), one output directory and one data directory shared as the local
farm shares them (``make farm-up FARM_STORE=postgres FARM_REPLICAS=3``).

1. Three replicas, a 30-package DAG submitted through the first, a running package's
   log followed through the second while the first runs it, the third killed with
   ``kill -9`` while it holds leases. Every package ends ``success``; no package ever
   ran twice at once (its attempts' intervals do not overlap; a package the dead replica
   held was retried only after its lease expired); no backend ever ran more than its
   ``maxJobs`` (a sweep over every attempt's interval); the repository lists every
   package and its index's signature verifies.
2. Two replicas, each given a build of 25 distinct packages at the same moment, all
   published into one arch: the index lists all 50, signed.

Which replica runs what comes from the database: a running package's ``lease_owner`` is
its replica's id, and the ``replicas`` table maps each id to the replica's advertised
URL. A test polls it (every 50 ms) to see who holds which package.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from melange2.apk import load_public_keys, read_index_tar_gz
from melange2.auth import Role
from melange2.farm import processes
from melange2.farm.local import FarmEnv, make_token, start_server
from melange2.ids import BuildId
from melange2.jobs import Attempt, PackageStatus
from melange2.store import PostgresStore

pytestmark = pytest.mark.e2e

MAX_JOBS = 3  #: per daemon: two daemons, six packages at once across every replica
LEASE_TTL = 3.0  #: seconds: a dead replica's packages are requeued this long after
ARCH = "x86_64"


def _help_has(flag: str) -> bool:
    from click.testing import CliRunner

    from melange2.server import cli

    out = CliRunner().invoke(cli, ["serve", "--help"], prog_name="melange-server").output
    return flag in out


@dataclass
class Replicas:
    """``count`` server processes on ``dsn``, sharing ``root/data`` and ``root/output``."""

    farm: FarmEnv
    root: Path
    dsn: str
    count: int
    urls: list[str] = field(default_factory=list)
    token: str = ""

    @property
    def store_args(self) -> list[str]:
        return ["--store", "postgres", "--postgres-dsn", self.dsn]

    def start(self) -> None:
        backends = self.root / "backends.yaml"
        backends.write_text(
            "backends:\n"
            + "".join(
                f"  - addr: {a}\n    arch: {ARCH}\n    maxJobs: {MAX_JOBS}\n"
                for a in self.farm.buildkit_addrs
            )
        )
        self.token = asyncio.run(
            make_token(
                self.root / "data", name="e2e-admin", role=Role.ADMIN, store_args=self.store_args
            )
        )
        advertise = _help_has("--advertise-url")

        async def one(n: int, port: int) -> str:
            extra = [*self.store_args, "--lease-ttl", str(LEASE_TTL)]
            if advertise:
                extra += ["--advertise-url", f"http://127.0.0.1:{port}"]
            return await start_server(
                self.farm,
                data_dir=self.root / "data",
                output_dir=self.root / "output",
                pid_file=self.pid_file(n),
                log_file=self.log_file(n),
                backends_config=backends,
                port=port,
                extra_args=extra,
            )

        async def all_of_them() -> list[str]:
            ports = [processes.free_port() for _ in range(self.count)]
            first = await one(0, ports[0])  # makes the signing key the others share
            rest = await asyncio.gather(*(one(n, ports[n]) for n in range(1, self.count)))
            return [first, *rest]

        self.urls = asyncio.run(all_of_them())

    def pid_file(self, n: int) -> Path:
        return self.root / f"replica-{n}.pid"

    def log_file(self, n: int) -> Path:
        return self.root / f"replica-{n}.log"

    def kill9(self, n: int) -> None:
        pid = processes.read_pid(self.pid_file(n))
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        while processes.pid_alive(pid):
            processes.stop(self.pid_file(n), grace=0.1)
            time.sleep(0.02)

    def stop(self) -> None:
        for n in range(self.count):
            processes.stop(self.pid_file(n))

    def client(self, n: int) -> httpx.Client:
        return httpx.Client(
            base_url=self.urls[n],
            timeout=30,
            headers={"Authorization": f"Bearer {self.token}"},
        )

    def logs(self) -> str:
        """Every replica's log tail, for a failure's message."""
        parts = []
        for n in range(self.count):
            try:
                text = self.log_file(n).read_text(errors="replace").splitlines()[-40:]
            except OSError:
                text = ["(no log)"]
            parts.append(f"--- replica {n} ({self.urls[n] if self.urls else '?'}):")
            parts += text
        return "\n".join(parts)

    def ids(self) -> dict[str, int]:
        """Each replica's id (its packages' ``lease_owner``) -> its index, from the
        replicas' own registration in the database (``replicas``: id, advertised URL)."""

        async def listed() -> dict[str, str]:
            async with await PostgresStore.open(self.dsn) as store:
                return {r.id: r.url for r in await store.list_replicas()}

        by_url = {u.rstrip("/"): n for n, u in enumerate(self.urls)}
        return {
            rid: by_url[url.rstrip("/")]
            for rid, url in asyncio.run(listed()).items()
            if url.rstrip("/") in by_url
        }


def _start(farm: FarmEnv, root: Path, dsn: str, count: int) -> Replicas:
    replicas = Replicas(farm=farm, root=root, dsn=dsn, count=count)
    try:
        replicas.start()
    except BaseException:
        replicas.stop()
        raise
    return replicas


def config(name: str, *, needs: Sequence[str] = (), lines: int = 0, sleep: float = 0.0) -> str:
    """A package whose step prints ``lines`` numbered lines ``sleep`` seconds apart."""
    packages = "\n".join(f"      - {p}" for p in ("busybox", *needs))
    script = [f"echo 'log line {i} of {name}'; sleep {sleep}" for i in range(1, lines + 1)]
    body = "\n".join(f"      {line}" for line in script) or "      true"
    return (
        f"package:\n  name: {name}\n  version: 1.0.0\n  description: replica test {name}\n"
        f"environment:\n  contents:\n    packages:\n{packages}\n"
        f"pipeline:\n  - name: build {name}\n    runs: |\n{body}\n"
        f"      mkdir -p ${{{{targets.destdir}}}}/usr/share/{name}\n"
        f"      echo {name} > ${{{{targets.destdir}}}}/usr/share/{name}/marker\n"
    )


def dag(prefix: str, layers: int, width: int) -> dict[str, tuple[str, ...]]:
    """``layers`` x ``width`` packages; each past the first layer needs one or two of the
    layer before it."""
    graph: dict[str, tuple[str, ...]] = {}
    for layer in range(layers):
        for i in range(width):
            name = f"{prefix}{layer}-{i}"
            if layer == 0:
                graph[name] = ()
            else:
                above = [f"{prefix}{layer - 1}-{i}", f"{prefix}{layer - 1}-{(i + 1) % width}"]
                graph[name] = tuple(above[: 1 + (i % 2)])
    return graph


@dataclass
class Seen:
    """What the poller saw: per package, each (owner, lease_expires) it held."""

    holders: dict[str, list[tuple[str, datetime]]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def running_by(self, owner: str) -> list[str]:
        return [name for name, held in self.holders.items() if held and held[-1][0] == owner]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def poll_leases(dsn: str, build_id: str, seen: Seen, now: dict[str, tuple[str, datetime]]) -> None:
    """Until ``seen.stop``: who holds which package's lease (``now``: the current ones)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not seen.stop.is_set():
            rows = conn.execute(
                "SELECT name, lease_owner, lease_expires FROM packages "
                "WHERE build_id = %s AND status = 'running' AND lease_owner <> ''",
                (build_id,),
            ).fetchall()
            current = {}
            for name, owner, expires in rows:
                current[name] = (owner, _utc(expires))
                held = seen.holders.setdefault(name, [])
                if not held or held[-1][0] != owner:
                    held.append((owner, _utc(expires)))
                else:
                    held[-1] = (owner, _utc(expires))
            now.clear()
            now.update(current)
            time.sleep(0.05)


def still_running(dsn: str, build_id: str, owner: str) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT name FROM packages WHERE build_id = %s AND status = 'running' "
            "AND lease_owner = %s",
            (build_id, owner),
        ).fetchall()
    return {name for (name,) in rows}


def follow_log(client: httpx.Client, build_id: str, name: str, out: list[str]) -> None:
    with client.stream(
        "GET", f"/api/v1/builds/{build_id}/packages/{name}/logs", params={"follow": "true"}
    ) as resp:
        out.append(f"status {resp.status_code}")
        for text in resp.iter_text():
            out.append(text)
    out.append("<end>")


def wait_build(client: httpx.Client, build_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        build: dict[str, Any] = client.get(f"/api/v1/builds/{build_id}").json()
        if build["status"] not in ("pending", "running"):
            return build
        time.sleep(0.3)
    raise AssertionError(f"build {build_id} did not finish in {timeout}s")


def stored_attempts(dsn: str, build_id: str) -> dict[str, tuple[Attempt, ...]]:
    async def read() -> dict[str, tuple[Attempt, ...]]:
        async with await PostgresStore.open(dsn) as store:
            build = await store.get_build(BuildId(build_id))
        assert all(p.status is PackageStatus.SUCCESS for p in build.packages), [
            (p.name, p.status, p.error) for p in build.packages
        ]
        return {p.name: p.attempts for p in build.packages}

    return asyncio.run(read())


def most_at_once(intervals: Sequence[tuple[datetime, datetime]]) -> int:
    """The largest number of ``intervals`` open at one instant (an end at the instant
    another starts does not overlap it)."""
    events = sorted([(end, -1) for _, end in intervals] + [(start, 1) for start, _ in intervals])
    most = current = 0
    for _, delta in events:
        current += delta
        most = max(most, current)
    return most


def check_repository(client: httpx.Client, names: set[str], tmp: Path) -> None:
    """The published index lists every name, with a signature by the farm's key."""
    key = client.get("/repo/keys/melange2.rsa.pub")
    assert key.status_code == 200, key.text
    (tmp / "melange2.rsa.pub").write_bytes(key.content)
    index_bytes = client.get(f"/repo/{ARCH}/APKINDEX.tar.gz")
    assert index_bytes.status_code == 200
    (tmp / "APKINDEX.tar.gz").write_bytes(index_bytes.content)
    keys = load_public_keys([tmp / "melange2.rsa.pub"])
    index = read_index_tar_gz(tmp / "APKINDEX.tar.gz", keys=keys)  # raises unless signed
    listed = {r.name for r in index.records}
    assert names <= listed, f"missing from the index: {sorted(names - listed)}"
    for name in names:
        apk = client.get(f"/repo/{ARCH}/{name}-1.0.0-r0.apk")
        assert apk.status_code == 200, name


def test_three_replicas_one_killed_while_it_builds(
    farm: FarmEnv, postgres_empty_dsn: str, tmp_path: Path
) -> None:
    graph = dag("r", layers=5, width=6)
    assert len(graph) == 30
    configs = [config(n, needs=d, lines=3, sleep=0.5) for n, d in graph.items()]
    replicas = _start(farm, tmp_path, postgres_empty_dsn, 3)
    seen = Seen()
    now: dict[str, tuple[str, datetime]] = {}
    followed: list[str] = []
    try:
        ids = replicas.ids()
        assert sorted(ids.values()) == [0, 1, 2], (
            f"the replicas table does not name every replica: {ids}\n{replicas.logs()}"
        )
        owner = {n: rid for rid, n in ids.items()}
        with replicas.client(0) as first:
            resp = first.post("/api/v1/builds", json={"configs": configs, "mode": "dag"})
            assert resp.status_code == 201, resp.text
            build_id = resp.json()["id"]
        with ThreadPoolExecutor(max_workers=2) as pool:
            poller = pool.submit(poll_leases, postgres_empty_dsn, build_id, seen, now)
            try:
                follower = None
                followed_name = ""
                killed_at: datetime | None = None
                held_at_kill: dict[str, datetime] = {}
                deadline = time.monotonic() + 240
                with replicas.client(1) as second:
                    while killed_at is None or follower is None:
                        assert time.monotonic() < deadline, (
                            f"no moment to act: follower {follower}, killed {killed_at}, "
                            f"seen {seen.holders}\n{replicas.logs()}"
                        )
                        assert not poller.done(), poller.exception()
                        current = dict(now)
                        if follower is None:
                            # a package the first replica runs, followed through the second
                            mine = [n for n, (o, _) in current.items() if o == owner[0]]
                            if mine:
                                follower = pool.submit(
                                    follow_log, second, build_id, mine[0], followed
                                )
                                followed_name = mine[0]
                        if killed_at is None:
                            theirs = {n: e for n, (o, e) in current.items() if o == owner[2]}
                            if theirs and follower is not None:
                                replicas.kill9(2)
                                killed_at = datetime.now(UTC)
                                # what it still held when it died (not what it had just
                                # finished between the last poll and the kill)
                                held_at_kill = {
                                    n: e
                                    for n, e in theirs.items()
                                    if n in still_running(postgres_empty_dsn, build_id, owner[2])
                                }
                        time.sleep(0.02)
                    with replicas.client(0) as first:
                        build = wait_build(first, build_id, timeout=300)
                    follower.result(timeout=60)
            finally:
                # also when an assertion fails above: the poller must end, or the
                # executor's shutdown waits for it forever
                seen.stop.set()
            poller.result(timeout=10)
        assert build["status"] == "success", (build, replicas.logs())
        statuses = {p["name"]: p["status"] for p in build["packages"]}
        assert statuses == dict.fromkeys(graph, "success")

        # the followed log came through the second replica while the first ran it
        assert followed[0] == "status 200", followed
        text = "".join(followed[1:-1])
        for i in (1, 2, 3):
            assert f"log line {i} of {followed_name}" in text, text
        assert followed[-1] == "<end>"
        assert seen.holders[followed_name][0][0] == owner[0]

        attempts = stored_attempts(postgres_empty_dsn, build_id)
        # no package ever ran twice at once: its attempts' intervals do not overlap (an
        # attempt the dead replica left open ended, at the latest, when it was killed)
        assert killed_at is not None
        for name, tries in attempts.items():
            spans = sorted((a.started_at, a.finished_at or killed_at) for a in tries)
            for (_, end), (start, _) in itertools.pairwise(spans):
                assert end <= start, f"{name} ran twice at once: {tries}"
        # what the dead replica held was retried, and only after its lease expired
        assert held_at_kill, "the third replica held no lease when killed"
        for name, expires in held_at_kill.items():
            ordered = sorted(attempts[name], key=lambda a: a.number)
            # the attempt the dead replica ran: the last one begun before the kill
            lost = [a for a in ordered if a.started_at <= killed_at][-1]
            retries = [a for a in ordered if a.number > lost.number]
            assert retries, f"{name}, held by the killed replica, was not retried: {ordered}"
            assert retries[0].started_at >= expires, (
                f"{name} restarted at {retries[0].started_at}, before the dead replica's "
                f"lease expired at {expires}: {ordered}"
            )
            assert seen.holders[name][-1][0] != owner[2]
        # no backend ran more than its maxJobs at once, across every replica
        per_backend: dict[str, list[tuple[datetime, datetime]]] = {}
        for tries in attempts.values():
            for a in tries:
                per_backend.setdefault(a.backend, []).append(
                    (a.started_at, a.finished_at or killed_at)
                )
        assert set(per_backend) <= set(farm.buildkit_addrs), per_backend.keys()
        for backend, spans in per_backend.items():
            assert most_at_once(spans) <= MAX_JOBS, f"{backend} ran more than {MAX_JOBS}"
        # the work was shared: more than one replica ran packages
        assert len({h[0] for held in seen.holders.values() for h in held}) >= 2

        with replicas.client(1) as second:
            check_repository(second, set(graph), tmp_path)
    finally:
        seen.stop.set()
        replicas.stop()


def test_two_replicas_publish_fifty_packages_into_one_arch(
    farm: FarmEnv, postgres_empty_dsn: str, tmp_path: Path
) -> None:
    replicas = _start(farm, tmp_path, postgres_empty_dsn, 2)
    try:
        names = {n: [f"pub{n}-{i:02d}" for i in range(25)] for n in (0, 1)}
        barrier = threading.Barrier(2)

        def submit(n: int) -> str:
            with replicas.client(n) as client:
                body = {"configs": [config(x) for x in names[n]], "mode": "dag"}
                barrier.wait()
                resp = client.post("/api/v1/builds", json=body)
                assert resp.status_code == 201, resp.text
                build_id: str = resp.json()["id"]
                return build_id

        with ThreadPoolExecutor(max_workers=2) as pool:
            build_ids = list(pool.map(submit, (0, 1)))
        for n, build_id in enumerate(build_ids):
            with replicas.client(n) as client:
                build = wait_build(client, build_id, timeout=300)
            assert build["status"] == "success", (build, replicas.logs())
        for n in (0, 1):
            with replicas.client(n) as client:
                check_repository(client, set(names[0]) | set(names[1]), tmp_path)
    finally:
        replicas.stop()
