"""Placement by resources end to end: a real melange-server on the test farm's two real
buildkitd daemons, each declared as 4 cpus (maxJobs 4). Packages asking 4 cpus never
run two at once on one backend (the store's started/finished times per backend never
overlap), the ones waiting say they wait for cpu, a package asking more than any backend
has fails at once naming the request and the largest backend, the dry run flags it, and
runtime backends take cpu and memory."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from melange2.farm.local import FarmEnv
from tests.integration.test_server_e2e import Server, by_name, config, submit, wait

pytestmark = pytest.mark.e2e


def asking(name: str, resources: str, *, script: str = "true", needs: tuple[str, ...] = ()) -> str:
    """A test config whose package asks ``resources`` (YAML lines under resources:)."""
    text = config(name, script=script, needs=needs)
    block = "".join(f"    {line}\n" for line in resources.splitlines())
    return text.replace("  description: ", f"  resources:\n{block}  description: ", 1)


@pytest.fixture(scope="module")
def server(farm: FarmEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(farm, tmp_path_factory.mktemp("placement"))
    srv.backends.write_text(
        "backends:\n"
        + "".join(
            f"  - addr: {a}\n    arch: x86_64\n    maxJobs: 4\n    cpu: 4\n    memory: 8Gi\n"
            for a in farm.buildkit_addrs
        )
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_four_cpu_packages_never_share_a_four_cpu_backend(server: Server) -> None:
    names = [f"quad-{i}" for i in range(6)]
    reasons: list[str] = []
    with server.client() as client:
        build_id = submit(client, configs=[asking(n, 'cpu: "4"', script="sleep 2") for n in names])
        deadline = time.monotonic() + 240
        build: dict[str, Any] = {}
        while time.monotonic() < deadline:
            build = client.get(f"/api/v1/builds/{build_id}").json()
            reasons += [p["reason"] for p in build["packages"] if p["status"] == "pending"]
            if build["status"] not in ("pending", "running"):
                break
            time.sleep(0.2)
    assert build["status"] == "success", build
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    for p in build["packages"]:
        assert p["resources"] == {"cpu": "4"}
        assert len(p["attempts"]) == 1
        spans.setdefault(p["backend"]["addr"], []).append(
            (datetime.fromisoformat(p["started_at"]), datetime.fromisoformat(p["finished_at"]))
        )
    assert set(spans) == set(server.farm.buildkit_addrs)  # both backends used
    for addr, ranges in spans.items():
        ranges.sort()
        for (_, end), (start, _) in itertools.pairwise(ranges):
            assert end <= start, f"two 4-cpu packages overlapped on {addr}: {ranges}"
    # the waiting ones said what they wait for, through the API
    assert any(r.startswith("waiting for cpu: needs 4, free at most 0 (backend ") for r in reasons)
    assert any("is kept for it" in r for r in reasons)


def test_a_package_asking_more_than_any_backend_fails_at_once(server: Server) -> None:
    with server.client() as client:
        build_id = submit(
            client,
            configs=[
                asking("too-big", 'cpu: "64"\nmemory: 16Gi'),
                asking("needs-big", 'cpu: "1"', needs=("too-big",)),
                asking("fits", 'cpu: "2"\nmemory: 1Gi', script="sleep 1"),
            ],
            mode="dag",
        )
        now = by_name(client.get(f"/api/v1/builds/{build_id}").json())
        expected = (
            "no available backend: package asks cpu 64, memory 16Gi: no backend for arch "
            "x86_64 has that much (largest: cpu 4, memory 8Gi)"
        )
        assert now["too-big"]["status"] == "failed"  # at once: "fits" may still run
        assert now["too-big"]["error"] == expected
        assert now["needs-big"]["status"] == "skipped"
        assert now["needs-big"]["error"] == "dependency too-big failed"
        done = by_name(wait(client, build_id))
        assert done["fits"]["status"] == "success"
        assert done["too-big"]["attempts"] == []


def test_the_dry_run_flags_what_never_fits(server: Server) -> None:
    with server.client() as client:
        resp = client.post(
            "/api/v1/builds",
            json={
                "configs": [asking("dry-huge", "memory: 1Ti"), asking("dry-ok", 'cpu: "4"')],
                "dry_run": True,
            },
        )
    assert resp.status_code == 200, resp.text
    plan = resp.json()
    assert plan["unplaceable"] == {
        "dry-huge": "package asks memory 1Ti: no backend for arch x86_64 has that much "
        "(largest: memory 8Gi)"
    }
    assert [p["name"] for p in plan["packages"]] == ["dry-ok"]
    assert plan["packages"][0]["resources"] == {"cpu": "4"}


def test_runtime_backends_take_cpu_and_memory(server: Server) -> None:
    addr = "tcp://127.0.0.1:1"  # nothing listens: it is only added, shown and removed
    with server.client() as client:
        bad = client.post("/api/v1/backends", json={"addr": addr, "arch": "aarch64", "cpu": "lots"})
        assert bad.status_code == 400
        assert "cpu" in bad.text and "'lots' is not a quantity" in bad.text
        resp = client.post(
            "/api/v1/backends",
            json={"addr": addr, "arch": "aarch64", "cpu": 12, "memory": "48Gi"},
        )
        assert resp.status_code == 201, resp.text
        assert (resp.json()["cpu"], resp.json()["memory"]) == ("12", "48Gi")
        rows = {r["addr"]: r for r in client.get("/api/v1/backends/status").json()["backends"]}
        assert (rows[addr]["cpu"], rows[addr]["memory"], rows[addr]["cpuInUse"]) == (
            "12",
            "48Gi",
            "0",
        )
        for a in server.farm.buildkit_addrs:
            assert (rows[a]["cpu"], rows[a]["memory"]) == ("4", "8Gi")
        assert client.request("DELETE", "/api/v1/backends", json={"addr": addr}).status_code == 204
