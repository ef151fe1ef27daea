"""Hostile input cannot hurt the farm (issue 12), against a real melange-server process
on the local farm (real buildkitd, registry, SQLite, git daemon): every hostile request
is a clear JSON 4xx, nothing is half-created, the process lives (same pid) and its
memory stays near its baseline, nothing outside a clone is read, a silent git host
stalls nothing else, published packages are never replaced silently, env values never
come back; and the server still dispatches at the end. When the store fails under the
scheduler, /healthz says so and the process exits 3."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from melange2.farm import processes
from melange2.farm.local import FarmEnv
from tests.integration.test_server_e2e import Server, by_name, config, submit, wait

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]


@pytest.fixture(scope="module")
def server(farm: FarmEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(
        farm,
        tmp_path_factory.mktemp("hostile"),
        # the git daemon and the silent host of these tests are on loopback
        [
            *("--git-timeout", "6", "--git-connect-timeout", "3", "--git-jobs", "2"),
            *("--git-allow", "127.0.0.1"),
        ],
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _pid(server: Server) -> int:
    pid = processes.read_pid(server.root / "server.pid")
    assert pid is not None
    return pid


def _rss(server: Server) -> int:
    return int(psutil.Process(_pid(server)).memory_info().rss)


@pytest.fixture(scope="module")
def baseline(server: Server) -> int:
    """The server's memory once it served a build (imports done, caches warm)."""
    with server.client() as client:
        assert wait(client, submit(client, config_yaml=config("warm-up")))["status"] == "success"
    return _rss(server)


def _count(client: httpx.Client) -> int:
    return len(client.get("/api/v1/builds", params={"limit": 1000}).json()["builds"])


