"""melange-server end to end: a real server process, the real scheduler and store, real
buildkitd. Dependency order with dependencies really installed, a diamond, a failure
that skips its dependents, a cancel, bad input answered with clear 4xx, and the
kill -9 restart: every build completes and nothing stays running."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from melange2.auth import Role
from melange2.farm import processes
from melange2.farm.local import FarmEnv, make_token, start_server, store_args_of
from melange2.service.gitsource import is_commit

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples"


def config(name: str, *, needs: tuple[str, ...] = (), script: str = "true") -> str:
    packages = "\n".join(f"      - {p}" for p in ("busybox", *needs))
    body = "\n".join(f"      {line}" for line in script.splitlines())
    return (
        f"package:\n  name: {name}\n  version: 1.0.0\n  description: test package {name}\n"
        f"environment:\n  contents:\n    packages:\n{packages}\n"
        f"pipeline:\n  - name: build {name}\n    runs: |\n{body}\n"
        f"      mkdir -p ${{{{targets.destdir}}}}/usr/share/{name}\n"
        f"      echo {name} > ${{{{targets.destdir}}}}/usr/share/{name}/marker\n"
    )


class Server:
    """A melange-server process of our own, which a test may kill -9 and restart.

    Authentication is on, as by default: an admin token (``token``) is made in its store
    before the first start, and ``client()`` sends it (``client(token=None)``: none)."""

    def __init__(self, farm: FarmEnv, root: Path, extra_args: Sequence[str] = ()) -> None:
        self.farm = farm
        self.root = root
        self.extra_args = list(extra_args)
        self.port = processes.free_port()
        self.url = ""
        #: an admin token ("" with --no-auth)
        self.token = ""
        backends = root / "backends.yaml"
        backends.write_text(
            "backends:\n"
            + "".join(
                f"  - addr: {a}\n    arch: x86_64\n    maxJobs: 4\n" for a in farm.buildkit_addrs
            )
        )
        self.backends = backends

    def make_token(self, name: str, role: str = "admin") -> str:
        """A token of ``role`` in this server's store (a running server sees it)."""
        return asyncio.run(
            make_token(
                self.root / "data",
                name=name,
                role=Role(role),
                store_args=store_args_of(self.extra_args),
            )
        )

    def start(self) -> None:
        if not self.token and "--no-auth" not in self.extra_args:
            self.token = self.make_token("e2e-admin")
        self.url = asyncio.run(
            start_server(
                self.farm,
                data_dir=self.root / "data",
                output_dir=self.root / "output",
                pid_file=self.root / "server.pid",
                log_file=self.root / "server.log",
                backends_config=self.backends,
                port=self.port,
                extra_args=["--max-body-bytes", str(2 * 1024 * 1024), *self.extra_args],
            )
        )

    def kill9(self) -> None:
        pid = processes.read_pid(self.root / "server.pid")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        while processes.pid_alive(pid):
            processes.stop(self.root / "server.pid", grace=0.1)
            time.sleep(0.05)

    def stop(self) -> None:
        processes.stop(self.root / "server.pid")

    def client(self, token: str | None = "") -> httpx.Client:
        """An HTTP client for the server with the admin token, or ``token`` (``None``:
        anonymous)."""
        secret = self.token if token == "" else token
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.Client(base_url=self.url, timeout=30, headers=headers)


