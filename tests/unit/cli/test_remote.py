"""`melange2 remote …` against a fake build server.

``FakeServer`` is an ``httpx.MockTransport`` handler holding builds in a dict. It answers
the API's endpoints with the wire models of ``melange2.wire`` and validates every
request body it receives with them, so the CLI is checked against the real wire format.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ValidationError
from rich.console import Console
from ruamel.yaml import YAML

from melange2.cli.commands.remote import RemoteContext, _packages_table, _status_line
from melange2.cli.main import cli
from melange2.farm.certs import make_certs
from melange2.jobs import PackageStatus, derive_build_status
from melange2.wire import (
    AddBackendRequest,
    BackendList,
    BackendOut,
    BackendStatusList,
    BackendStatusOut,
    BuildEventOut,
    BuildList,
    BuildOut,
    BuildSummary,
    CreateBuildRequest,
    CreateBuildResponse,
    ErrorOut,
    PackageEventOut,
    PackageOut,
    PlannedPackage,
    PlanOut,
    PoolBackendOut,
    RemoveBackendRequest,
    SpecOut,
    content_bytes,
)

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def _json(status: int, model: BaseModel) -> httpx.Response:
    return httpx.Response(status, json=model.model_dump(mode="json"))


def _error(status: int, error: str, details: Any = None) -> httpx.Response:
    return _json(status, ErrorOut(error=error, details=details))


def _package(name: str, config: str, dependencies: list[str]) -> PackageOut:
    return PackageOut(
        name=name,
        status=PackageStatus.BLOCKED if dependencies else PackageStatus.PENDING,
        config_yaml=config,
        dependencies=dependencies,
        started_at=None,
        finished_at=None,
        error="",
        log_path="",
        output_path="",
        backend=None,
        reason=f"waiting for {', '.join(dependencies)}" if dependencies else "",
        attempts=[],
        duration=None,
        arch="x86_64",
    )


@dataclass
class FakeServer:
    """A build server in a dict. After each ``GET /builds/{id}`` every package moves one
    step (waiting -> running -> its outcome: ``outcomes[name]``, default success)."""

    builds: dict[str, BuildOut] = field(default_factory=dict)
    #: final package status by name
    outcomes: dict[str, str] = field(default_factory=dict)
    #: every create-build body, parsed by the real model
    received: list[CreateBuildRequest] = field(default_factory=list)
    backends: dict[str, AddBackendRequest] = field(default_factory=dict)
    #: log chunks by (build id, package)
    logs: dict[tuple[str, str], list[bytes]] = field(default_factory=dict)
    #: every request seen
    requests: list[httpx.Request] = field(default_factory=list)
    #: answer everything with this status (a broken server)
    fail_with: int | None = None
    #: answer this many of the next requests with 503 (a restarting server)
    fail_next: int = 0
    #: serve ``GET /events`` (a newer server); else 404 there, as an older one answers
    events: bool = False
    #: end the events stream (dropped) after this many package events
    drop_events_after: int | None = None
    #: an events stream is open
    streaming: bool = False

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_with is not None:
            return _error(self.fail_with, "database is on fire")
        if self.fail_next:
            self.fail_next -= 1
            return _error(503, "starting up")
        path = request.url.path
        assert path.startswith("/api/v1/"), path
        parts = path.removeprefix("/api/v1/").split("/")
        try:
            return self._route(request, parts)
        except ValidationError as exc:
            problems = [
                {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                for e in exc.errors()
            ]
            return _error(400, f"{problems[0]['field']}: {problems[0]['message']}", problems)

    def _route(self, request: httpx.Request, parts: list[str]) -> httpx.Response:
        method = request.method
        match parts:
            case ["builds"] if method == "POST":
                return self._create(CreateBuildRequest.model_validate_json(request.content))
            case ["builds"] if method == "GET":
                return self._list(request.url.params)
            case ["builds", build_id] if method == "GET":
                if build_id not in self.builds:
                    return _error(404, f"no build {build_id!r}", {"code": "not_found"})
                seen = self.builds[build_id].model_copy(deep=True)
                if not self.streaming:  # else the farm moves as the stream is read
                    self._advance(build_id)  # the farm moves on between polls
                return _json(200, seen)
            case ["builds", build_id, "cancel"] if method == "POST":
                return self._cancel(build_id)
            case ["builds", build_id, "packages", name] if method == "GET":
                return _json(200, self._pkg(build_id, name))
            case ["builds", build_id, "packages", name, "logs"] if method == "GET":
                chunks = self.logs[(build_id, name)]
                if request.url.params.get("follow") == "true":
                    return httpx.Response(200, content=iter(chunks))
                return httpx.Response(200, content=b"".join(chunks))
            case ["events"] if method == "GET" and self.events:
                return self._events(request.url.params["build"])
            case ["backends"] if method == "GET":
                arch = request.url.params.get("arch")
                found = [b for b in self.backends.values() if arch in (None, b.arch)]
                listing = BackendList(
                    backends=[
                        PoolBackendOut(
                            addr=b.addr, arch=b.arch, labels=b.labels, tls=b.tls is not None
                        )
                        for b in found
                    ],
                    architectures=sorted({b.arch for b in self.backends.values()}),
                )
                return _json(200, listing)
            case ["backends"] if method == "POST":
                add = AddBackendRequest.model_validate_json(request.content)
                if add.addr in self.backends:
                    return _error(409, f"backend {add.addr} already exists")
                self.backends[add.addr] = add
                added = PoolBackendOut(
                    addr=add.addr, arch=add.arch, labels=add.labels, tls=add.tls is not None
                )
                return _json(201, added)
            case ["backends"] if method == "DELETE":
                remove = RemoveBackendRequest.model_validate_json(request.content)
                if remove.addr not in self.backends:
                    return _error(404, f"no backend {remove.addr}")
                if len(self.backends) == 1:
                    return _error(409, "cannot remove the last backend")
                del self.backends[remove.addr]
                return httpx.Response(204)
            case ["backends", "status"] if method == "GET":
                return _json(
                    200, BackendStatusList(backends=[_status(b) for b in self.backends.values()])
                )
        return _error(404, f"no route {method} {request.url.path}")

    def _create(self, req: CreateBuildRequest) -> httpx.Response:
        self.received.append(req)
        configs = req.config_texts()
        names = [YAML(typ="safe").load(c)["package"]["name"] for c in configs]
        deps = {n: [d for d in names[:i]] if req.mode == "dag" else [] for i, n in enumerate(names)}
        if req.dry_run:
            plan = PlanOut(
                packages=[
                    PlannedPackage(name=n, dependencies=deps[n], priority=float(len(names) - i))
                    for i, n in enumerate(names)
                ],
                cut_edges=[("app", "lib-a")],
                critical_path=names,
                critical_path_s=60.0 * len(names),
                total_work_s=60.0 * len(names),
                lower_bound_s=30.0,
                estimated_makespan_s=90.0,
                slots=2,
                unplaceable={
                    "huge": "package asks cpu 64: no backend for arch x86_64 has that much"
                },
            )
            return _json(200, plan)
        build_id = f"bld-{len(self.builds) + 1:04d}"
        self.builds[build_id] = BuildOut(
            id=build_id,
            status="pending",
            packages=[_package(n, c, deps[n]) for n, c in zip(names, configs, strict=True)],
            spec=SpecOut.model_validate(req.model_dump(mode="json")),
            created_at=T0 + timedelta(minutes=len(self.builds)),
            started_at=None,
            finished_at=None,
        )
        return _json(201, CreateBuildResponse(id=build_id, packages=names))

    def _list(self, params: httpx.QueryParams) -> httpx.Response:
        limit = int(params.get("limit", 50))
        cursor = params.get("cursor")
        wanted = params.get("status")
        newest_first = sorted(self.builds.values(), key=lambda b: b.id, reverse=True)
        rows = [
            b
            for b in newest_first
            if (cursor is None or b.id < cursor) and wanted in (None, b.status)
        ]
        page = rows[:limit]
        return _json(
            200,
            BuildList(
                builds=[
                    BuildSummary(
                        id=b.id,
                        status=b.status,
                        packages=len(b.packages),
                        counts=dict(Counter(p.status for p in b.packages)),
                        created_at=b.created_at,
                        started_at=b.started_at,
                        finished_at=b.finished_at,
                        submitted_by=b.submitted_by,
                    )
                    for b in page
                ],
                next_cursor=page[-1].id if len(rows) > limit else None,
            ),
        )

    def _advance(self, build_id: str) -> BuildOut:
        build = self.builds[build_id]
        for p in build.packages:
            if p.status in (PackageStatus.PENDING, PackageStatus.BLOCKED):
                p.status, p.started_at, p.reason = PackageStatus.RUNNING, T0, ""
                p.backend = BackendOut(addr="tcp://bk-1:1234", arch="x86_64")
            elif p.status == PackageStatus.RUNNING:
                p.status = self.outcomes.get(p.name, PackageStatus.SUCCESS)
                p.finished_at, p.duration = T0 + timedelta(seconds=75), 75.0
                if p.status == PackageStatus.FAILED:
                    p.error = "step 2 exited 1"
        self._settle(build)
        return build

    def _events(self, build_id: str) -> httpx.Response:
        """The build's changes as Server-Sent Events: each read of the stream moves the
        farm one step on and tells what moved (a ``GET`` of the build then moves
        nothing)."""

        def stream() -> Any:
            self.streaming = True
            try:
                yield from moves()
            finally:
                self.streaming = False

        def moves() -> Any:
            yield b'retry: 2000\nevent: hello\nid: e-0\ndata: {"last_id": "e-0"}\n\n'
            sent = 0
            told = {p.name: p.status for p in self.builds[build_id].packages}
            while True:
                build = self.builds[build_id]
                before = dict(told)
                told = {p.name: p.status for p in build.packages}
                counts = dict(Counter(p.status for p in build.packages))
                for p in build.packages:
                    if before[p.name] == p.status:
                        continue
                    if self.drop_events_after is not None and sent >= self.drop_events_after:
                        return  # the connection drops
                    sent += 1
                    event = PackageEventOut(
                        build_id=build_id,
                        name=p.name,
                        status=p.status,
                        previous=before[p.name],
                        at=T0,
                        counts=counts,
                        build_status=build.status,
                        backend=p.backend.addr if p.backend else "",
                        attempt=1,
                        error=p.error,
                        started_at=p.started_at,
                        finished_at=p.finished_at,
                    )
                    data = event.model_dump_json()
                    yield f"id: e-{sent}\nevent: package\ndata: {data}\n\n".encode()
                if build.status not in ("pending", "running"):
                    done = BuildEventOut(
                        build_id=build_id,
                        status=build.status,
                        previous="running",
                        at=T0,
                        counts=counts,
                    )
                    yield f"event: build\ndata: {done.model_dump_json()}\n\n".encode()
                    return
                self._advance(build_id)

        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, headers=headers, content=stream())

    def _settle(self, build: BuildOut, *, cancelled: bool = False) -> None:
        status = derive_build_status(
            (PackageStatus(p.status) for p in build.packages), cancelled=cancelled
        )
        build.status = status.value
        build.started_at = build.started_at or T0
        if PackageStatus(build.packages[0].status).terminal and all(
            PackageStatus(p.status).terminal for p in build.packages
        ):
            build.finished_at = T0 + timedelta(seconds=80)

    def _cancel(self, build_id: str) -> httpx.Response:
        build = self.builds.get(build_id)
        if build is None:
            return _error(404, f"no build {build_id!r}")
        if build.finished_at is not None:
            return _error(409, f"build {build_id} already finished ({build.status})")
        for p in build.packages:
            if not PackageStatus(p.status).terminal:
                p.status = PackageStatus.CANCELLED
        self._settle(build, cancelled=True)
        return _json(200, build)

    def _pkg(self, build_id: str, name: str) -> PackageOut:
        return next(p for p in self.builds[build_id].packages if p.name == name)


def _status(b: AddBackendRequest) -> BackendStatusOut:
    return BackendStatusOut(
        addr=b.addr,
        arch=b.arch,
        labels=b.labels,
        maxJobs=b.maxJobs or 4,
        activeJobs=1,
        failures=0,
        circuitOpen=False,
        lastFailure=None,
        circuitState="closed",
        lastProbe=T0,
        lastProbeResult="ok",
        buildkitVersion="v0.16.0",
        platforms=["linux/amd64"],
        draining=False,
        cpu=None if b.cpu is None else str(b.cpu),
        memory=None if b.memory is None else str(b.memory),
        cpuInUse="2" if b.cpu is not None else "0",
        memoryInUse="4Gi" if b.memory is not None else "0",
        reservedFor="bld-0001/big" if b.cpu is not None else "",
    )


@dataclass
class Outcome:
    code: int
    out: str
    err: str
    exception: BaseException | None


def run(
    fake: FakeServer | None,
    *args: str,
    transport: httpx.BaseTransport | None = None,
    env: dict[str, str | None] | None = None,
) -> Outcome:
    out, err = io.StringIO(), io.StringIO()
    ctx = RemoteContext(
        console=Console(file=out, width=100),
        err_console=Console(file=err, width=100),
        transport=transport or (fake.transport() if fake else None),
    )
    result = CliRunner().invoke(cli, ["remote", *args], obj=ctx, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is always a bug
    return Outcome(result.exit_code, out.getvalue(), err.getvalue() + result.output, None)


def config(directory: Path, name: str, *, file: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (file or f"{name}.yaml")
    path.write_text(
        f"package:\n  name: {name}\n  version: 1.0.0\n  epoch: 0\npipeline:\n  - runs: echo hi\n"
    )
    return path


# submit


def test_submit_one_config_sends_config_yaml(tmp_path: Path) -> None:
    fake = FakeServer()
    path = config(tmp_path, "hello")
    res = run(
        fake,
        "submit",
        str(path),
        "--arch",
        "aarch64",
        "--test",
        "--debug",
        "--env",
        "A=1",
        "--env",
        "B=x=y",
        "--backend-selector",
        "tier=fast",
    )
    assert res.code == 0, res
    assert "bld-0001" in res.out
    (req,) = fake.received
    assert req.config_yaml == path.read_text()
    assert req.configs is None
    assert (req.arch, req.with_test, req.debug, req.mode) == ("aarch64", True, True, "flat")
    assert req.env == {"A": "1", "B": "x=y"}
    assert req.backend_selector == {"tier": "fast"}
    assert req.pipelines == {} and req.source_files == {}
    assert req.replace is False


def test_submit_replace_asks_the_server_to_replace_published_packages(tmp_path: Path) -> None:
    fake = FakeServer()
    res = run(fake, "submit", str(config(tmp_path, "again")), "--replace")
    assert res.code == 0, res
    (req,) = fake.received
    assert req.replace is True


def test_submit_sends_secrets_from_the_environment_and_a_timeout(tmp_path: Path) -> None:
    fake = FakeServer()
    path = config(tmp_path, "sec")
    env: dict[str, str | None] = {"API_KEY": "k3y-value"}
    res = run(fake, "submit", str(path), "--secret", "API_KEY", "--timeout", "90", env=env)
    assert res.code == 0, res
    (req,) = fake.received
    assert req.secrets == {"API_KEY": "k3y-value"} and req.timeout_s == 90
    assert "k3y-value" not in res.out + res.err
    missing = run(fake, "submit", str(path), "--secret", "NOT_SET_HERE_X")
    assert missing.code == 2 and "NOT_SET_HERE_X" in missing.err
    bad = run(fake, "submit", str(path), "--secret", "BAD-NAME", env={"BAD-NAME": "s3cr3t-v"})
    assert bad.code == 2 and "not an environment variable name" in bad.err
    assert "s3cr3t-v" not in bad.out + bad.err


def test_submit_several_configs_sends_configs(tmp_path: Path) -> None:
    fake = FakeServer()
    a = config(tmp_path / "a", "lib-a")
    b = config(tmp_path / "b", "app")
    res = run(
        fake,
        "submit",
        str(a),
        str(b),
        "--mode",
        "dag",
        "--schedule",
        "fifo",
        "--cycle-policy",
        "break",
        "-o",
        "json",
    )
    assert res.code == 0, res
    assert json.loads(res.out) == {"id": "bld-0001", "packages": ["lib-a", "app"], "cut_edges": []}
    (req,) = fake.received
    assert req.configs == [a.read_text(), b.read_text()]
    assert (req.mode, req.schedule, req.cycle_policy) == ("dag", "fifo", "break")


def test_submit_uploads_pipelines_and_package_directory_bytes_intact(tmp_path: Path) -> None:
    fake = FakeServer()
    path = config(tmp_path, "hello")
    (tmp_path / "pipelines" / "custom").mkdir(parents=True)
    (tmp_path / "pipelines" / "custom" / "step.yaml").write_text("name: step\n")
    (tmp_path / "pipelines" / "README.md").write_text("not a pipeline")
    blob = bytes(range(256)) + b"\x00\xff\xfe"
    (tmp_path / "hello" / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "hello" / "data.bin").write_bytes(blob)
    (tmp_path / "hello" / "sub" / "deeper" / "patch.diff").write_text("--- a\n+++ b\n")
    os.symlink("data.bin", tmp_path / "hello" / "alias.bin")  # inside: followed

    res = run(fake, "submit", str(path))
    assert res.code == 0, res
    (req,) = fake.received
    assert req.pipelines == {"custom/step.yaml": "name: step\n"}
    files = req.source_files["hello"]
    assert set(files) == {"data.bin", "alias.bin", "sub/deeper/patch.diff"}
    assert content_bytes(files["data.bin"]) == blob
    assert content_bytes(files["alias.bin"]) == blob
    assert content_bytes(files["sub/deeper/patch.diff"]) == b"--- a\n+++ b\n"
    body = json.loads(fake.requests[0].content)
    assert set(body["source_files"]["hello"]["data.bin"]) == {"base64"}


def test_submit_refuses_a_symlink_leaving_the_package_directory(tmp_path: Path) -> None:
    fake = FakeServer()
    path = config(tmp_path / "cfg", "hello")
    (tmp_path / "secret").write_text("key")
    (tmp_path / "cfg" / "hello").mkdir()
    os.symlink(tmp_path / "secret", tmp_path / "cfg" / "hello" / "leak")
    res = run(fake, "submit", str(path))
    assert res.code == 2
    assert "outside" in res.err and "Traceback" not in res.err
    assert fake.received == []


def test_submit_dry_run_prints_the_plan(tmp_path: Path) -> None:
    fake = FakeServer()
    a = config(tmp_path / "a", "lib-a")
    b = config(tmp_path / "b", "app")
    res = run(fake, "submit", str(a), str(b), "--mode", "dag", "--dry-run")
    assert res.code == 0, res
    assert fake.received[0].dry_run is True
    assert fake.builds == {}
    for text in (
        "lib-a",
        "app",
        "Cut edges:",
        "app -> lib-a",
        "Critical path:",
        "lib-a -> app",
        "2m00s",
        "Estimated makespan: 1m30s",
        "Never placed (1): no backend could run them",
        "huge: package asks cpu 64: no backend for arch x86_64 has that much",
    ):
        assert text in res.out, (text, res.out)


@pytest.mark.parametrize(
    ("outcomes", "final", "code"),
    [
        ({}, "success", 0),
        ({"app": "failed"}, "partial", 1),
        ({"lib-a": "failed", "app": "failed"}, "failed", 1),
    ],
)
def test_submit_wait_follows_the_build_and_exits_by_its_status(
    tmp_path: Path, outcomes: dict[str, str], final: str, code: int
) -> None:
    fake = FakeServer(outcomes=outcomes)
    a = config(tmp_path / "a", "lib-a")
    b = config(tmp_path / "b", "app")
    res = run(fake, "submit", str(a), str(b), "--wait", "--poll-interval", "0")
    assert res.code == code, res
    lines = res.out.splitlines()
    assert any("lib-a" in line and "running on tcp://bk-1:1234" in line for line in lines)
    assert any("app" in line and "pending" in line for line in lines)
    for name in ("lib-a", "app"):
        status = outcomes.get(name, "success")
        assert any(name in line and status in line for line in lines), (name, res.out)
    if "app" in outcomes:
        assert "step 2 exited 1" in res.out
    assert f"Build bld-0001: {final}" in res.out
    assert "NAME" in res.out and "DURATION" in res.out and "1m15s" in res.out


def test_submit_needs_configs_or_git(tmp_path: Path) -> None:
    res = run(FakeServer(), "submit")
    assert res.code == 2
    assert "nothing to build" in res.err
    res = run(FakeServer(), "submit", "--git-ref", "main", "--git-repo", "")
    assert res.code == 2


def test_submit_git_source(tmp_path: Path) -> None:
    fake = FakeServer()  # it reads no repository: it plans an empty build
    res = run(
        fake,
        "submit",
        "--git-repo",
        "https://example.com/r.git",
        "--git-ref",
        "v1",
        "--git-path",
        "pkgs",
        "-o",
        "json",
        "--dry-run",
    )
    assert res.code == 0, res
    assert json.loads(res.out)["packages"] == []
    body = json.loads(fake.requests[0].content)
    assert body["git_source"] == {
        "repository": "https://example.com/r.git",
        "ref": "v1",
        "pattern": "*.yaml",
        "path": "pkgs",
    }
    assert "config_yaml" not in body and "configs" not in body


def test_bad_key_value_is_usage_error(tmp_path: Path) -> None:
    res = run(FakeServer(), "submit", str(config(tmp_path, "x")), "--env", "NOEQUALS")
    assert res.code == 2
    assert "KEY=VALUE" in res.err


# status, list, wait, logs, cancel


def _submitted(fake: FakeServer, tmp_path: Path, *names: str) -> str:
    paths = [str(config(tmp_path / n, n)) for n in names]
    res = run(fake, "submit", *paths)
    assert res.code == 0, res
    return sorted(fake.builds)[-1]


def test_status_table(tmp_path: Path) -> None:
    fake = FakeServer(outcomes={"app": "failed"})
    build_id = _submitted(fake, tmp_path, "lib-a", "app")
    fake._advance(build_id)  # running
    fake._advance(build_id)  # finished
    res = run(fake, "status", build_id)
    assert res.code == 0, res
    for label in ("Build ID", "Status", "Created", "Arch", "Started", "Finished"):
        assert label in res.out
    assert build_id in res.out and "2025-01-02 03:04:05 UTC" in res.out
    assert "failed" in res.out and "step 2 exited 1" in res.out
    header = next(line for line in res.out.splitlines() if "NAME" in line)
    assert (
        header.index("NAME")
        < header.index("STATUS")
        < header.index("DURATION")
        < header.index("ERROR")
    )


def test_status_json_has_the_api_field_names(tmp_path: Path) -> None:
    fake = FakeServer()
    build_id = _submitted(fake, tmp_path, "hello")
    res = run(fake, "status", build_id, "-o", "json")
    assert res.code == 0, res
    data = json.loads(res.out)
    assert {"id", "status", "packages", "spec", "created_at", "started_at", "finished_at"} <= set(
        data
    )
    (pkg,) = data["packages"]
    assert {
        "name",
        "status",
        "config_yaml",
        "dependencies",
        "started_at",
        "finished_at",
        "error",
        "log_path",
        "output_path",
        "backend",
    } <= set(pkg)
    BuildOut.model_validate(data)


def test_status_of_unknown_build_shows_server_error_exit_2() -> None:
    res = run(FakeServer(), "status", "bld-nope")
    assert res.code == 2
    assert "error: no build 'bld-nope' (HTTP 404)" in res.err
    assert "code: not_found" in res.err
    assert "Traceback" not in res.err


def test_list_table_and_json(tmp_path: Path) -> None:
    fake = FakeServer()
    first = _submitted(fake, tmp_path / "1", "one")
    second = _submitted(fake, tmp_path / "2", "two", "three")
    res = run(fake, "list")
    assert res.code == 0, res
    header = next(line for line in res.out.splitlines() if "ID" in line)
    assert (
        header.index("ID")
        < header.index("STATUS")
        < header.index("PACKAGES")
        < header.index("BY STATUS")
        < header.index("CREATED")
    )
    assert "2 pending" in res.out  # the second build's two packages
    assert res.out.index(second) < res.out.index(first)  # newest first
    res = run(fake, "list", "-o", "json", "--status", "pending")
    data = json.loads(res.out)
    assert [b["id"] for b in data["builds"]] == [second, first]
    assert {"id", "status", "packages", "created_at"} <= set(data["builds"][0])
    assert data["next_cursor"] is None


def test_list_pages_and_all(tmp_path: Path) -> None:
    fake = FakeServer()
    ids = [_submitted(fake, tmp_path / str(n), f"p{n}") for n in range(5)]
    res = run(fake, "list", "--limit", "2")
    assert res.code == 0, res
    assert ids[4] in res.out and ids[3] in res.out and ids[2] not in res.out
    assert f"--cursor {ids[3]}" in res.err
    fake.requests.clear()
    res = run(fake, "list", "--limit", "2", "--all", "-o", "json")
    assert res.code == 0, res
    assert [b["id"] for b in json.loads(res.out)["builds"]] == ids[::-1]
    cursors = [r.url.params.get("cursor") for r in fake.requests]
    assert cursors == [None, ids[3], ids[1]]
    res = run(fake, "list", "--limit", "2", "--cursor", ids[3])
    assert ids[2] in res.out and ids[3] not in res.out


def test_wait_exit_codes(tmp_path: Path) -> None:
    fake = FakeServer(outcomes={"bad": "failed"})
    good = _submitted(fake, tmp_path / "g", "good")
    bad = _submitted(fake, tmp_path / "b", "bad")
    assert run(fake, "wait", good, "--poll-interval", "0").code == 0
    res = run(fake, "wait", bad, "--poll-interval", "0", "-o", "json")
    assert res.code == 1
    assert json.loads(res.out)["status"] == "failed"
    assert "bad" in res.err  # progress goes to stderr with -o json


def test_wait_rides_out_a_restarting_server(tmp_path: Path) -> None:
    fake = FakeServer()
    build_id = _submitted(fake, tmp_path, "hello")
    fake.fail_next = 2
    res = run(fake, "wait", build_id, "--poll-interval", "0")
    assert res.code == 0, res
    assert res.out.count("warning: starting up (HTTP 503); retrying") == 2
    fake.fail_with = 503
    res = run(fake, "wait", build_id, "--poll-interval", "0")
    assert res.code == 1
    assert "error: database is on fire (HTTP 503)" in res.err


def _build_gets(fake: FakeServer, build_id: str) -> int:
    return sum(
        1 for r in fake.requests if r.method == "GET" and r.url.path == f"/api/v1/builds/{build_id}"
    )


@pytest.mark.parametrize(("outcomes", "code"), [({}, 0), ({"app": "failed"}, 1)])
def test_wait_follows_the_events_stream_instead_of_polling(
    tmp_path: Path, outcomes: dict[str, str], code: int
) -> None:
    fake = FakeServer(outcomes=outcomes, events=True)
    build_id = _submitted(fake, tmp_path, "lib-a", "app")
    res = run(fake, "wait", build_id, "--poll-interval", "0")
    assert res.code == code, res
    lines = res.out.splitlines()
    assert any("lib-a" in line and "running on tcp://bk-1:1234" in line for line in lines)
    assert any("app" in line and "success in 1m15s" in line for line in lines) == (code == 0)
    if code:
        assert any("app" in line and "failed: step 2 exited 1" in line for line in lines)
    # the state once when subscribed, once at the end: no polling in between
    assert _build_gets(fake, build_id) == 2
    streams = [r for r in fake.requests if r.url.path == "/api/v1/events"]
    assert len(streams) == 1 and streams[0].url.params["build"] == build_id


def test_wait_polls_against_an_older_server_or_a_dropped_stream(tmp_path: Path) -> None:
    older = FakeServer()
    build_id = _submitted(older, tmp_path, "lib-a", "app")
    res = run(older, "wait", build_id, "--poll-interval", "0")
    assert res.code == 0, res
    assert any(r.url.path == "/api/v1/events" for r in older.requests)  # asked, got 404
    assert _build_gets(older, build_id) >= 3  # then polled
    dropped = FakeServer(events=True, drop_events_after=1)
    build_id = _submitted(dropped, tmp_path, "lib-a", "app")
    res = run(dropped, "wait", build_id, "--poll-interval", "0")
    assert res.code == 0, res
    assert f"Build {build_id}: success" in res.out
    # one line per change, none repeated across the switch from events to polling
    assert sum("lib-a" in line and "running" in line for line in res.out.splitlines()) == 1


def test_cancel_then_wait_exits_1(tmp_path: Path) -> None:
    fake = FakeServer()
    build_id = _submitted(fake, tmp_path, "slow")
    res = run(fake, "cancel", build_id)
    assert res.code == 0, res
    assert f"Build {build_id}: cancelled" in res.out
    assert fake.builds[build_id].status == "cancelled"
    assert run(fake, "wait", build_id, "--poll-interval", "0").code == 1
    res = run(fake, "cancel", build_id)
    assert res.code == 2
    assert "already finished" in res.err


def test_logs_and_follow_streams(tmp_path: Path) -> None:
    fake = FakeServer()
    build_id = _submitted(fake, tmp_path, "hello")
    snowman = "☃".encode()
    fake.logs[(build_id, "hello")] = [b"step 1\n", b"caf", snowman[:1], snowman[1:] + b"\n"]
    res = run(fake, "logs", build_id, "hello")
    assert res.code == 0, res
    assert res.out == "step 1\ncaf☃\n"
    assert fake.requests[-1].url.params.get("follow") is None
    res = run(fake, "logs", build_id, "hello", "-f")
    assert res.code == 0, res
    assert res.out == "step 1\ncaf☃\n"
    assert fake.requests[-1].url.params.get("follow") == "true"


# backends


def test_backends_add_list_status_remove() -> None:
    fake = FakeServer()
    res = run(
        fake,
        "backends",
        "add",
        "--addr",
        "tcp://bk-1:1234",
        "--arch",
        "x86_64",
        "--label",
        "tier=fast",
        "--max-jobs",
        "3",
    )
    assert res.code == 0, res
    assert fake.backends["tcp://bk-1:1234"] == AddBackendRequest(
        addr="tcp://bk-1:1234", arch="x86_64", labels={"tier": "fast"}, maxJobs=3
    )
    assert run(fake, "backends", "add", "--addr", "tcp://bk-2:1234", "--arch", "aarch64").code == 0

    res = run(fake, "backends", "list")
    assert res.code == 0, res
    assert "aarch64, x86_64" in res.out
    assert "tcp://bk-1:1234" in res.out and "tier=fast" in res.out
    res = run(fake, "backends", "list", "--arch", "aarch64", "-o", "json")
    data = json.loads(res.out)
    assert [b["addr"] for b in data["backends"]] == ["tcp://bk-2:1234"]
    assert set(data["backends"][0]) >= {"addr", "arch", "labels"}
    assert data["architectures"] == ["aarch64", "x86_64"]

    res = run(fake, "backends", "status")
    assert res.code == 0, res
    assert "closed" in res.out and "1/3" in res.out and "v0.16.0" in res.out
    data = json.loads(run(fake, "backends", "status", "-o", "json").out)
    assert {
        "addr",
        "arch",
        "labels",
        "maxJobs",
        "activeJobs",
        "failures",
        "circuitOpen",
        "lastFailure",
    } <= set(data["backends"][0])

    res = run(fake, "backends", "remove", "--addr", "tcp://bk-2:1234")
    assert res.code == 0, res
    assert list(fake.backends) == ["tcp://bk-1:1234"]
    res = run(fake, "backends", "remove", "--addr", "tcp://bk-1:1234")
    assert res.code == 2
    assert "cannot remove the last backend" in res.err
    assert list(fake.backends) == ["tcp://bk-1:1234"]


def test_backends_add_with_tls_sends_the_files_contents(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "tls")
    fake = FakeServer()
    res = run(
        fake,
        "backends",
        "add",
        "--addr",
        "tcp://bk-tls:1234",
        "--arch",
        "x86_64",
        "--tlscacert",
        str(certs.ca_cert),
        "--tlscert",
        str(certs.client_cert),
        "--tlskey",
        str(certs.client_key),
        "--tlsservername",
        "localhost",
    )
    assert res.code == 0, res
    sent = fake.backends["tcp://bk-tls:1234"].tls
    assert sent is not None
    assert sent.caCert == certs.ca_cert.read_text()
    assert sent.cert == certs.client_cert.read_text()
    assert sent.key == certs.client_key.read_text()
    assert sent.serverName == "localhost"
    listing = json.loads(run(fake, "backends", "list", "-o", "json").out)
    assert listing["backends"][0]["tls"] is True
    assert "PRIVATE KEY" not in run(fake, "backends", "list", "-o", "json").out

    # without TLS flags, no tls member at all (an older server refuses unknown fields)
    assert run(fake, "backends", "add", "--addr", "tcp://plain:1", "--arch", "x86_64").code == 0
    assert fake.backends["tcp://plain:1"].tls is None


def test_backends_add_with_a_bad_key_names_the_flag(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "tls")
    fake = FakeServer()
    args = ("backends", "add", "--addr", "tcp://bk:1", "--arch", "x86_64")
    res = run(fake, *args, "--tlscert", str(certs.client_cert), "--tlskey", str(certs.ca_cert))
    assert res.code == 2
    assert "--tlskey" in res.err and "not a PEM private key" in res.err
    res = run(fake, *args, "--tlscacert", str(tmp_path / "missing.pem"))
    assert res.code == 2
    assert "--tlscacert" in res.err and "No such file" in res.err
    assert fake.backends == {}


def test_backends_add_duplicate_is_refused_with_exit_2() -> None:
    fake = FakeServer()
    args = ("backends", "add", "--addr", "tcp://bk-1:1234", "--arch", "x86_64")
    assert run(fake, *args).code == 0
    res = run(fake, *args)
    assert res.code == 2
    assert "error: backend tcp://bk-1:1234 already exists (HTTP 409)" in res.err


def test_server_validation_details_are_shown(tmp_path: Path) -> None:
    fake = FakeServer()
    res = run(fake, "backends", "add", "--addr", "tcp://x:1", "--arch", "x86_64", "--max-jobs", "0")
    assert res.code == 0

    # a body the server's model refuses: its details are listed field by field
    def refusing(request: httpx.Request) -> httpx.Response:
        return _error(
            400,
            "arch: unknown architecture",
            [
                {"field": "arch", "message": "unknown architecture 'sparc'"},
            ],
        )

    res = run(
        None,
        "backends",
        "add",
        "--addr",
        "tcp://y:1",
        "--arch",
        "sparc",
        transport=httpx.MockTransport(refusing),
    )
    assert res.code == 2
    assert "error: arch: unknown architecture (HTTP 400)" in res.err
    assert "  arch: unknown architecture 'sparc'" in res.err


def test_every_invalid_config_is_shown_once(tmp_path: Path) -> None:
    """The server names every invalid config in the message; the CLI shows each line
    once (not again from details.configs)."""
    lines = [
        "configs[0]: configs[0]:9: pipeline[0].uses: unknown pipeline 'nope'",
        "configs[1]: configs[1]:4: invalid YAML: did not find expected ',' or ']'",
    ]

    def refusing(request: httpx.Request) -> httpx.Response:
        return _error(
            400,
            "2 of 2 configs are invalid:\n" + "\n".join(lines),
            {
                "code": "bad_request",
                "configs": [
                    {"index": i, "config": f"configs[{i}]", "package": "", "error": line}
                    for i, line in enumerate(lines)
                ],
            },
        )

    a, b = config(tmp_path, "a"), config(tmp_path, "b")
    res = run(None, "submit", str(a), str(b), transport=httpx.MockTransport(refusing))
    assert res.code == 2
    for line in lines:
        assert res.err.count(line) == 1
    assert "2 of 2 configs are invalid:" in res.err
    assert "'index'" not in res.err


# transport failures and the server option


def test_server_error_exits_1_without_traceback() -> None:
    res = run(FakeServer(fail_with=500), "list")
    assert res.code == 1
    assert "error: database is on fire (HTTP 500)" in res.err
    assert "Traceback" not in res.err


def test_nonsense_answer_exits_1() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>a proxy</html>")

    res = run(None, "list", transport=httpx.MockTransport(handler))
    assert res.code == 1
    assert "unexpected answer" in res.err


def test_unreachable_server_exits_3() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    res = run(None, "status", "bld-1", transport=httpx.MockTransport(refused))
    assert res.code == 3
    assert "cannot reach the build server at http://localhost:8080" in res.err
    # and through the real network stack: nothing listens on port 1
    res = run(None, "list", "--server", "http://127.0.0.1:1")
    assert res.code == 3, res


def test_server_from_environment_and_bad_url() -> None:
    fake = FakeServer()
    res = run(fake, "backends", "list", env={"MELANGE_SERVER": "http://farm.example:9000"})
    assert res.code == 0, res
    assert fake.requests[-1].url.host == "farm.example"
    assert fake.requests[-1].url.port == 9000
    res = run(fake, "list", "--server", "farm.example:9000")
    assert res.code == 2
    assert "http://" in res.err


def test_cached_packages_say_so() -> None:
    def pkg(name: str, *, cached: bool, attempts: int) -> PackageOut:
        return PackageOut.model_validate(
            {
                "name": name,
                "status": "success",
                "config_yaml": "",
                "dependencies": [],
                "started_at": None,
                "finished_at": None,
                "error": "",
                "log_path": "",
                "output_path": "",
                "backend": None,
                "reason": "",
                "attempts": [
                    {
                        "number": n + 1,
                        "backend": "tcp://a",
                        "started_at": "2026-11-27T00:00:00Z",
                        "finished_at": None,
                        "error": "",
                        "log_path": "",
                    }
                    for n in range(attempts)
                ],
                "duration": 1.5 if attempts else 0.0,
                "arch": "x86_64",
                "cached": cached,
            }
        )

    at_submission = pkg("lib", cached=True, attempts=0)
    on_backend = pkg("app", cached=True, attempts=1)
    built = pkg("tool", cached=False, attempts=1)
    assert "cached: reused at submission" in _status_line(at_submission)
    assert "cached: in 1.5s" in _status_line(on_backend)
    assert "cached" not in _status_line(built)
    console = Console(width=200, record=True)
    console.print(_packages_table([at_submission, built]))
    text = console.export_text()
    assert "success (cached)" in text and text.count("(cached)") == 1


def test_backends_add_with_cpu_and_memory_and_status_shows_their_use() -> None:
    fake = FakeServer()
    res = run(
        fake,
        "backends",
        "add",
        "--addr",
        "tcp://big:1",
        "--arch",
        "x86_64",
        "--cpu",
        "8",
        "--memory",
        "32Gi",
    )
    assert res.code == 0, res
    assert fake.backends["tcp://big:1"] == AddBackendRequest(
        addr="tcp://big:1", arch="x86_64", cpu="8", memory="32Gi"
    )
    res = run(fake, "backends", "add", "--addr", "tcp://x:1", "--arch", "x86_64", "--cpu", "lots")
    assert res.code == 2 and "'lots' is not a quantity" in res.err
    assert "tcp://x:1" not in fake.backends
    res = run(fake, "backends", "status")
    assert res.code == 0, res
    assert "2/8" in res.out and "4Gi/32Gi" in res.out
    assert "kept" in res.out  # the STATE cell (wrapped in the table)
    data = json.loads(run(fake, "backends", "status", "-o", "json").out)
    big = data["backends"][0]
    assert (big["cpu"], big["cpuInUse"], big["reservedFor"]) == ("8", "2", "bld-0001/big")


def test_the_token_goes_in_every_request_from_the_flag_or_the_environment() -> None:
    fake = FakeServer()
    assert run(fake, "list", "--token", "mlg_flag", env={"MELANGE_TOKEN": None}).code == 0
    assert run(fake, "backends", "list", env={"MELANGE_TOKEN": "mlg_env"}).code == 0
    # the flag wins over the environment
    assert run(fake, "list", "--token", "mlg_flag2", env={"MELANGE_TOKEN": "mlg_env"}).code == 0
    assert run(fake, "list", env={"MELANGE_TOKEN": None}).code == 0
    seen = [r.headers.get("authorization") for r in fake.requests]
    assert seen == ["Bearer mlg_flag", "Bearer mlg_env", "Bearer mlg_flag2", None]


def test_a_token_with_spaces_is_refused_before_any_request() -> None:
    fake = FakeServer()
    out = run(fake, "list", "--token", "mlg_a b", env={"MELANGE_TOKEN": None})
    assert out.code == 2 and "a token is one word" in out.err
    assert fake.requests == []


def test_a_refused_token_is_exit_2_with_the_servers_message() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return _error(401, "the bearer token is not valid (unknown or revoked)")

    out = run(None, "list", "--token", "mlg_x", transport=httpx.MockTransport(refuse))
    assert out.code == 2
    assert "the bearer token is not valid (unknown or revoked) (HTTP 401)" in out.err
    assert "mlg_x" not in out.err + out.out


def test_status_and_list_show_who_submitted_and_the_commit() -> None:
    fake = FakeServer()
    fake.builds["bld-who"] = BuildOut(
        id="bld-who",
        status="success",
        packages=[
            _package("p", "package: {name: p}\n", []).model_copy(update={"status": "success"})
        ],
        spec=SpecOut(),
        created_at=T0,
        started_at=None,
        finished_at=None,
        submitted_by="ci-bot",
        source_commit="ab" * 20,
    )
    status = run(fake, "status", "bld-who")
    assert "Submitted by:" in status.out and "ci-bot" in status.out
    assert "ab" * 20 in status.out
    listing = run(fake, "list")
    assert "SUBMITTED BY" in listing.out and "ci-bot" in listing.out
