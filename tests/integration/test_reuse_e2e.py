"""Rebuilds that skip what did not change (issue 7), end to end on real buildkitd:
unchanged -> cached; a changed source file -> rebuilt; a changed dependency -> its
dependents rebuilt, the rest cached; ``force`` rebuilds everything."""

from __future__ import annotations

import base64
import gzip
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from melange2.farm.local import FarmEnv
from tests.integration.test_server_e2e import Server, by_name, config, submit, wait

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(farm: FarmEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(farm, tmp_path_factory.mktemp("reuse"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


_NEW_FILE = (
    "mkdir -p ${{targets.destdir}}/usr/share/r-lib\n"
    "echo new > ${{targets.destdir}}/usr/share/r-lib/extra"
)


def _source(text: str, lib_unused: str = "") -> dict[str, dict[str, Any]]:
    files: dict[str, dict[str, Any]] = {
        "r-app": {"data.txt": {"base64": base64.b64encode(text.encode()).decode()}}
    }
    if lib_unused:
        # a source file r-lib's build never reads: its inputs change, its package does not
        files["r-lib"] = {"unused.txt": lib_unused}
    return files


def _configs(lib_script: str = "true") -> list[str]:
    return [
        config("r-lib", script=lib_script),
        config("r-app", needs=("r-lib",), script="cat data.txt"),
        config("r-other"),
    ]


def _build(client: httpx.Client, **body: Any) -> dict[str, dict[str, Any]]:
    build = wait(client, submit(client, mode="dag", **body))
    problems = [(p["name"], p["status"], p["error"]) for p in build["packages"]]
    assert build["status"] == "success", problems
    packages = by_name(build)
    for p in packages.values():
        p["build_id"] = build["id"]
    return packages


def test_unchanged_packages_are_reused_and_changes_rebuild_only_what_they_touch(
    server: Server,
) -> None:
    with server.client() as client:
        first = _build(client, configs=_configs(), source_files=_source("v1"))
        assert not any(p["cached"] for p in first.values())
        digests = {n: p["input_digest"] for n, p in first.items()}
        assert all(d.startswith("sha256:") and len(d) == 71 for d in digests.values())

        # the same inputs again: nothing is built, the packages are reused when the
        # build is submitted (no backend, no attempt), and the build is over at once
        resp = client.post(
            "/api/v1/builds",
            json={"configs": _configs(), "source_files": _source("v1"), "mode": "dag"},
        )
        assert resp.status_code == 201, resp.text
        at_once = client.get(f"/api/v1/builds/{resp.json()['id']}").json()
        assert at_once["status"] == "success"
        again = by_name(at_once)
        assert {n: p["cached"] for n, p in again.items()} == dict.fromkeys(again, True)
        assert {n: p["input_digest"] for n, p in again.items()} == digests
        assert all(p["attempts"] == [] and p["backend"] is None for p in again.values())
        build_id = at_once["id"]
        log = client.get(f"/api/v1/builds/{build_id}/packages/r-app/logs").text
        assert digests["r-app"] in log
        assert f"inputs unchanged since {first['r-app']['build_id']}/r-app" in log
        assert "reused when the build was submitted" in log
        listed = client.get(f"/api/v1/builds/{build_id}/packages/r-app/artifacts").json()
        assert [a["path"] for a in listed["artifacts"]] == ["x86_64/r-app-1.0.0-r0.apk"]
        apk = client.get(
            f"/api/v1/builds/{build_id}/packages/r-app/artifacts/x86_64/r-app-1.0.0-r0.apk"
        )
        first_apk = client.get(
            f"/api/v1/builds/{first['r-app']['build_id']}/packages/r-app/artifacts/"
            "x86_64/r-app-1.0.0-r0.apk"
        )
        assert apk.status_code == first_apk.status_code == 200
        assert apk.content == first_apk.content

        # a changed source file: that package is rebuilt, the others reused
        changed_src = _build(client, configs=_configs(), source_files=_source("v2"))
        assert changed_src["r-app"]["cached"] is False
        assert changed_src["r-app"]["input_digest"] != digests["r-app"]
        assert changed_src["r-lib"]["cached"] and changed_src["r-other"]["cached"]

        # a dependency whose inputs changed but whose package did not (our APKs are
        # reproducible; a changed script would change the package, whose .melange.yaml
        # holds the config): it is rebuilt, its dependent still installs the same bytes
        same_output = _build(
            client, configs=_configs(), source_files=_source("v2", lib_unused="changed")
        )
        assert same_output["r-lib"]["cached"] is False
        assert same_output["r-app"]["cached"] is True
        # (decided on a backend, once its rebuilt dependency was known, not at submission)
        assert len(same_output["r-app"]["attempts"]) == 1
        assert same_output["r-other"]["attempts"] == []

        # a changed dependency: it and its dependent are rebuilt, the independent reused
        # (r-lib 1.0.0-r0 gets other content: the farm's repository is immutable, so the
        # build asks to replace it)
        changed_dep = _build(
            client,
            configs=_configs(lib_script=_NEW_FILE),
            source_files=_source("v2"),
            replace=True,
        )
        assert changed_dep["r-lib"]["cached"] is False
        assert changed_dep["r-app"]["cached"] is False
        assert changed_dep["r-other"]["cached"] is True
        assert changed_dep["r-app"]["input_digest"] != changed_src["r-app"]["input_digest"]

        # force: everything is built again, with the same digests as before
        forced = _build(
            client,
            configs=_configs(lib_script=_NEW_FILE),
            source_files=_source("v2"),
            force=True,
        )
        assert not any(p["cached"] for p in forced.values())
        assert {n: p["input_digest"] for n, p in forced.items()} == {
            n: p["input_digest"] for n, p in changed_dep.items()
        }


_RANDOM_STEP = (
    "value=$(date +%s%N)-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n')\n"
    'echo "made value=$value"\n'
    "mkdir -p ${{targets.destdir}}/usr/share/r-rand\n"
    'echo "$value" > ${{targets.destdir}}/usr/share/r-rand/value'
)


def _made_value(client: httpx.Client, build_id: str) -> str:
    log = client.get(f"/api/v1/builds/{build_id}/packages/r-rand/logs").text
    (line,) = [ln for ln in log.splitlines() if ln.startswith("made value=")]
    return line.removeprefix("made value=")


def _apk(client: httpx.Client, build_id: str) -> bytes:
    resp = client.get(
        f"/api/v1/builds/{build_id}/packages/r-rand/artifacts/x86_64/r-rand-1.0.0-r0.apk"
    )
    assert resp.status_code == 200, resp.text
    return resp.content


def test_force_runs_the_steps_again_and_later_builds_reuse_its_packages(server: Server) -> None:
    configs = [config("r-rand", script=_RANDOM_STEP)]
    with server.client() as client:
        first = _build(client, configs=configs)["r-rand"]
        assert first["cached"] is False
        value = _made_value(client, first["build_id"])
        assert value.encode() in gzip.decompress(_apk(client, first["build_id"]))

        # forced: BuildKit's cache holds that step, yet it runs again (a new value in the
        # package, the step's output in the log, not "cached"); other bytes under the same
        # name and version: the repository takes them only with replace
        forced = _build(client, configs=configs, force=True, replace=True)["r-rand"]
        assert forced["cached"] is False
        assert forced["input_digest"] == first["input_digest"]
        log = client.get(f"/api/v1/builds/{forced['build_id']}/packages/r-rand/logs").text
        assert "<== build r-rand: done (" in log
        assert "<== build r-rand: done (cached)" not in log
        # only the steps: the environment and the workspace's directories come from the cache
        assert "<== mkdir melange-out/r-rand: done (cached)" in log
        forced_value = _made_value(client, forced["build_id"])
        assert forced_value != value
        forced_apk = _apk(client, forced["build_id"])
        assert forced_value.encode() in gzip.decompress(forced_apk)
        assert value.encode() not in gzip.decompress(forced_apk)

        # not forced: the same inputs, so the packages are reused, those of the forced
        # build (the latest made from these inputs, and the ones published)
        again = _build(client, configs=configs)["r-rand"]
        assert again["cached"] is True
        assert again["input_digest"] == first["input_digest"]
        assert _apk(client, again["build_id"]) == forced_apk
