"""Artifacts, logs and publication end to end on local storage (issue 6): a log followed
live shows a step's output before the package ends; a capped log says where it was cut;
artifacts are listed and downloaded; apko installs the farm's packages from the
server's /repo with the farm's public key; ``publish: build`` keeps a build's packages
out of the farm's repository until the whole build succeeded."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from melange2.apk.index import read_index_tar_gz
from melange2.farm.local import FarmEnv
from tests.conftest import ROOT, TOOLS
from tests.integration.test_server_e2e import Server, by_name, config, submit, wait

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(farm: FarmEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(farm, tmp_path_factory.mktemp("artifacts"), ["--max-log-bytes", "4096"])
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _names_in_repo(client: httpx.Client) -> set[str]:
    resp = client.get("/repo/x86_64/APKINDEX.tar.gz")
    if resp.status_code == 404:
        return set()
    assert resp.status_code == 200
    return {r.name for r in read_index_tar_gz(io.BytesIO(resp.content)).records}


def test_follow_shows_output_before_the_package_ends(server: Server) -> None:
    script = "echo first-line-$((6*7))\nsleep 6\necho last-line"
    with server.client() as client:
        build_id = submit(client, configs=[config("l-follow", script=script)])
        seen: list[tuple[float, bytes]] = []
        cli = str(ROOT / ".venv" / "bin" / "melange2")

        def follow() -> None:  # `melange2 remote logs -f`, as a user runs it
            argv = [cli, "remote", "logs", build_id, "l-follow", "-f", "--server", server.url]
            argv += ["--token", server.token]
            with subprocess.Popen(argv, stdout=subprocess.PIPE) as proc:
                assert proc.stdout is not None
                for line in iter(proc.stdout.readline, b""):
                    seen.append((time.monotonic(), line))

        reader = threading.Thread(target=follow)
        deadline = time.monotonic() + 120
        while by_name(client.get(f"/api/v1/builds/{build_id}").json())["l-follow"]["status"] in (
            "pending",
            "blocked",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        reader.start()
        while not any(b"first-line-42" in c for _, c in seen):
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
        at = time.monotonic()
        package = by_name(client.get(f"/api/v1/builds/{build_id}").json())["l-follow"]
        assert package["status"] == "running"  # seen while the step still sleeps
        build = wait(client, build_id)
        reader.join(30)
        assert not reader.is_alive(), "follow did not end with the package"
        text = b"".join(c for _, c in seen).decode()
        assert "last-line" in text and text.index("first-line-42") < text.index("last-line")
        assert build["status"] == "success"
        assert package["finished_at"] is None and at > 0
        # Server-Sent Events: data lines, then the end event with the package's status
        with server.client() as http:
            events = http.get(
                f"/api/v1/builds/{build_id}/packages/l-follow/logs?follow=true",
                headers={"Accept": "text/event-stream"},
            )
        assert events.headers["content-type"].startswith("text/event-stream")
        assert "data: first-line-42\n" in events.text
        assert events.text.endswith("event: end\ndata: success\n\n")


def test_a_log_over_the_cap_is_cut_with_a_marker(server: Server) -> None:
    script = "i=0\nwhile [ $i -lt 400 ]; do echo noisy-line-$i; i=$((i+1)); done"
    with server.client() as client:
        build = wait(client, submit(client, configs=[config("l-noisy", script=script)]))
        assert build["status"] == "success", build
        log = client.get(f"/api/v1/builds/{build['id']}/packages/l-noisy/logs").text
        assert "log cut here: it reached the limit of 4096 bytes" in log
        assert "noisy-line-399" not in log
        assert len(log.encode()) < 4096 + 400


def test_artifacts_are_listed_downloaded_and_404_when_absent(
    server: Server, tmp_path: Path
) -> None:
    with server.client() as client:
        build = wait(client, submit(client, configs=[config("a-pkg")]))
        assert build["status"] == "success", build
        base = f"/api/v1/builds/{build['id']}/packages/a-pkg"
        listed = client.get(f"{base}/artifacts").json()["artifacts"]
        paths = [a["path"] for a in listed]
        assert paths == ["x86_64/APKINDEX.tar.gz", "x86_64/a-pkg-1.0.0-r0.apk"]
        apk = next(a for a in listed if a["path"].endswith(".apk"))
        assert Path(apk["location"]).is_file()
        got = client.get(apk["url"])
        assert got.status_code == 200 and got.content == Path(apk["location"]).read_bytes()
        assert client.get(f"{base}/artifacts/x86_64/nope.apk").status_code == 404
        bad = client.get(f"{base}/artifacts/x86_64/..%2F..%2Fetc")
        assert bad.status_code in (400, 404) and "error" in bad.json()
        assert client.get(f"{base}/logs/../../x").status_code == 404
        assert client.get("/repo/../data/melange2.rsa").status_code == 404
        assert client.get("/repo/x86_64/missing.apk").status_code == 404
        # the CLI downloads them
        out = tmp_path / "dl"
        subprocess.run(
            [
                str(TOOLS.parent / ".venv" / "bin" / "melange2"),
                "remote",
                "artifacts",
                build["id"],
                "a-pkg",
                "--server",
                server.url,
                "--download",
                str(out),
            ],
            check=True,
            capture_output=True,
            env={**os.environ, "MELANGE_TOKEN": server.token},  # the token from the environment
        )
        assert (out / "x86_64" / "a-pkg-1.0.0-r0.apk").read_bytes() == got.content


def test_apko_installs_the_farms_packages_from_its_repository(
    server: Server, tmp_path: Path
) -> None:
    apko = TOOLS / "bin" / "apko"
    assert apko.exists(), "apko is built by `make setup` (scripts/build-tools.sh)"
    with server.client() as client:
        build = wait(client, submit(client, configs=[config("k-tool")]))
        assert build["status"] == "success", build
        keys = client.get("/repo/keys/melange2.rsa.pub")
        assert keys.status_code == 200
        head = client.head("/repo/x86_64/APKINDEX.tar.gz")
        assert head.status_code == 200 and int(head.headers["content-length"]) > 0
    key = tmp_path / "melange2.rsa.pub"
    key.write_bytes(keys.content)
    bootstrap = server.farm.extra["BOOTSTRAP_REPO"]
    boot_key = server.farm.extra["BOOTSTRAP_KEY"]
    (tmp_path / "apko.yaml").write_text(
        "contents:\n"
        f"  repositories:\n    - {server.url}/repo\n    - {bootstrap}\n"
        f"  keyring:\n    - {key}\n    - {boot_key}\n"
        "  packages:\n    - busybox\n    - k-tool\n"
    )
    result = subprocess.run(
        [str(apko), "build-minirootfs", "apko.yaml", "rootfs.tar"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    listing = subprocess.run(
        ["tar", "tf", str(tmp_path / "rootfs.tar")], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "usr/share/k-tool/marker" in listing
    installed = subprocess.run(
        ["tar", "xOf", str(tmp_path / "rootfs.tar"), "usr/lib/apk/db/installed"],
        capture_output=True,
        text=True,
    )
    db = (
        installed.stdout
        or subprocess.run(
            ["tar", "xOf", str(tmp_path / "rootfs.tar"), "lib/apk/db/installed"],
            capture_output=True,
            text=True,
        ).stdout
    )
    assert "P:k-tool" in db
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_publish_on_build_success_waits_for_the_whole_build(server: Server) -> None:
    with server.client() as client:
        failing = [
            config("p-good"),
            config("p-bad", script="exit 3"),
        ]
        build = wait(client, submit(client, configs=failing, publish="build"))
        assert build["status"] == "partial"
        names = _names_in_repo(client)
        assert "p-good" not in names  # built, staged, but the build did not succeed
        ok = [config("p-lib"), config("p-app", needs=("p-lib",))]
        build = wait(client, submit(client, configs=ok, mode="dag", publish="build"))
        assert build["status"] == "success", build
        assert {"p-lib", "p-app"} <= _names_in_repo(client)
        # and the default publishes each package as it succeeds, whatever the rest does
        build = wait(
            client, submit(client, configs=[config("p-eager"), config("p-fails", script="exit 1")])
        )
        assert build["status"] == "partial"
        assert "p-eager" in _names_in_repo(client)
