"""The server on a bucket (issue 6): GCS on fake-gcs-server and S3 on moto's server, with
real buildkitd. Logs and artifacts land in the bucket at the locations the package JSON
reports, the repository is served from it, a later build installs a package published
there by an earlier one, and a server given a missing bucket or refused credentials does
not start."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from melange2.apk.index import read_index_tar_gz
from melange2.farm.local import FarmEnv
from melange2.storage import StorageSpec, open_storage
from melange2.testenv.emulators import FakeGcsServer, MotoS3Server
from tests.integration.test_server_e2e import Server, by_name, config, submit, wait
from tests.storage_fixtures import new_bucket_name

pytestmark = pytest.mark.e2e
S3_ENV = {
    "AWS_ACCESS_KEY_ID": MotoS3Server.ACCESS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": MotoS3Server.SECRET_ACCESS_KEY,
}


@pytest.fixture(scope="module")
def gcs_server(
    farm: FarmEnv, fake_gcs: FakeGcsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, StorageSpec]]:
    bucket = new_bucket_name()
    fake_gcs.create_bucket(bucket)
    args = ["--gcs-bucket", bucket, "--gcs-endpoint", fake_gcs.url, "--storage-prefix", "farm"]
    srv = Server(farm, tmp_path_factory.mktemp("gcs"), args)
    srv.start()
    try:
        yield srv, fake_gcs.storage_spec(bucket, prefix="farm")
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def s3_server(
    farm: FarmEnv, moto_s3: MotoS3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, StorageSpec]]:
    bucket = new_bucket_name()
    moto_s3.create_bucket(bucket)
    args = [
        "--s3-bucket", bucket,
        "--s3-endpoint", moto_s3.url,
        "--s3-path-style",
        "--s3-region", MotoS3Server.REGION,
    ]  # fmt: skip
    srv = Server(farm, tmp_path_factory.mktemp("s3"), args)
    with pytest.MonkeyPatch.context() as env:
        for name, value in S3_ENV.items():
            env.setenv(name, value)
        srv.start()  # the server process inherits the credentials
    try:
        yield srv, moto_s3.storage_spec(bucket)
    finally:
        srv.stop()


def _exists(spec: StorageSpec, key: str) -> bool:
    async def check() -> bool:
        storage = open_storage(spec)
        try:
            return await storage.exists(key)
        finally:
            await storage.aclose()

    return asyncio.run(check())


@pytest.mark.parametrize("kind", ["gcs", "s3"])
def test_a_build_keeps_everything_in_the_bucket(kind: str, request: pytest.FixtureRequest) -> None:
    server, spec = request.getfixturevalue(f"{kind}_server")
    scheme = "gs" if kind == "gcs" else "s3"
    lib, app = f"{kind}-lib", f"{kind}-app"
    with server.client() as client:
        first = wait(client, submit(client, configs=[config(lib, script="echo building-lib")]))
        assert first["status"] == "success", first
        pkg = by_name(first)[lib]
        base = f"builds/{first['id']}-{lib}"
        root = f"{scheme}://{spec.bucket}/" + (f"{spec.prefix}/" if spec.prefix else "")
        assert pkg["log_path"] == f"{root}{base}/logs/build.log"
        assert pkg["output_path"].endswith(f"{base}/artifacts")
        assert _exists(spec, f"{base}/logs/build.log")
        assert _exists(spec, f"{base}/artifacts/x86_64/{lib}-1.0.0-r0.apk")
        log = client.get(f"/api/v1/builds/{first['id']}/packages/{lib}/logs").text
        assert "building-lib" in log
        listed = client.get(f"/api/v1/builds/{first['id']}/packages/{lib}/artifacts").json()
        apk = next(a for a in listed["artifacts"] if a["path"].endswith(".apk"))
        assert apk["location"].startswith(f"{scheme}://{spec.bucket}/")
        body = client.get(apk["url"])
        assert body.status_code == 200 and len(body.content) == apk["size"]
        index = client.get("/repo/x86_64/APKINDEX.tar.gz")
        assert index.status_code == 200
        assert lib in {r.name for r in read_index_tar_gz(io.BytesIO(index.content)).records}
        assert client.head("/repo/x86_64/APKINDEX.tar.gz").status_code == 200
        assert client.get("/repo/keys/melange2.rsa.pub").status_code == 200
        # a later build installs the package the farm published into the bucket
        second = wait(
            client,
            submit(
                client, configs=[config(app, needs=(lib,), script=f"test -f /usr/share/{lib}/m*")]
            ),
        )
        assert second["status"] == "success", [p["error"] for p in second["packages"]]


def _refused(argv: list[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "melange2.server", "--registry", "127.0.0.1:1",
         "--buildkit-addr", "tcp://127.0.0.1:1", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert result.returncode != 0, result.stdout + result.stderr
    return result.stderr


def test_the_server_refuses_a_missing_bucket_or_refused_credentials(
    fake_gcs: FakeGcsServer, moto_s3: MotoS3Server, moto_s3_auth: MotoS3Server, tmp_path: Path
) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    err = _refused(["--gcs-bucket", "no-such-bucket", "--gcs-endpoint", fake_gcs.url, *data])
    assert "no-such-bucket" in err and "Traceback" not in err
    err = _refused(
        ["--s3-bucket", "absent-bucket", "--s3-endpoint", moto_s3.url, "--s3-path-style", *data],
        S3_ENV,
    )
    assert "absent-bucket" in err and "Traceback" not in err
    err = _refused(
        ["--s3-bucket", "guarded", "--s3-endpoint", moto_s3_auth.url, "--s3-path-style", *data],
        S3_ENV,
    )
    assert "denied" in err.lower() and "credentials" in err.lower(), err
