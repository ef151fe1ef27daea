"""TLS to the daemons, end to end: a farm of its own whose two buildkitd daemons serve TLS
and require a client certificate (``LocalFarm(tls=True)``, as ``make farm-up FARM_TLS=1``).

A TLS daemon refuses a plain client, a client without a certificate and one whose
certificate another CA signed, and serves (a real solve) one with a valid certificate;
BuildKit's own ``buildctl`` agrees with our certificates. melange-server with a TLS
backend in its backends YAML probes it healthy and builds on it; a backend added with
``POST /api/v1/backends`` and PEM settings is probed, builds, never shows its key, and
comes back after a restart; ``melange2 build`` with the TLS flags builds on it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from melange2.buildkit import llb
from melange2.buildkit.client import BuildkitClient, push_image
from melange2.buildkit.tls import ClientTLS, client_tls_from_pem
from melange2.errors import BuildkitUnavailable
from melange2.farm import processes
from melange2.farm.certs import FarmCerts, make_certs
from melange2.farm.local import FarmEnv, LocalFarm, make_token, start_server
from melange2.farm.smoke import smoke_definition
from melange2.oci.registry import RegistryClient
from melange2.pool.health import buildkit_probe
from tests.conftest import ROOT, TOOLS, require_real_parts
from tests.integration.test_server_e2e import config, submit, wait

pytestmark = pytest.mark.e2e


class TLSFarm:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.farm = LocalFarm(root / "farm", tools_dir=TOOLS, daemons=2, tls=True)
        self.env: FarmEnv
        self.certs: FarmCerts
        self.url = ""
        self.token = ""

    def up(self) -> None:
        self.env = asyncio.run(self.farm.up())
        assert self.farm.certs is not None
        self.certs = self.farm.certs
        first = self.env.buildkit_addrs[0]
        backends = self.root / "backends.yaml"
        backends.write_text(
            "backends:\n"
            f"  - addr: {first}\n    arch: x86_64\n    maxJobs: 2\n    labels: {{node: yaml}}\n"
            "    tls:\n"
            f"      caCert: {self.certs.ca_cert}\n"
            f"      cert: {self.certs.client_cert}\n"
            f"      key: {self.certs.client_key}\n"
            "      serverName: localhost\n"
        )
        self.backends = backends
        self.start()

    def start(self) -> None:
        if not self.token:
            self.token = asyncio.run(make_token(self.root / "data", name="e2e-admin"))
        self.url = asyncio.run(
            start_server(
                self.env,
                data_dir=self.root / "data",
                output_dir=self.root / "output",
                pid_file=self.root / "server.pid",
                log_file=self.root / "server.log",
                backends_config=self.backends,
                port=processes.free_port(),
                extra_args=["--probe-interval", "0.5"],
            )
        )

    def stop(self) -> None:
        processes.stop(self.root / "server.pid")

    def down(self) -> None:
        self.stop()
        self.farm.down()

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.url, timeout=30, headers=headers)


@pytest.fixture(scope="module")
def tls_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSFarm]:
    require_real_parts()
    farm = TLSFarm(tmp_path_factory.mktemp("tls"))
    try:
        farm.up()
        yield farm
    finally:
        farm.down()


def status_of(client: httpx.Client, addr: str) -> dict[str, Any]:
    rows = client.get("/api/v1/backends/status").json()["backends"]
    return next(r for r in rows if r["addr"] == addr)


def wait_probed(client: httpx.Client, addr: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        row = status_of(client, addr)
        if row["lastProbeResult"] or time.monotonic() > deadline:
            return row
        time.sleep(0.2)


async def _refused(addr: str, tls: ClientTLS | None) -> str:
    with pytest.raises(BuildkitUnavailable) as info:
        async with BuildkitClient(addr, tls=tls, connect_timeout=5) as bk:
            await bk.info()
    return info.value.message


def test_a_tls_daemon_refuses_clients_without_a_valid_certificate(
    tls_farm: TLSFarm, tmp_path: Path
) -> None:
    addr = tls_farm.env.buildkit_addrs[0]
    certs = tls_farm.certs
    other = make_certs(tmp_path / "other", ca_name="another CA")
    ca = certs.ca_cert.read_bytes()

    async def check() -> None:
        assert "serves TLS" in await _refused(addr, None)
        assert "refused the client certificate" in await _refused(addr, ClientTLS(ca_cert=ca))
        foreign = client_tls_from_pem(
            ca_cert=ca, cert=other.client_cert.read_bytes(), key=other.client_key.read_bytes()
        )
        assert "refused the client certificate" in await _refused(addr, foreign)
        # our side checks the daemon too: its certificate is not from the other CA, and
        # not for another name
        assert "not signed by the given CA" in await _refused(addr, other.client_tls())
        assert "server name" in await _refused(addr, certs.client_tls("wrong.example"))

        # the valid certificate: a real solve, its output read back from the registry
        async with (
            BuildkitClient(addr, tls=certs.client_tls("localhost")) as bk,
            RegistryClient(tls_farm.env.registry) as reg,
        ):
            solved = await bk.solve(
                llb.marshal(smoke_definition(tls_farm.env.base_image, "x86_64")),
                exporters=[push_image(f"{tls_farm.env.registry}/tls/smoke:x86_64")],
            )
            digest = solved.exporter_response["containerimage.digest"]
            assert (await reg.read_file("tls/smoke", digest, "uname")).strip() == b"x86_64"

    asyncio.run(check())

    # BuildKit's own client agrees: with the farm's files it is served, without refused
    buildctl = [str(TOOLS / "bin" / "buildctl"), "--addr", addr, "--timeout", "10"]
    served = subprocess.run(
        [
            *buildctl,
            "--tlscacert",
            str(certs.ca_cert),
            "--tlscert",
            str(certs.client_cert),
            "--tlskey",
            str(certs.client_key),
            "debug",
            "workers",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode == 0, served.stderr
    plain = subprocess.run(
        [*buildctl, "debug", "workers"], capture_output=True, text=True, timeout=60
    )
    assert plain.returncode != 0


def test_probes_report_a_tls_backend_healthy(tls_farm: TLSFarm) -> None:
    addr = tls_farm.env.buildkit_addrs[0]
    with tls_farm.client() as client:
        row = wait_probed(client, addr)
        listing = client.get("/api/v1/backends").json()
    assert row["tls"] is True
    assert row["lastProbeResult"] == "ok", row
    assert row["circuitState"] == "closed" and row["buildkitVersion"].startswith("v")
    assert listing["backends"] == [
        {
            "addr": addr,
            "arch": "x86_64",
            "labels": {"node": "yaml"},
            "tls": True,
            "cpu": None,
            "memory": None,
        }
    ]
    # the probe itself, without the settings: refused
    with pytest.raises(BuildkitUnavailable):
        asyncio.run(buildkit_probe(addr))
    result = asyncio.run(buildkit_probe(addr, tls_farm.certs.client_tls()))
    assert "linux/amd64" in result.platforms


def test_a_build_runs_on_a_tls_backend_from_the_backends_yaml(tls_farm: TLSFarm) -> None:
    with tls_farm.client() as client:
        build_id = submit(client, configs=[config("tls-yaml")], backend_selector={"node": "yaml"})
        build = wait(client, build_id)
    assert build["status"] == "success", build
    (pkg,) = build["packages"]
    assert pkg["backend"]["addr"] == tls_farm.env.buildkit_addrs[0]


def _pem_settings(certs: FarmCerts) -> dict[str, str]:
    return {
        "caCert": certs.ca_cert.read_text(),
        "cert": certs.client_cert.read_text(),
        "key": certs.client_key.read_text(),
    }


def test_post_backends_with_tls_settings(tls_farm: TLSFarm, tmp_path: Path) -> None:
    addr = tls_farm.env.buildkit_addrs[1]
    tls = _pem_settings(tls_farm.certs)
    other = make_certs(tmp_path / "other")
    body = {"addr": addr, "arch": "x86_64", "labels": {"node": "api"}}
    with tls_farm.client() as client:
        # bad settings: a clear 400 naming the field, and nothing added
        for bad, field, problem in [
            ({**tls, "key": other.client_key.read_text()}, "tls.key", "does not belong"),
            ({**tls, "key": "not a key"}, "tls.key", "not PEM"),
            ({**tls, "caCert": str(tls_farm.certs.ca_cert)}, "tls.caCert", "not PEM"),
            ({"cert": tls["cert"]}, "tls.key", "required with cert"),
        ]:
            resp = client.post("/api/v1/backends", json={**body, "tls": bad})
            assert resp.status_code == 400, resp.text
            error = resp.json()["error"]
            assert error.startswith(f"{field}: ") and problem in error and addr in error
        resp = client.post("/api/v1/backends", json={**body, "tls": {"caCert": 3}})
        assert resp.status_code == 400 and resp.json()["error"].startswith("tls.caCert: ")
        assert addr not in {b["addr"] for b in client.get("/api/v1/backends").json()["backends"]}

        resp = client.post("/api/v1/backends", json={**body, "tls": tls})
        assert resp.status_code == 201, resp.text
        assert resp.json() == {**body, "tls": True, "cpu": None, "memory": None}
        shown = client.get("/api/v1/backends").text + client.get("/api/v1/backends/status").text
        assert "BEGIN" not in shown and "PRIVATE" not in shown
        row = wait_probed(client, addr)
        assert row["tls"] is True and row["lastProbeResult"] == "ok", row

        build_id = submit(client, configs=[config("tls-api")], backend_selector={"node": "api"})
        build = wait(client, build_id)
    assert build["status"] == "success", build
    assert build["packages"][0]["backend"]["addr"] == addr

    # kept in the store, key included: after a restart it is still reached over TLS
    tls_farm.stop()
    tls_farm.start()
    with tls_farm.client() as client:
        row = wait_probed(client, addr)
        assert row["tls"] is True and row["lastProbeResult"] == "ok", row
    log = (tls_farm.root / "server.log").read_text()
    assert "PRIVATE KEY" not in log


def test_single_backend_mode_takes_the_tls_flags(tls_farm: TLSFarm, tmp_path: Path) -> None:
    root = tmp_path / "single"
    url = asyncio.run(
        start_server(
            tls_farm.env,  # no backends config: --buildkit-addr and the farm's TLS flags
            data_dir=root / "data",
            output_dir=root / "output",
            pid_file=root / "server.pid",
            log_file=root / "server.log",
            port=processes.free_port(),
            # the first server's key: no new RSA key to make; no tokens: said explicitly
            extra_args=[
                "--signing-key",
                str(tls_farm.root / "data" / "melange2.rsa"),
                "--no-auth",
            ],
        )
    )
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            row = wait_probed(client, tls_farm.env.buildkit_addrs[0])
        assert row["tls"] is True and row["lastProbeResult"] == "ok", row
    finally:
        processes.stop(root / "server.pid")
    log = (root / "server.log").read_text()
    assert "authentication is off (--no-auth)" in log  # a warning at start


def test_melange2_build_with_the_tls_flags(tls_farm: TLSFarm, tmp_path: Path) -> None:
    env = tls_farm.env
    recipe = tmp_path / "tls-cli.yaml"
    recipe.write_text(config("tls-cli"))
    argv = [
        sys.executable,
        "-m",
        "melange2",
        "build",
        str(recipe),
        "--out-dir",
        str(tmp_path / "out"),
        "--buildkit-addr",
        env.buildkit_addrs[0],
        "--registry",
        env.registry,
        "--repository-append",
        env.extra["BOOTSTRAP_REPO"],
        "--keyring-append",
        env.extra["BOOTSTRAP_KEY"],
        "--cache-dir",
        str(tmp_path / "cache"),
        "--plain",
    ]
    plain_env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDKIT_TLS_")}
    refused = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, cwd=ROOT, env=plain_env
    )
    assert refused.returncode != 0
    assert "serves TLS" in refused.stderr + refused.stdout
    flags = ["--tlscacert", env.tls_ca_cert, "--tlscert", env.tls_cert, "--tlskey", env.tls_key]
    built = subprocess.run(
        [*argv, *flags], capture_output=True, text=True, timeout=300, cwd=ROOT, env=plain_env
    )
    assert built.returncode == 0, built.stderr + built.stdout
    assert list((tmp_path / "out" / "x86_64").glob("tls-cli-1.0.0-r0.apk"))
    # the variables .farm/env sets (exported) do the same
    by_env = subprocess.run(
        [*argv, "--out-dir", str(tmp_path / "out2")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={
            **plain_env,
            "BUILDKIT_TLS_CACERT": env.tls_ca_cert,
            "BUILDKIT_TLS_CERT": env.tls_cert,
            "BUILDKIT_TLS_KEY": env.tls_key,
        },
    )
    assert by_env.returncode == 0, by_env.stderr + by_env.stdout
