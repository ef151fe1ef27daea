"""The backend pool end to end, on three real buildkitd daemons of its own: a package's
own failures never open a circuit; 200 packages on two backends with maxJobs 4 never run
more than 4 on either and use both; kill -9 of a daemon while it builds: the package
completes on another, the circuit opens, and after a restart it goes half-open, then
closed."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from melange2.farm import processes
from melange2.farm.local import FarmEnv, LocalFarm, make_token, start_server
from tests.conftest import TOOLS, require_real_parts
from tests.integration.test_server_e2e import by_name, config, submit, wait

pytestmark = pytest.mark.e2e


class PoolFarm:
    def __init__(self, root: Path) -> None:
        self.farm = LocalFarm(root / "farm", tools_dir=TOOLS, daemons=3)
        self.root = root
        self.env: FarmEnv
        self.url = ""
        self.token = ""

    def up(self) -> None:
        self.env = asyncio.run(self.farm.up())
        a, b, c = self.env.buildkit_addrs
        backends = self.root / "backends.yaml"
        entries = [(a, "{node: a, tier: bulk}"), (b, "{node: b, tier: bulk}"), (c, "{node: c}")]
        backends.write_text(
            "backends:\n"
            + "".join(
                f"  - addr: {addr}\n    arch: x86_64\n    maxJobs: 4\n    labels: {labels}\n"
                for addr, labels in entries
            )
            + "failureThreshold: 2\nrecoveryTimeout: 6s\n"
        )
        if not self.token:
            self.token = asyncio.run(make_token(self.root / "data", name="e2e-admin"))
        self.url = asyncio.run(
            start_server(
                self.env,
                data_dir=self.root / "data",
                output_dir=self.root / "output",
                pid_file=self.root / "server.pid",
                log_file=self.root / "server.log",
                backends_config=backends,
                port=processes.free_port(),
                extra_args=["--probe-interval", "0.5"],
            )
        )

    def down(self) -> None:
        processes.stop(self.root / "server.pid")
        self.farm.down()

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.url, timeout=30, headers=headers)

    def status(self, client: httpx.Client) -> dict[str, dict[str, Any]]:
        rows = client.get("/api/v1/backends/status").json()["backends"]
        return {row["addr"]: row for row in rows}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolFarm]:
    require_real_parts()
    farm = PoolFarm(tmp_path_factory.mktemp("pool"))
    try:
        farm.up()
        yield farm
    finally:
        farm.down()


def test_package_failures_do_not_open_the_circuit(pool: PoolFarm) -> None:
    a = pool.env.buildkit_addrs[0]
    with pool.client() as client:
        build_id = submit(
            client,
            configs=[config(f"bad-{i}", script="exit 1") for i in range(3)],
            backend_selector={"node": "a"},
        )
        build = wait(client, build_id)
        assert build["status"] == "failed"
        assert all(p["backend"]["addr"] == a for p in build["packages"])
        row = pool.status(client)[a]
        assert row["failures"] == 0 and row["circuitState"] == "closed" and not row["circuitOpen"]


def test_200_packages_on_two_backends_respect_max_jobs(pool: PoolFarm) -> None:
    a, b, c = pool.env.buildkit_addrs
    peak: dict[str, int] = {a: 0, b: 0, c: 0}
    done = threading.Event()

    def sample() -> None:
        with pool.client() as client:
            while not done.is_set():
                for addr, row in pool.status(client).items():
                    peak[addr] = max(peak[addr], row["activeJobs"])
                time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with pool.client() as client:
            build_id = submit(
                client,
                configs=[config(f"many-{i:03d}", script="sleep 0.2") for i in range(200)],
                backend_selector={"tier": "bulk"},
            )
            build = wait(client, build_id, timeout=900)
    finally:
        done.set()
        sampler.join()
    assert build["status"] == "success"
    used = {p["backend"]["addr"] for p in build["packages"]}
    assert used == {a, b}
    assert 0 < peak[a] <= 4 and 0 < peak[b] <= 4
    assert peak[c] == 0


def test_kill_9_of_a_daemon_fails_over_and_the_circuit_recovers(pool: PoolFarm) -> None:
    addrs = list(pool.env.buildkit_addrs)
    with pool.client() as client:
        build_id = submit(
            client,
            config_yaml=config("survivor", script="sleep 8"),
            backend_selector={"tier": "bulk"},
        )
        deadline = time.monotonic() + 60
        while True:
            pkg = by_name(client.get(f"/api/v1/builds/{build_id}").json())["survivor"]
            if pkg["status"] == "running" and pkg["backend"]:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1.5)  # the step is running on the daemon
        victim = pkg["backend"]["addr"]
        n = addrs.index(victim)
        pool.farm.kill_buildkitd(n)

        build = wait(client, build_id, timeout=180)
        assert build["status"] == "success", build
        attempts = build["packages"][0]["attempts"]
        assert len(attempts) >= 2
        assert attempts[0]["backend"] == victim and attempts[0]["error"]
        assert attempts[-1]["backend"] != victim

        seen: list[str] = []

        def watch_until(state: str, timeout: float) -> None:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                current = pool.status(client)[victim]["circuitState"]
                if not seen or seen[-1] != current:
                    seen.append(current)
                if current == state:
                    return
                time.sleep(0.05)
            raise AssertionError(f"circuit of {victim} never reached {state}: {seen}")

        watch_until("open", 30)
        assert pool.status(client)[victim]["circuitOpen"] is True
        asyncio.run(pool.farm.restart_buildkitd(n, victim))
        watch_until("half-open", 30)
        watch_until("closed", 30)
        assert seen[-3:] == ["open", "half-open", "closed"]
