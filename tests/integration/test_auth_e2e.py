"""Who may do what, on a real server process (SQLite store, real buildkitd): tokens
made with ``melange-server tokens create`` against the store the server runs on, no
token → 401 on submit, cancel, backends add/remove; a ``read`` token → 403 on submit;
a ``submit`` token cannot add a backend or cancel another's build, but cancels its own;
an admin can do both; a revoked or an expired token → 401 at once; ``/repo`` readable
anonymously; the CLI's ``--token`` and ``MELANGE_TOKEN``; no secret in the server's log.
The same rules route by route, in-process: tests/unit/api/test_auth_routes.py."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from melange2.farm.local import FarmEnv
from tests.integration.test_server_e2e import Server, config, submit, wait

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent.parent
SERVER = str(ROOT / ".venv" / "bin" / "melange-server")
M2 = str(ROOT / ".venv" / "bin" / "melange2")
BACKEND = {"addr": "tcp://127.0.0.1:1", "arch": "x86_64"}


@pytest.fixture(scope="module")
def server(farm: FarmEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(farm, tmp_path_factory.mktemp("auth"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def tokens(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """``melange-server tokens ARGS`` on the running server's store."""
    return subprocess.run(
        [SERVER, "tokens", *args, "--data-dir", str(server.root / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def create(server: Server, name: str, role: str, *more: str) -> str:
    """A token made by the operator's command: its secret is the last line."""
    out = tokens(server, "create", "--name", name, "--role", role, *more).stdout
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("mlg_"), out
    return secret


def refused(resp: httpx.Response, status: int, *needles: str) -> None:
    assert resp.status_code == status, (resp.request.method, resp.request.url, resp.text)
    error = resp.json()["error"]
    for needle in needles:
        assert needle in error, error


def test_roles_on_a_real_server(server: Server) -> None:
    reader = create(server, "e2e-reader", "read")
    alice = create(server, "alice", "submit")
    bob = create(server, "bob", "submit")
    slow = config("auth-slow", script="sleep 60")
    with (
        server.client(token=None) as anonymous,
        server.client(token=reader) as read,
        server.client(token=alice) as a,
        server.client(token=bob) as b,
        server.client() as admin,
    ):
        # no token: 401 on submit, cancel, backends add/remove; with the challenge
        no = anonymous.post("/api/v1/builds", json={"config_yaml": slow})
        refused(no, 401, "authentication required")
        assert no.headers["www-authenticate"].startswith("Bearer")
        build_id = submit(a, config_yaml=slow)
        quick = submit(a, config_yaml=config("auth-quick"))
        refused(anonymous.post(f"/api/v1/builds/{build_id}/cancel"), 401)
        refused(anonymous.post("/api/v1/backends", json=BACKEND), 401)
        refused(
            anonymous.request("DELETE", "/api/v1/backends", json={"addr": BACKEND["addr"]}), 401
        )
        refused(anonymous.get(f"/api/v1/builds/{build_id}"), 401)  # no --public-read
        # read: reads everything, submits nothing
        assert read.get(f"/api/v1/builds/{build_id}").json()["submitted_by"] == "alice"
        assert read.get("/api/v1/backends").status_code == 200
        refused(read.post("/api/v1/builds", json={"config_yaml": slow}), 403, "submit role")
        # submit: not a backend, not another's build
        refused(b.post("/api/v1/backends", json=BACKEND), 403, "admin role")
        refused(b.post(f"/api/v1/builds/{build_id}/cancel"), 403, "alice")
        assert a.get(f"/api/v1/builds/{build_id}").json()["status"] in ("pending", "running")
        # its own, yes
        own = submit(b, config_yaml=config("auth-own", script="sleep 60"))
        assert b.post(f"/api/v1/builds/{own}/cancel").status_code == 200
        assert wait(b, own)["status"] == "cancelled"
        # admin: anyone's build, backends
        assert admin.post(f"/api/v1/builds/{build_id}/cancel").status_code == 200
        assert wait(admin, build_id)["status"] == "cancelled"
        added = admin.post("/api/v1/backends", json=BACKEND)
        assert added.status_code == 201, added.text
        removed = admin.request("DELETE", "/api/v1/backends", json={"addr": BACKEND["addr"]})
        assert removed.status_code == 204, removed.text
        # the repository is anyone's
        assert wait(a, quick)["status"] == "success"
        assert anonymous.get("/healthz").status_code == 200
        key = anonymous.get("/repo/keys/melange2.rsa.pub")
        assert key.status_code == 200 and b"PUBLIC KEY" in key.content
        assert anonymous.get("/repo/x86_64/APKINDEX.tar.gz").status_code == 200
    log = (server.root / "server.log").read_text()
    for secret in (reader, alice, bob, server.token):
        assert secret not in log
        assert secret[4:20] not in log  # nor a piece of one


def test_revoked_and_expired_tokens_are_refused_at_once(server: Server) -> None:
    brief = create(server, "brief", "read", "--expires", "15s")
    with server.client(token=brief) as e:
        assert e.get("/api/v1/builds").status_code == 200
    carol = create(server, "carol", "read")
    listed = tokens(server, "list").stdout
    assert "carol" in listed and "brief" in listed and carol not in listed
    with server.client(token=carol) as c, server.client(token=brief) as e:
        assert c.get("/api/v1/builds").status_code == 200
        assert "revoked token" in tokens(server, "revoke", "carol").stdout
        refused(c.get("/api/v1/builds"), 401)  # the running server sees it at once
        listing = json.loads(tokens(server, "list", "-o", "json").stdout)["tokens"]
        (expires,) = [t["expires_at"] for t in listing if t["name"] == "brief"]
        wait_s = (datetime.fromisoformat(expires) - datetime.now(UTC)).total_seconds()
        assert wait_s <= 15  # (the machine may be slow enough for it to be past already)
        time.sleep(max(0.0, wait_s) + 0.5)
        refused(e.get("/api/v1/builds"), 401, "'brief' expired at")
    states = tokens(server, "list").stdout
    assert any("carol" in line and "revoked" in line for line in states.splitlines())
    assert any("brief" in line and "expired" in line for line in states.splitlines())
    with server.client(token="mlg_" + "x" * 43) as unknown:
        refused(unknown.get("/api/v1/builds"), 401)


def test_the_cli_sends_its_token(server: Server) -> None:
    dave = create(server, "dave", "submit")
    argv = [M2, "remote", "list", "--server", server.url, "-o", "json"]
    env = {k: v for k, v in os.environ.items() if k != "MELANGE_TOKEN"}
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 2 and "authentication required" in run.stdout + run.stderr
    for extra, environ in (([], {**env, "MELANGE_TOKEN": dave}), (["--token", dave], env)):
        ok = subprocess.run(
            [*argv, *extra], capture_output=True, text=True, timeout=60, env=environ
        )
        assert ok.returncode == 0, ok.stderr
        assert dave not in ok.stdout + ok.stderr
    refused_add = subprocess.run(
        [
            M2,
            "remote",
            "backends",
            "add",
            "--server",
            server.url,
            "--token",
            dave,
            "--addr",
            BACKEND["addr"],
            "--arch",
            "x86_64",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused_add.returncode == 2, refused_add
    assert "admin role" in refused_add.stdout + refused_add.stderr
