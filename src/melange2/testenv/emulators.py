"""Storage emulators for tests: fake-gcs-server for GCS, moto's server mode for S3.

Each is a real HTTP server on a free loopback port, in a process (group) of its own,
started by a context manager that waits until it answers and always kills it::

    with FakeGcsServer(find_fake_gcs_server(tools_dir)) as gcs:
        gcs.create_bucket("pkgs")
        storage = open_storage(gcs.storage_spec("pkgs", prefix="farm"))

    with MotoS3Server(find_moto_server()) as s3:   # auth=True: moto checks credentials
        s3.create_bucket("pkgs")
        storage = open_storage(s3.storage_spec("pkgs"))

A server that exits or does not answer in time raises
:class:`~melange2.errors.FarmProcessError` with the tail of its output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, ClassVar, Self

import httpx

from melange2.errors import FarmProcessError
from melange2.farm.processes import free_port
from melange2.storage import StorageSpec

__all__ = [
    "Emulator",
    "FakeGcsServer",
    "MotoS3Server",
    "find_fake_gcs_server",
    "find_moto_server",
]


def find_fake_gcs_server(tools_dir: Path | None = None) -> Path | None:
    """``<tools_dir>/bin/fake-gcs-server`` if it is there, else the one on ``PATH``."""
    if tools_dir is not None and (tools_dir / "bin" / "fake-gcs-server").is_file():
        return tools_dir / "bin" / "fake-gcs-server"
    found = shutil.which("fake-gcs-server")
    return Path(found) if found else None


def find_moto_server() -> Path | None:
    """moto's ``moto_server`` script next to this Python (a venv), else on ``PATH``."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.is_file():
        return beside
    found = shutil.which("moto_server")
    return Path(found) if found else None


