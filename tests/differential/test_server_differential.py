"""The server builds exactly this way: the cases marked ``server=true`` are submitted to a
real melange-server (one dependency-ordered submission, with their sources and
pipelines), and every APK it stores must equal melange's by the same comparison as the
local suite (:mod:`tests.differential.judge`), with only the server's repositories
excused (:data:`~tests.differential.judge.SERVER_NOISE`)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from melange2.auth import Role
from melange2.farm import processes
from melange2.farm.local import FarmEnv, make_token, start_server
from tests.differential.cases import Case, discover
from tests.differential.conftest import Builds
from tests.differential.judge import NOISE, SERVER_NOISE, assert_same
from tests.differential.oracle import Outcome

pytestmark = [pytest.mark.differential, pytest.mark.e2e]

SERVER_CASES = [c for c in discover() if c.server]


@dataclasses.dataclass
class ServerRun:
    """One submission of every server case, and what the server made of each package."""

    url: str
    build: dict[str, Any]

    def outcome(self, case: Case) -> Outcome:
        job = next(p for p in self.build["packages"] if p["name"] == case.package)
        return Outcome(
            case=case.name,
            returncode=0 if job["status"] == "success" else 1,
            out_dir=Path(job["output_path"]),
            log=f"{job['status']}: {job.get('error') or ''} (log {job.get('log_path')})",
        )


def _files(directory: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            out[path.relative_to(directory).as_posix()] = {
                "base64": base64.b64encode(path.read_bytes()).decode()
            }
    return out


@pytest.fixture(scope="module")
def server_run(
    builds: Builds, farm: FarmEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerRun]:
    root = tmp_path_factory.mktemp("differential-server")
    inputs = builds.inputs
    env = dataclasses.replace(
        farm,
        extra={
            **farm.extra,
            "BOOTSTRAP_REPO": str(inputs.bootstrap_repo),
            "BOOTSTRAP_KEY": str(inputs.bootstrap_key),
        },
    )
    token = asyncio.run(make_token(root / "data", name="differential", role=Role.SUBMIT))
    url = asyncio.run(
        start_server(
            env,
            data_dir=root / "data",
            output_dir=root / "output",
            pid_file=root / "server.pid",
            log_file=root / "server.log",
            port=processes.free_port(),
            extra_args=["--signing-key", str(inputs.signing_key)],
        )
    )
    try:
        staged = [builds.staged(c) for c in SERVER_CASES]
        body: dict[str, Any] = {
            "configs": [c.config.read_text() for c in staged],
            "mode": "dag",
            "source_files": {c.package: _files(c.source_dir) for c in staged if c.source_dir},
            # keys relative to pipelines/, as `melange2 remote submit` sends them
            "pipelines": {
                path.relative_to(c.pipeline_dir).as_posix(): path.read_text()
                for c in staged
                if c.pipeline_dir
                for path in sorted(c.pipeline_dir.rglob("*.yaml"))
            },
        }
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, timeout=30, headers=auth) as client:
            resp = client.post("/api/v1/builds", json=body)
            assert resp.status_code == 201, resp.text
            build_id = resp.json()["id"]
            deadline = time.monotonic() + 600
            while True:
                build = client.get(f"/api/v1/builds/{build_id}").json()
                if build["status"] not in ("pending", "running"):
                    break
                assert time.monotonic() < deadline, f"build did not finish: {build}"
                time.sleep(0.5)
        yield ServerRun(url=url, build=build)
    finally:
        processes.stop(root / "server.pid")


@pytest.mark.parametrize("case", SERVER_CASES, ids=[c.name for c in SERVER_CASES])
def test_server_builds_what_melange_builds(
    case: Case, builds: Builds, server_run: ServerRun
) -> None:
    # the server sets no SOURCE_DATE_EPOCH and records the config as <name>.yaml
    melange = builds.melange(case, sde=0, relative=True)
    ours = server_run.outcome(case)
    noise = NOISE + SERVER_NOISE
    assert_same(case, melange, ours, noise=noise)


def test_there_are_server_cases() -> None:
    assert len(SERVER_CASES) >= 3, "mark a few cases server=true (tests/differential/cases.py)"