def _post_raw(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post("/api/v1/builds", content=body, headers={"content-type": "application/json"})


def _clear_4xx(resp: httpx.Response, status: int, *needles: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "details"} and body["error"], body
    for needle in needles:
        assert needle in body["error"], body["error"]
    error: str = body["error"]
    return error


def _deep(n: int) -> str:
    return "package: {name: deep, version: 1.0.0}\nvars:\n  x: " + "[" * n + "]" * n


HOSTILE: list[tuple[str, bytes, int, tuple[str, ...]]] = [
    (
        "100,000 nested brackets",
        json.dumps({"config_yaml": _deep(100_000)}).encode(),
        400,
        ("nested more than 100 levels deep",),
    ),
    (
        "a lone surrogate in backend_selector",
        b'{"config_yaml": "x", "backend_selector": {"tier": "\\ud800"}}',
        400,
        ("backend_selector", "lone surrogate"),
    ),
    (
        "a lone surrogate as an env name",
        b'{"config_yaml": "x", "env": {"\\ud800": "v"}}',
        400,
        ("env", "lone surrogate"),
    ),
    (
        "a lone surrogate in config_yaml",
        b'{"config_yaml": "package: \\ud800"}',
        400,
        ("config_yaml", "lone surrogate"),
    ),
    (
        "NUL in a source file name",
        b'{"config_yaml": "x", "source_files": {"p": {"a\\u0000": "x"}}}',
        400,
        ("NUL",),
    ),
    (
        "a name storage refuses",
        json.dumps({"config_yaml": config("a..b")}).encode(),
        400,
        ("package name 'a..b'",),
    ),
    (
        "a 5,000-character name",
        json.dumps({"config_yaml": config("n" * 5000)}).encode(),
        400,
        ("longer than 128",),
    ),
    (
        "non-ASCII digits in a name",
        json.dumps({"config_yaml": config("x\u0661\u0662")}).encode(),
        400,
        ("ASCII letters and digits",),
    ),
    (
        "a version that climbs out",
        json.dumps({"config_yaml": config("v").replace("1.0.0", "../../../x")}).encode(),
        400,
        ("package version",),
    ),
    (
        "conflicting source paths",
        json.dumps(
            {"config_yaml": config("cs"), "source_files": {"cs": {"a": "1", "a/b": "2"}}}
        ).encode(),
        400,
        ("is a file, so it cannot also be the directory",),
    ),
    (
        "a repository that is an option",
        json.dumps({"git_source": {"repository": "--upload-pack=touch /tmp/pwned"}}).encode(),
        400,
        ("git_source",),
    ),
    (
        "a local repository",
        json.dumps({"git_source": {"repository": "/etc"}}).encode(),
        400,
        ("--git-allow-local",),
    ),
    (
        "a file:// repository",
        json.dumps({"git_source": {"repository": "file:///"}}).encode(),
        400,
        ("--git-allow-local",),
    ),
    (
        "a keyring URL the operator did not allow",
        json.dumps(
            {
                "config_yaml": config("kr").replace(
                    "environment:\n  contents:\n",
                    "environment:\n  contents:\n    keyring:\n"
                    "      - http://169.254.169.254/latest/meta-data/k.rsa.pub\n",
                )
            }
        ).encode(),
        400,
        ("does not fetch", "--fetch-allow"),
    ),
    (
        "the server's own key as a keyring",
        json.dumps(
            {
                "config_yaml": config("kk").replace(
                    "environment:\n  contents:\n",
                    "environment:\n  contents:\n    keyring:\n"
                    "      - /var/lib/melange/data/melange2.rsa\n",
                )
            }
        ).encode(),
        400,
        ("local path",),
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "needles"),
    [pytest.param(b, s, n, id=name) for name, b, s, n in HOSTILE],
)
def test_hostile_requests_are_clear_4xx_and_the_server_lives(
    server: Server, baseline: int, body: bytes, status: int, needles: tuple[str, ...]
) -> None:
    pid = _pid(server)
    with server.client() as client:
        before = _count(client)
        error = _clear_4xx(_post_raw(client, body), status, *needles)
        assert str(server.root) not in error and "/tmp/melange2-" not in error
        assert _count(client) == before  # nothing half-created
        assert client.get("/healthz").json() == {"status": "ok"}
    assert _pid(server) == pid and processes.pid_alive(pid)
    assert not Path("/tmp/pwned").exists()


def test_a_chunked_body_obeys_the_limit_and_memory_stays_near_baseline(
    server: Server, baseline: int
) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    head = (
        b"POST /api/v1/builds HTTP/1.1\r\nHost: farm\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nAuthorization: Bearer "
        + server.token.encode()
        + b"\r\n\r\n"
    )
    chunk = b"x" * (1 << 16)
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:

        def send() -> None:
            nonlocal sent
            try:
                sock.sendall(head + b'11\r\n{"config_yaml": "\r\n')
                while sent < 100 * MiB:
                    sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    sent += len(chunk)
                sock.sendall(b'2\r\n"}\r\n0\r\n\r\n')
            except OSError:
                pass  # the server answered and closed: what it should do

        sender = threading.Thread(target=send)
        sender.start()
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        sock.shutdown(socket.SHUT_RDWR)
        sender.join(timeout=30)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"over the limit of 2097152 bytes" in answer
    assert sent < 100 * MiB  # refused while it arrived, not after
    assert _rss(server) - baseline < 64 * MiB


class _Silent:
    """A TCP server that accepts connections and never answers (a stalled git host)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_six_clones_to_a_host_that_never_answers_stall_nothing_else(server: Server) -> None:
    silent = _Silent()
    try:
        url = f"http://127.0.0.1:{silent.port}/distro.git"
        with server.client() as client, ThreadPoolExecutor(6) as pool:
            clones = [
                pool.submit(client.post, "/api/v1/builds", json={"git_source": {"repository": url}})
                for _ in range(6)
            ]
            time.sleep(1.0)
            started = time.monotonic()
            listing = client.get("/api/v1/builds", params={"limit": 5})
            plan = client.post(
                "/api/v1/builds", json={"config_yaml": config("meanwhile"), "dry_run": True}
            )
            health = client.get("/healthz")
            took = time.monotonic() - started
            answers = [c.result(timeout=60) for c in clones]
        assert listing.status_code == 200 and plan.status_code == 200, plan.text
        assert health.status_code == 200
        assert took < 3.0, took  # nothing waited for git
        for resp in answers:
            assert resp.status_code in (400, 429), resp.text
            message = resp.json()["error"]
            assert "took longer than 6 s" in message or "Operation too slow" in message
    finally:
        silent.close()


@pytest.fixture(scope="module")
def git_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``git daemon`` on loopback, serving the repositories under its base directory."""
    base = tmp_path_factory.mktemp("git-daemon")
    port = processes.free_port()
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--export-all",
            "--reuseaddr",
            f"--base-path={base}",
            f"--port={port}",
            "--listen=127.0.0.1",
            str(base),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "git daemon did not start"
                time.sleep(0.1)
        yield f"git://127.0.0.1:{port}", base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_repository_cannot_read_the_servers_files_through_symlinks(
    server: Server, git_daemon: tuple[str, Path]
) -> None:
    url, base = git_daemon
    data_dir = server.root / "data"
    repo = base / "hostile"
    (repo / "pkgs").mkdir(parents=True)
    (repo / "pkgs" / "ok.yaml").write_text(config("from-git"))
    (repo / "pkgs" / "passwd.yaml").symlink_to("/etc/passwd")
    (repo / "pkgs" / "key.yaml").symlink_to(data_dir / "melange2.rsa")  # the farm's key
    (repo / "data").symlink_to(data_dir)
    for argv in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run([*GIT, *argv], cwd=repo, check=True, capture_output=True)
    key = (data_dir / "melange2.rsa").read_text()
    with server.client() as client:
        before = _count(client)

        def attempt(path: str, pattern: str) -> str:
            source = {"repository": f"{url}/hostile", "path": path, "pattern": pattern}
            error = _clear_4xx(
                client.post("/api/v1/builds", json={"git_source": source}), 400, "git_source"
            )
            assert "root:" not in error and "PRIVATE KEY" not in error and key[40:80] not in error
            assert str(server.root) not in error
            return error

        passwd = attempt("pkgs", "passwd.yaml")
        absent = attempt("pkgs", "absent.yaml")
        farm_key = attempt("pkgs", "key.yaml")
        # refused and missing answer alike: nothing tells whether the target exists
        assert passwd.replace("passwd", "?") == absent.replace("absent", "?")
        assert farm_key.replace("key", "?") == absent.replace("absent", "?")
        through_dir = attempt("data", "*")
        no_dir = attempt("nothing", "*")
        assert through_dir.replace("'data'", "?") == no_dir.replace("'nothing'", "?")
        assert _count(client) == before
        # the same repository's real config builds
        resp = client.post(
            "/api/v1/builds",
            json={
                "git_source": {"repository": f"{url}/hostile", "path": "pkgs", "pattern": "ok.yaml"}
            },
        )
        assert resp.status_code == 201, resp.text
        assert wait(client, resp.json()["id"])["status"] == "success"


def _index_checksums(client: httpx.Client) -> dict[str, str]:
    import io

    from melange2.apk.index import read_index_tar_gz

    resp = client.get("/repo/x86_64/APKINDEX.tar.gz")
    assert resp.status_code == 200
    records = read_index_tar_gz(io.BytesIO(resp.content)).records
    return {r.filename: r.checksum_field for r in records}


def test_published_packages_are_never_replaced_silently(server: Server) -> None:
    changed = "mkdir -p ${{targets.destdir}}/opt\necho other > ${{targets.destdir}}/opt/other"
    name = "imm-1.0.0-r0.apk"
    with server.client() as client:
        first = wait(client, submit(client, config_yaml=config("imm")))
        assert first["status"] == "success", first
        published = _index_checksums(client)[name]
        # the same name, version and epoch with other content: refused, naming the build
        other = wait(client, submit(client, config_yaml=config("imm", script=changed)))
        job = by_name(other)["imm"]
        assert other["status"] == "failed" and job["status"] == "failed"
        assert f"published by build {first['id']} (package imm)" in job["error"]
        assert "replace: true" in job["error"]
        assert _index_checksums(client)[name] == published  # untouched
        # the same bytes again: fine, nothing changes
        again = wait(client, submit(client, config_yaml=config("imm"), force=True))
        assert again["status"] == "success", again
        assert _index_checksums(client)[name] == published
        # asked for: replaced, and the replacement is in the log with both checksums
        replaced = wait(
            client, submit(client, config_yaml=config("imm", script=changed), replace=True)
        )
        assert replaced["status"] == "success", replaced
        now = _index_checksums(client)[name]
        assert now != published
        log = client.get(f"/api/v1/builds/{replaced['id']}/packages/imm/logs").text
        assert f"replaced x86_64/{name}: {published} from build {first['id']}" in log
        assert now in log
    server_log = (server.root / "server.log").read_text()
    assert f"replaced x86_64/{name}: {published}" in server_log and now in server_log


def test_env_values_come_back_only_to_their_submitter_and_admins(server: Server) -> None:
    submitter = server.make_token("env-submitter", "submit")
    other = server.make_token("env-other", "submit")
    reader = server.make_token("env-reader", "read")
    with server.client(submitter) as client:
        build_id = submit(
            client, config_yaml=config("env-user"), env={"API_TOKEN": "hunter2-secret"}
        )
        mine = client.get(f"/api/v1/builds/{build_id}").json()
        assert mine["spec"]["env"] == {"API_TOKEN": "hunter2-secret"}
        assert mine["submitted_by"] == "env-submitter"
        assert wait(client, build_id)["status"] == "success"
    for token in (other, reader):
        with server.client(token) as client:
            build = client.get(f"/api/v1/builds/{build_id}")
            assert build.json()["spec"]["env"] == {"API_TOKEN": "***"}
            assert "hunter2-secret" not in build.text
            assert "hunter2-secret" not in client.get("/api/v1/builds").text
    with server.client() as admin:
        assert admin.get(f"/api/v1/builds/{build_id}").json()["spec"]["env"] == {
            "API_TOKEN": "hunter2-secret"
        }


def test_errors_name_no_server_path(server: Server) -> None:
    install_dir = str(Path(__file__).resolve().parents[2] / "src")
    with server.client() as client:
        # at submission: a pipeline looked for in the scratch directory and the install
        refused = client.post(
            "/api/v1/builds",
            json={
                "config_yaml": "package: {name: p-missing, version: 1.0.0}\n"
                "pipeline:\n  - uses: nope/x\n",
                "pipelines": {"mine.yaml": "pipeline: []\n"},
            },
        )
        error = _clear_4xx(refused, 400, "unknown pipeline", "pipelines/nope/x.yaml")
        assert "/tmp/" not in error and install_dir not in error
        # at run time: a package whose config is read from the server's data directory
        empty = "package:\n  name: nothing-in\n  version: 1.0.0\npipeline:\n  - runs: 'true'\n"
        build = wait(client, submit(client, config_yaml=empty))
        job = by_name(build)["nothing-in"]
        assert (
            job["status"] == "failed" and "environment.contents.packages is empty" in job["error"]
        )
        assert str(server.root) not in job["error"] and "<data-dir>" in job["error"]
        log = client.get(f"/api/v1/builds/{build['id']}/packages/nothing-in/logs").text
        assert str(server.root) not in log


def test_afterwards_the_server_still_dispatches_and_its_memory_is_near_baseline(
    server: Server, baseline: int
) -> None:
    with server.client() as client:
        build = wait(client, submit(client, configs=[config("after-a"), config("after-b")]))
        assert build["status"] == "success", [
            (p["name"], p["status"], p["error"]) for p in build["packages"]
        ]
        assert client.get("/healthz").json() == {"status": "ok"}
    assert _rss(server) - baseline < 128 * MiB


def test_a_dead_scheduler_makes_healthz_fail_and_the_server_exit(
    farm: FarmEnv, tmp_path: Path
) -> None:
    srv = Server(farm, tmp_path, ["--lease-ttl", "1.5"])
    srv.start()
    pid = _pid(srv)
    try:
        # the store fails under the running server: its table is gone
        with sqlite3.connect(tmp_path / "data" / "melange2.db") as db:
            db.execute("PRAGMA foreign_keys=OFF")
            db.execute("DROP TABLE packages")
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        with srv.client() as client:
            while processes.pid_alive(pid) and time.monotonic() < deadline:
                try:
                    health = client.get("/healthz", timeout=2)
                except httpx.HTTPError:
                    break
                if health.status_code == 503:
                    seen.append(health.json())
                    refused = client.post("/api/v1/builds", json={"config_yaml": config("no")})
                    assert refused.status_code == 503, refused.text
                    break
                time.sleep(0.05)
        assert seen, "healthz never answered 503"
        assert seen[0]["status"] == "failed" and "the scheduler failed" in seen[0]["error"]
        assert "LeasesLost" in seen[0]["error"]
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 3
        assert "stopped: the scheduler failed" in (tmp_path / "server.log").read_text()
    finally:
        srv.stop()