class Emulator:
    """A server process on ``127.0.0.1:<free port>``: :meth:`start` it (it waits until
    HTTP answers), :meth:`stop` it (process group: SIGTERM, then SIGKILL); or use it as
    a context manager. Subclasses give the command line."""

    #: for messages
    name: ClassVar[str] = "emulator"

    def __init__(self, binary: Path, *, start_timeout: float = 30.0) -> None:
        self.binary = binary
        self.start_timeout = start_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (once started)."""
        if not self.port:
            raise FarmProcessError(f"{self.name} is not running")
        return f"http://127.0.0.1:{self.port}"

    def argv(self, port: int) -> list[str]:
        """The command line to serve on ``127.0.0.1:<port>``."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        """The process's environment (default: ours)."""
        return dict(os.environ)

    def start(self, *, tries: int = 3) -> None:
        """Start on a free port and wait until it answers HTTP. A process that exits
        first (say, the port was taken meanwhile) is started again on another port,
        up to ``tries`` times."""
        if self._proc is not None:
            raise FarmProcessError(f"{self.name} is already running")
        for attempt in range(1, tries + 1):
            self.port = free_port()
            # lives as long as the process: closed in stop()
            self._log = tempfile.TemporaryFile(prefix=f"{self.name}-")  # noqa: SIM115
            try:
                self._proc = subprocess.Popen(
                    self.argv(self.port),
                    stdin=subprocess.DEVNULL,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    env=self.env(),
                    start_new_session=True,
                )
            except OSError as exc:
                self.stop()
                raise FarmProcessError(f"cannot start {self.name} ({self.binary}): {exc}") from exc
            try:
                self._wait_ready()
                return
            except _Exited as exc:
                self.stop()
                if attempt == tries:
                    raise FarmProcessError(str(exc)) from None
            except BaseException:
                self.stop()
                raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        with httpx.Client(timeout=1.0, trust_env=False) as http:  # no proxy for loopback
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise _Exited(
                        f"{self.name} exited with {code} before answering on {self.url}; "
                        f"its output ends:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    http.get(self.url + "/")
                    return  # any HTTP answer will do
                if time.monotonic() > deadline:
                    raise FarmProcessError(
                        f"{self.name} did not answer on {self.url} within "
                        f"{self.start_timeout:g}s; its output ends:\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def log_tail(self, size: int = 4000) -> str:
        """The end of the process's output (stdout and stderr)."""
        if self._log is None:
            return ""
        end = os.fstat(self._log.fileno()).st_size
        data = os.pread(self._log.fileno(), size, max(0, end - size))
        return data.decode(errors="replace").strip() or "(nothing)"

    def stop(self, grace: float = 5.0) -> None:
        """Stop the process group (SIGTERM, SIGKILL after ``grace`` s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # what is left of the group
        if self._log is not None:
            self._log.close()
            self._log = None
        self.port = 0

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Exited(Exception):
    """The process exited before it answered."""


class FakeGcsServer(Emulator):
    """fake-gcs-server over plain HTTP, objects in memory."""

    name = "fake-gcs-server"
    #: the project buckets are made in
    PROJECT = "test"

    def argv(self, port: int) -> list[str]:
        host = f"127.0.0.1:{port}"
        return [
            str(self.binary),
            "-scheme", "http",
            "-host", "127.0.0.1",
            "-port", str(port),
            "-backend", "memory",
            "-public-host", host,
            "-external-url", f"http://{host}",
            "-log-level", "error",
        ]  # fmt: skip

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (its JSON API: ``POST /storage/v1/b``)."""
        response = httpx.post(
            f"{self.url}/storage/v1/b",
            params={"project": self.PROJECT},
            json={"name": name},
            timeout=10.0,
            trust_env=False,
        )
        if response.status_code not in (200, 409):
            raise FarmProcessError(
                f"{self.name}: cannot create bucket {name!r}: "
                f"HTTP {response.status_code} {response.text[:200]}"
            )

    def storage_spec(self, bucket: str, *, prefix: str = "") -> StorageSpec:
        """A spec for ``bucket`` here: anonymous, fast retries."""
        return StorageSpec(
            kind="gcs",
            bucket=bucket,
            prefix=prefix,
            endpoint_url=self.url,
            project=self.PROJECT,
            token="anon",
            retry_attempts=3,
            retry_wait=0.01,
        )


class MotoS3Server(Emulator):
    """moto's S3 in server mode. With ``auth=True`` it checks credentials (moto's IAM:
    ``INITIAL_NO_AUTH_ACTION_COUNT=0``) and refuses the fake ones."""

    name = "moto_server"
    #: the fake credentials (moto accepts any when it does not check them)
    ACCESS_KEY_ID = "testing"
    SECRET_ACCESS_KEY = "testing"
    REGION = "us-east-1"

    def __init__(self, binary: Path, *, auth: bool = False, start_timeout: float = 30.0) -> None:
        super().__init__(binary, start_timeout=start_timeout)
        self.auth = auth

    def argv(self, port: int) -> list[str]:
        return [str(self.binary), "-H", "127.0.0.1", "-p", str(port)]

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        else:
            env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
        return env

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` (an unsigned ``PUT /<name>``; not with ``auth``)."""
        response = httpx.put(f"{self.url}/{name}", timeout=10.0, trust_env=False)
        if response.status_code != 200:
            raise FarmProcessError(
                f"{self.name}: cannot create bucket {name!r}: "
                f"HTTP {response.status_code} {response.text[:200]}"
            )

    def storage_spec(self, bucket: str, *, prefix: str = "") -> StorageSpec:
        """A spec for ``bucket`` here: path-style, the fake credentials, fast retries."""
        return StorageSpec(
            kind="s3",
            bucket=bucket,
            prefix=prefix,
            endpoint_url=self.url,
            path_style=True,
            region=self.REGION,
            access_key_id=self.ACCESS_KEY_ID,
            secret_access_key=self.SECRET_ACCESS_KEY,
            retry_attempts=3,
            retry_wait=0.01,
        )
