"""Secrets and time limits end to end (issue 17, items 4 and 5): a real server with a
``SECRET_ENV_*`` variable, real buildkitd daemons.

* A step prints a server secret and a build's own secret: the log shows ``***``, the
  step really had the values (their sha256 is printed), ``GET`` shows names only, and a
  second build with another value has the same input digest (its packages are reused).
* A step ``sleep 3600`` under ``timeout_s: 5`` fails in about 5 s ``timed out``, naming
  the step; its process is gone from the daemon's machine; the backends' circuits count
  nothing; the next build runs.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from melange2.farm.local import FarmEnv
from tests.integration.test_server_e2e import Server, by_name, config, submit, wait

pytestmark = pytest.mark.e2e

FARM_SECRET = "farm-" + uuid.uuid4().hex
PRINT_SECRETS = (
    'echo "farm token: $FARM_TOKEN"\n'
    'echo "build token: $BUILD_TOKEN"\n'
    'printf %s "$FARM_TOKEN" | sha256sum\n'
    'printf %s "$BUILD_TOKEN" | sha256sum\n'
    "cat data.txt"
)


@pytest.fixture(scope="module")
def server(farm: FarmEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(farm, tmp_path_factory.mktemp("limits"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SECRET_ENV_FARM_TOKEN", FARM_SECRET)
        srv.start()  # the server process inherits the variable
    try:
        yield srv
    finally:
        srv.stop()


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def test_secrets_are_masked_hidden_and_change_no_digest(server: Server) -> None:
    first_value, second_value = "b1-" + uuid.uuid4().hex, "b2-" + uuid.uuid4().hex
    text = config("s-secret", script=PRINT_SECRETS)
    with server.client() as client:
        # sources too: the solve's one session serves both
        sources = {"s-secret": {"data.txt": "sources-arrived\n"}}
        build_id = submit(
            client, config_yaml=text, source_files=sources, secrets={"BUILD_TOKEN": first_value}
        )
        build = wait(client, build_id)
        assert build["status"] == "success", build["packages"]
        shown = client.get(f"/api/v1/builds/{build_id}")
        assert shown.json()["spec"]["secrets"] == {"BUILD_TOKEN": "***"}
        assert first_value not in shown.text and FARM_SECRET not in shown.text
        log = client.get(f"/api/v1/builds/{build_id}/packages/s-secret/logs").text
        assert "farm token: ***" in log and "build token: ***" in log, log
        assert first_value not in log and FARM_SECRET not in log
        # the step had the real values
        assert _sha(FARM_SECRET) in log and _sha(first_value) in log
        assert "sources-arrived" in log
        digest = by_name(build)["s-secret"]["input_digest"]
        assert digest

        again_id = submit(
            client, config_yaml=text, source_files=sources, secrets={"BUILD_TOKEN": second_value}
        )
        again = by_name(wait(client, again_id))["s-secret"]
        assert again["status"] == "success"
        assert again["input_digest"] == digest
        assert again["cached"] is True  # same inputs: the first build's packages


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def test_a_step_past_its_timeout_fails_and_its_process_is_gone(server: Server) -> None:
    marker = "limits-" + uuid.uuid4().hex
    # the marker is in the step's script, so in its shell's command line
    text = config("t-sleep", script=f"echo {marker}\nsleep 3600")
    with server.client() as client:
        began = time.monotonic()
        build_id = submit(client, config_yaml=text, timeout_s=5)
        seen = False
        while time.monotonic() - began < 60:
            seen = seen or bool(_processes_with(marker))
            status = client.get(f"/api/v1/builds/{build_id}").json()["status"]
            if status not in ("pending", "running"):
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - began
        build = wait(client, build_id, timeout=5)
        job = by_name(build)["t-sleep"]
        assert job["status"] == "failed", job
        assert elapsed < 30, elapsed
        assert job["error"].startswith("timed out after 5 s (timeout_s)"), job["error"]
        assert "in step 'build t-sleep'" in job["error"], job["error"]
        log = client.get(f"/api/v1/builds/{build_id}/packages/t-sleep/logs").text
        assert "timed out after 5 s" in log
        assert seen, "the step's process never showed up"
        deadline = time.monotonic() + 15
        while _processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _processes_with(marker), "the step's process outlived its timeout"

        backends = client.get("/api/v1/backends/status").json()["backends"]
        assert all(b["failures"] == 0 and b["circuitState"] == "closed" for b in backends)
        assert all(b["activeJobs"] == 0 for b in backends)

        after = wait(client, submit(client, config_yaml=config("t-after")))
        assert after["status"] == "success", after["packages"]