@pytest.fixture(scope="module")
def server(farm: FarmEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # the git_source test clones a repository on this disk
    srv = Server(farm, tmp_path_factory.mktemp("server"), ["--git-allow-local"])
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def submit(client: httpx.Client, **body: Any) -> str:
    resp = client.post("/api/v1/builds", json=body)
    assert resp.status_code == 201, resp.text
    build_id: str = resp.json()["id"]
    return build_id


def wait(client: httpx.Client, build_id: str, timeout: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        build: dict[str, Any] = client.get(f"/api/v1/builds/{build_id}").json()
        if build["status"] not in ("pending", "running"):
            return build
        time.sleep(0.2)
    raise AssertionError(f"build {build_id} did not finish: {build}")


def by_name(build: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in build["packages"]}


def test_app_installs_lib_built_earlier_in_the_same_build(server: Server) -> None:
    with server.client() as client:
        configs = [
            (EXAMPLES / "greet-app" / "greet-app.yaml").read_text(),
            (EXAMPLES / "libgreet" / "libgreet.yaml").read_text(),
        ]
        resp = client.post("/api/v1/builds", json={"configs": configs, "mode": "dag"})
        assert resp.status_code == 201, resp.text
        assert resp.json()["packages"] == ["libgreet", "greet-app"]
        build = wait(client, resp.json()["id"])
        assert build["status"] == "success", build
        pkgs = by_name(build)
        assert pkgs["greet-app"]["dependencies"] == ["libgreet"]
        assert pkgs["libgreet"]["finished_at"] <= pkgs["greet-app"]["started_at"]
        # the step that fails when libgreet is absent passed: its output is in the log
        log = client.get(f"/api/v1/builds/{build['id']}/packages/greet-app/logs").text
        assert "==> check libgreet is installed" in log and "LIBGREET_VERSION=0.3.1-r2" in log
        assert Path(pkgs["greet-app"]["output_path"], "x86_64", "greet-app-1.0.0-r0.apk").exists()
        # published in the farm's repository, served over HTTP
        index = client.get("/repo/x86_64/APKINDEX.tar.gz")
        assert index.status_code == 200 and len(index.content) > 100


def test_diamond_runs_in_order(server: Server) -> None:
    with server.client() as client:
        configs = [
            config("d-top", needs=("d-left", "d-right")),
            config("d-left", needs=("d-base",)),
            config("d-right", needs=("d-base",)),
            config("d-base", script="sleep 1"),
        ]
        build = wait(client, submit(client, configs=configs, mode="dag"))
        assert build["status"] == "success", build
        p = by_name(build)
        for side in ("d-left", "d-right"):
            assert p["d-base"]["finished_at"] <= p[side]["started_at"]
            assert p[side]["finished_at"] <= p["d-top"]["started_at"]
        assert sorted(p["d-top"]["dependencies"]) == ["d-left", "d-right"]


def test_failure_skips_dependents_and_build_is_partial(server: Server) -> None:
    with server.client() as client:
        configs = [
            config("f-broken", script='echo "boom happens"\nexit 4'),
            config("f-child", needs=("f-broken",)),
            config("f-grandchild", needs=("f-child",)),
            config("f-fine"),
        ]
        build = wait(client, submit(client, configs=configs, mode="dag"))
        assert build["status"] == "partial"
        p = by_name(build)
        assert p["f-broken"]["status"] == "failed"
        assert (
            "build f-broken" in p["f-broken"]["error"] and "exit code 4" in p["f-broken"]["error"]
        )
        assert p["f-child"]["status"] == "skipped"
        assert p["f-child"]["error"] == "dependency f-broken failed"
        assert p["f-grandchild"]["error"] == "dependency f-child failed"
        assert p["f-fine"]["status"] == "success"
        log = client.get(f"/api/v1/builds/{build['id']}/packages/f-broken/logs").text
        assert "boom happens" in log


def test_cancel_stops_a_running_build(server: Server) -> None:
    with server.client() as client:
        build_id = submit(
            client,
            configs=[
                config("c-sleeper", script="sleep 300"),
                config("c-after", needs=("c-sleeper",)),
            ],
            mode="dag",
        )
        deadline = time.monotonic() + 60
        while (
            by_name(client.get(f"/api/v1/builds/{build_id}").json())["c-sleeper"]["status"]
            != "running"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(1)
        t0 = time.monotonic()
        resp = client.post(f"/api/v1/builds/{build_id}/cancel")
        assert resp.status_code == 200
        build = wait(client, build_id, timeout=60)
        assert time.monotonic() - t0 < 30
        assert build["status"] == "cancelled"
        assert {p["status"] for p in build["packages"]} == {"cancelled"}


def test_cycle_break_builds_against_the_published_repository(server: Server) -> None:
    with server.client() as client:
        # bootstrap: earlier versions of both are already published
        first = submit(client, configs=[config("cyc-a"), config("cyc-b")], mode="dag")
        assert wait(client, first)["status"] == "success"
        cyclic = [config("cyc-a", needs=("cyc-b",)), config("cyc-b", needs=("cyc-a",))]
        refused = client.post("/api/v1/builds", json={"configs": cyclic, "mode": "dag"})
        assert refused.status_code == 400
        assert "circular dependency detected: cyc-a -> cyc-b -> cyc-a" in refused.json()["error"]
        # the same versions again, with other contents (each package records its config):
        # the farm's repository is immutable, so this build asks to replace them
        resp = client.post(
            "/api/v1/builds",
            json={"configs": cyclic, "mode": "dag", "cycle_policy": "break", "replace": True},
        )
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert len(body["cut_edges"]) == 1
        dependent, dependency = body["cut_edges"][0]
        assert {dependent, dependency} == {"cyc-a", "cyc-b"}
        # the member whose need was cut goes first, installing the other's published
        # version; then the other, installing the new one from the build's staging repo
        assert body["packages"] == [dependent, dependency]
        build = wait(client, body["id"])
        assert build["status"] == "success", build
        p = by_name(build)
        assert p[dependent]["dependencies"] == []
        assert p[dependency]["dependencies"] == [dependent]
        assert p[dependent]["finished_at"] <= p[dependency]["started_at"]


def test_git_source_builds_the_matching_configs(server: Server, tmp_path: Path) -> None:
    repo = tmp_path / "distro"
    (repo / "pkgs").mkdir(parents=True)
    (repo / "pkgs" / "g-lib.yaml").write_text(config("g-lib"))
    (repo / "pkgs" / "g-app.yaml").write_text(config("g-app", needs=("g-lib",)))
    (repo / "pkgs" / "README.md").write_text("not a config")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for argv in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "configs"]):
        subprocess.run([*git, *argv], cwd=repo, check=True, capture_output=True)
    with server.client() as client:
        resp = client.post(
            "/api/v1/builds",
            json={
                "git_source": {"repository": str(repo), "ref": "main", "path": "pkgs"},
                "mode": "dag",
            },
        )
        assert resp.status_code == 201, resp.text
        assert resp.json()["packages"] == ["g-lib", "g-app"]
        assert wait(client, resp.json()["id"])["status"] == "success"
        missing = client.post(
            "/api/v1/builds", json={"git_source": {"repository": str(tmp_path / "nope")}}
        )
        assert missing.status_code == 400 and "cannot clone" in missing.json()["error"]


PINNED = """\
package:
  name: g-pinned
  version: 1.0.0
  description: built from one commit of a git repository
environment:
  contents:
    packages: [busybox]
pipeline:
  - uses: local/mark
  - runs: |
      mkdir -p ${{targets.destdir}}/usr/share/g-pinned
      cp data.txt ${{targets.destdir}}/usr/share/g-pinned/
      echo "data: $(cat data.txt)"
"""
MARK = "pipeline:\n  - runs: echo marked-by-the-repository-pipeline\n"


def test_git_source_at_a_commit_builds_that_commit(server: Server, tmp_path: Path) -> None:
    """A ref that is a commit SHA builds exactly that commit (not the branch's tip),
    records it, and brings the repository's pipelines/ and <package>/ along."""
    repo = tmp_path / "distro"
    (repo / "pkgs" / "pipelines" / "local").mkdir(parents=True)
    (repo / "pkgs" / "g-pinned").mkdir()
    (repo / "pkgs" / "g-pinned.yaml").write_text(PINNED)
    (repo / "pkgs" / "pipelines" / "local" / "mark.yaml").write_text(MARK)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]

    def commit(data: str) -> str:
        (repo / "pkgs" / "g-pinned" / "data.txt").write_text(data)
        for argv in (["add", "."], ["commit", "-qm", data]):
            subprocess.run([*git, *argv], cwd=repo, check=True, capture_output=True)
        out = subprocess.run([*git, "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
        return out.stdout.strip()

    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=repo, check=True)
    first = commit("first-commit")
    commit("second-commit")  # the tip of main
    with server.client() as client:
        resp = client.post(
            "/api/v1/builds",
            json={"git_source": {"repository": str(repo), "ref": first, "path": "pkgs"}},
        )
        assert resp.status_code == 201, resp.text
        build = wait(client, resp.json()["id"])
        assert build["status"] == "success", build
        assert build["source_commit"] == first
        log = client.get(f"/api/v1/builds/{build['id']}/packages/g-pinned/logs").text
        assert "data: first-commit" in log and "second-commit" not in log
        assert "marked-by-the-repository-pipeline" in log
        # the tip: other content under the same version, so it replaces what was published
        tip = client.post(
            "/api/v1/builds",
            json={
                "git_source": {"repository": str(repo), "ref": "main", "path": "pkgs"},
                "replace": True,
            },
        )
        assert tip.status_code == 201, tip.text
        built = wait(client, tip.json()["id"])
        assert built["status"] == "success", built
        assert is_commit(built["source_commit"]) and built["source_commit"] != first
        log = client.get(f"/api/v1/builds/{built['id']}/packages/g-pinned/logs").text
        assert "data: second-commit" in log


def test_waiting_packages_say_why(server: Server) -> None:
    with server.client() as client:
        build_id = submit(
            client,
            configs=[config("w-first", script="sleep 3"), config("w-second", needs=("w-first",))],
            mode="dag",
        )
        p = by_name(client.get(f"/api/v1/builds/{build_id}").json())
        assert p["w-second"]["status"] == "blocked"
        assert p["w-second"]["reason"].startswith("waiting for dependencies: w-first")
        assert wait(client, build_id)["status"] == "success"


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"configs": []}, 400, "nothing to build"),
        ({}, 400, "exactly one of"),
        ({"config_yaml": "package: [", "arch": "x86_64"}, 400, "config_yaml"),
        (
            {"configs": [config("ok-one"), "package:\n  name: bad\n  version: [1\n"]},
            400,
            "configs[1]",
        ),
        ({"config_yaml": config("arch-x"), "arch": "sparc"}, 400, "unknown architecture"),
        ({"configs": [config("dup"), config("dup")]}, 400, "duplicate package name"),
        (
            {
                "configs": [config("cy-a", needs=("cy-b",)), config("cy-b", needs=("cy-a",))],
                "mode": "dag",
            },
            400,
            "circular dependency detected: cy-a -> cy-b -> cy-a",
        ),
        (
            {"config_yaml": config("trav"), "source_files": {"trav": {"../etc/passwd": "x"}}},
            400,
            "must be relative",
        ),
        (
            {"config_yaml": config("uses-x").replace("runs: |", "uses: nope/nope\n    runs: |")},
            400,
            "config_yaml",
        ),
        (
            {
                "configs": [
                    "package: [",
                    config("ok-two"),
                    config("uses-y").replace("runs: |", "uses: nope/nope\n    runs: |"),
                ]
            },
            400,
            "2 of 3 configs are invalid:\nconfigs[0]: ",
        ),
    ],
)
def test_bad_input_is_a_clear_4xx(
    server: Server, body: dict[str, Any], status: int, needle: str
) -> None:
    with server.client() as client:
        before = client.get("/api/v1/builds", params={"limit": 1000}).json()["builds"]
        resp = client.post("/api/v1/builds", json=body)
        assert resp.status_code == status, resp.text
        payload = resp.json()
        assert set(payload) == {"error", "details"}
        assert needle in payload["error"]
        if "configs are invalid" in needle:  # every invalid config, listed
            listed = payload["details"]["configs"]
            assert [(c["index"], c["package"]) for c in listed] == [(0, ""), (2, "uses-y")]
            assert "'nope/nope'" in listed[1]["error"]
        after = client.get("/api/v1/builds", params={"limit": 1000}).json()["builds"]
        assert len(after) == len(before)  # nothing half-created


def test_protocol_level_errors(server: Server) -> None:
    with server.client() as client:
        resp = client.post(
            "/api/v1/builds", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert (
            resp.status_code == 400 and resp.json()["error"] == "the request body is not valid JSON"
        )
        big = client.post("/api/v1/builds", json={"config_yaml": "x" * (3 * 1024 * 1024)})
        assert big.status_code == 413 and "over the limit" in big.json()["error"]
        missing = client.get("/api/v1/builds/bld-0123456789abcdef")
        assert missing.status_code == 404 and "error" in missing.json()
        assert client.get("/api/v1/builds/nonsense/packages/x").status_code == 404


def test_dry_run_plans_without_building(server: Server) -> None:
    with server.client() as client:
        before = len(client.get("/api/v1/builds", params={"limit": 1000}).json()["builds"])
        resp = client.post(
            "/api/v1/builds",
            json={
                "configs": [
                    config("p-top", needs=("p-mid",)),
                    config("p-mid", needs=("p-base",)),
                    config("p-base"),
                    config("p-side"),
                ],
                "mode": "dag",
                "dry_run": True,
            },
        )
        assert resp.status_code == 200, resp.text
        plan = resp.json()
        order = [p["name"] for p in plan["packages"]]
        assert order.index("p-base") < order.index("p-mid") < order.index("p-top")
        assert plan["critical_path"] == ["p-base", "p-mid", "p-top"]
        assert plan["lower_bound_s"] <= plan["estimated_makespan_s"] <= plan["total_work_s"]
        assert plan["cut_edges"] == []
        after = len(client.get("/api/v1/builds", params={"limit": 1000}).json()["builds"])
        assert after == before  # nothing built, nothing stored


def test_backends_are_probed(server: Server) -> None:
    with server.client() as client:
        status = client.get("/api/v1/backends/status").json()["backends"]
        assert len(status) == 2
        for backend in status:
            assert backend["lastProbeResult"] == "ok"
            assert backend["buildkitVersion"] == "v0.34.2"
            assert "linux/amd64" in backend["platforms"] and "linux/arm64" in backend["platforms"]
            assert backend["circuitState"] == "closed" and backend["lastProbe"]
        metrics = client.get("/metrics").text
        assert "melange_backend_probe_seconds_count" in metrics
        assert "melange_backends_available 2.0" in metrics


def test_list_is_paginated_newest_first(server: Server) -> None:
    with server.client() as client:
        ids = [submit(client, config_yaml=config(f"page-{i}"), mode="flat") for i in range(3)]
        first = client.get("/api/v1/builds", params={"limit": 2}).json()
        assert [b["id"] for b in first["builds"]] == ids[::-1][:2]
        second = client.get("/api/v1/builds", params={"limit": 2, "cursor": first["next_cursor"]})
        assert second.json()["builds"][0]["id"] == ids[0]
        for build_id in ids:
            wait(client, build_id)


def test_kill_9_during_a_build_loses_nothing(farm: FarmEnv, tmp_path: Path) -> None:
    srv = Server(farm, tmp_path)
    srv.start()
    try:
        with srv.client() as client:
            build_id = submit(
                client,
                configs=[
                    config("k-first", script="sleep 4"),
                    config("k-second", needs=("k-first",)),
                    config("k-side", script="sleep 4"),
                ],
                mode="dag",
            )
            deadline = time.monotonic() + 60
            while (
                by_name(client.get(f"/api/v1/builds/{build_id}").json())["k-first"]["status"]
                != "running"
            ):
                assert time.monotonic() < deadline
                time.sleep(0.1)
        srv.kill9()
        srv.start()
        with srv.client() as client:
            build = wait(client, build_id, timeout=180)
        assert build["status"] == "success", build
        p = by_name(build)
        assert all(pkg["status"] == "success" for pkg in p.values())
        assert len(p["k-first"]["attempts"]) >= 2  # the dead server's attempt, then ours
        assert p["k-first"]["finished_at"] <= p["k-second"]["started_at"]
    finally:
        srv.stop()
