"""The local build farm: a loopback registry with the base image and N buildkitd daemons.

Used by ``make farm-up``/``farm-down`` (through ``python -m melange2.farm``) and by the
test suite's session fixtures, so tests run on exactly what users run.

Layout under the farm's root (``.farm/`` for ``make farm-up``)::

    env                        shell-sourceable (mode 0600: it holds a token):
                               MELANGE_SERVER, MELANGE_TOKEN (an admin token for the
                               server, made at every start), with ``store="postgres"``
                               also MELANGE_SERVERS (every replica's URL) and
                               POSTGRES_DSN, BUILDKIT_ADDRS, BASE_IMAGE,
                               REGISTRY, BOOTSTRAP_REPO, BOOTSTRAP_KEY, SOURCE_CACHE (and
                               with TLS: BUILDKIT_TLS_CACERT, BUILDKIT_TLS_CERT,
                               BUILDKIT_TLS_KEY)
    tls/                       with TLS: ca.pem, server.pem + server-key.pem (what the
                               daemons serve), client.pem + client-key.pem (farm.certs)
    bootstrap/repo/<arch>/     the signed bootstrap APK repository (busybox, the toolchain)
    bootstrap/keys/            its signing key
    sources/                   the source cache (melange's layout: sha256:<hex>), with the
                               upstream tarballs of examples/; the server's --source-cache
    logs/<service>.log         each process's output
    pids/<service>.pid
    server/data/, server/output/   the server's data directory (its SQLite store, the
                               signing key, the files builds brought, staging) and
                               storage; with postgres every replica shares both
    postgres/                  with postgres: the cluster (testenv.postgres's layout),
                               database ``melange2``, on a unix socket and 127.0.0.1
    registry/config.yml, registry/data/
    buildkitd-<n>/buildkitd.toml, buildkitd-<n>/root/
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from melange2.auth import Role
from melange2.buildkit.client import BuildkitClient
from melange2.buildkit.tls import ClientTLS, load_client_tls
from melange2.errors import BuildkitError, FarmProcessError
from melange2.farm import processes
from melange2.farm.baseimage import push_base_image
from melange2.farm.bootstrap import BootstrapRepo, build_bootstrap_repo
from melange2.farm.certs import FarmCerts, farm_certs, make_certs
from melange2.farm.upstream import UpstreamTarball, fill_source_cache
from melange2.oci.registry import RegistryClient

if TYPE_CHECKING:
    # imported where used: testenv.postgres imports melange2.farm.processes
    from melange2.testenv.postgres import PostgresCluster

#: the store kinds the local farm runs its server(s) on
FARM_STORES = ("sqlite", "postgres")
#: the database the farm's replicas share, in the farm's cluster
FARM_DATABASE = "melange2"

REGISTRY_BINARY = "/usr/bin/docker-registry"
#: the CLI's default --server is http://localhost:8080: use that port when it is free
DEFAULT_SERVER_PORT = 8080
_READY_SECONDS = 180.0  # a daemon with gigabytes of cache takes about a minute


@dataclass(frozen=True, kw_only=True)
class FarmEnv:
    """Where the running farm's parts are; written to and read from ``<root>/env``."""

    registry: str  #: host:port of the loopback registry
    buildkit_addrs: tuple[str, ...]
    base_image: str  #: registry reference pinned by digest
    melange_server: str = ""
    #: an admin API token for ``melange_server`` ("" when there is no server)
    melange_token: str = ""
    #: the daemons serve TLS: the client's CA, certificate and key files ("" when plain)
    tls_ca_cert: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def render(self) -> str:
        values = {
            "MELANGE_SERVER": self.melange_server,
            **({"MELANGE_TOKEN": self.melange_token} if self.melange_token else {}),
            "BUILDKIT_ADDRS": " ".join(self.buildkit_addrs),
            "BASE_IMAGE": self.base_image,
            "REGISTRY": self.registry,
        }
        if self.tls_ca_cert:
            values |= {
                "BUILDKIT_TLS_CACERT": self.tls_ca_cert,
                "BUILDKIT_TLS_CERT": self.tls_cert,
                "BUILDKIT_TLS_KEY": self.tls_key,
            }
        values |= self.extra
        return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())

    @property
    def melange_servers(self) -> tuple[str, ...]:
        """Every server replica's URL (``MELANGE_SERVERS``; the one server without it)."""
        listed = self.extra.get("MELANGE_SERVERS", "").split()
        return tuple(listed) if listed else ((self.melange_server,) if self.melange_server else ())

    def client_tls(self) -> ClientTLS | None:
        """How to reach the daemons (``None``: plain)."""
        if not self.tls_ca_cert:
            return None
        return load_client_tls(
            ca_cert=Path(self.tls_ca_cert), cert=Path(self.tls_cert), key=Path(self.tls_key)
        )

    @classmethod
    def load(cls, path: Path) -> FarmEnv:
        values: dict[str, str] = {}
        for line in path.read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, raw = line.partition("=")
                parts = shlex.split(raw)
                values[key] = parts[0] if parts else ""
        return cls(
            registry=values.pop("REGISTRY"),
            buildkit_addrs=tuple(values.pop("BUILDKIT_ADDRS").split()),
            base_image=values.pop("BASE_IMAGE"),
            melange_server=values.pop("MELANGE_SERVER", ""),
            melange_token=values.pop("MELANGE_TOKEN", ""),
            tls_ca_cert=values.pop("BUILDKIT_TLS_CACERT", ""),
            tls_cert=values.pop("BUILDKIT_TLS_CERT", ""),
            tls_key=values.pop("BUILDKIT_TLS_KEY", ""),
            extra=values,
        )


def _check_reachable(path: Path) -> None:
    """As root, PostgreSQL runs as an unprivileged user, who must be able to reach
    ``path``: every existing directory above it searchable by others."""
    if os.geteuid() != 0:
        return
    for parent in path.parents:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            raise FarmProcessError(
                f"PostgreSQL runs as an unprivileged user, who cannot enter {parent} "
                f"(mode {parent.stat().st_mode & 0o777:o}): put the farm's --root elsewhere "
                f"or `chmod o+x {parent}`"
            )


def _database_exists(cluster: PostgresCluster, name: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(cluster.dsn("postgres")) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    except psycopg.Error as exc:
        raise FarmProcessError(f"PostgreSQL in {cluster.root}: {exc}") from exc
    return row is not None


def _tail(log_file: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


#: the name of the admin token the local farm makes for its server
FARM_TOKEN_NAME = "farm-admin"


async def make_token(
    data_dir: Path, *, name: str, role: Role = Role.ADMIN, store_args: Sequence[str] = ()
) -> str:
    """A token for a server whose store is in ``data_dir`` (or at ``store_args``'
    ``--store postgres --postgres-dsn DSN``), as ``melange-server tokens create`` makes
    it; an active token of that name is revoked first. Returns its secret."""
    from melange2.service.tokens import rotate_token
    from melange2.store import open_store

    flags = dict(zip(store_args[::2], store_args[1::2], strict=False))
    kind = flags.get("--store", "sqlite")
    if kind not in ("sqlite", "postgres"):
        raise FarmProcessError(f"tokens need a sqlite or postgres store, not {kind!r}")
    async with open_store(
        "postgres" if kind == "postgres" else "sqlite",
        data_dir=data_dir,
        dsn=flags.get("--postgres-dsn"),
    ) as store:
        issued = await rotate_token(store, name=name, role=role)
    return issued.secret


def store_args_of(args: Sequence[str]) -> list[str]:
    """The store flags (``--store``, ``--postgres-dsn``) among a server's arguments."""
    found: list[str] = []
    for n, arg in enumerate(args):
        if arg in ("--store", "--postgres-dsn") and n + 1 < len(args):
            found += [arg, args[n + 1]]
        elif arg.startswith(("--store=", "--postgres-dsn=")):
            found += arg.split("=", 1)
    return found


async def start_server(
    env: FarmEnv,
    *,
    data_dir: Path,
    output_dir: Path,
    pid_file: Path,
    log_file: Path,
    backends_config: Path | None = None,
    port: int | None = None,
    extra_args: Sequence[str] = (),
) -> str:
    """Start ``melange-server`` on loopback against the farm; return its URL once
    ``/healthz`` answers."""
    port = port or (
        DEFAULT_SERVER_PORT if _port_free(DEFAULT_SERVER_PORT) else processes.free_port()
    )
    argv = [
        sys.executable,
        "-m",
        "melange2.server",
        "--listen-addr",
        f"127.0.0.1:{port}",
        "--registry",
        env.registry,
        "--data-dir",
        str(data_dir),
        "--output-dir",
        str(output_dir),
        "--repository",
        env.extra["BOOTSTRAP_REPO"],
        "--keyring",
        env.extra["BOOTSTRAP_KEY"],
        *extra_args,
    ]
    if env.extra.get("SOURCE_CACHE"):
        argv += ["--source-cache", env.extra["SOURCE_CACHE"]]
    if backends_config is not None:
        argv += ["--backends-config", str(backends_config)]
    else:
        argv += ["--buildkit-addr", env.buildkit_addrs[0]]
        if env.tls_ca_cert:
            argv += ["--tlscacert", env.tls_ca_cert, "--tlscert", env.tls_cert]
            argv += ["--tlskey", env.tls_key]
    processes.start(argv, pid_file=pid_file, log_file=log_file)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + _READY_SECONDS
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            pid = processes.read_pid(pid_file)
            if pid is None or not processes.pid_alive(pid):
                break
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/healthz")).status_code == 200:
                    return url
            await asyncio.sleep(0.1)
    raise FarmProcessError(f"melange-server did not start; see {log_file}:\n{_tail(log_file)}")


class LocalFarm:
    """Start and stop the farm's processes under ``root``. With ``tls`` the daemons
    serve TLS and require a client certificate (made into ``<root>/tls/``)."""

    def __init__(
        self,
        root: Path,
        *,
        tools_dir: Path,
        daemons: int = 2,
        server: bool = False,
        toolchain_cache: Path | None = None,
        tls: bool = False,
        store: str = "sqlite",
        replicas: int = 1,
    ) -> None:
        if store not in FARM_STORES:
            raise FarmProcessError(f"store {store!r}: the farm runs on {' or '.join(FARM_STORES)}")
        if replicas < 1:
            raise FarmProcessError(f"replicas {replicas}: at least one server")
        if replicas > 1 and store != "postgres":
            raise FarmProcessError(
                f"{replicas} replicas need one database they share: use the postgres store "
                "(`make farm-up FARM_STORE=postgres FARM_REPLICAS=3`)"
            )
        self.root = root.resolve()
        self.tools_dir = tools_dir.resolve()
        self.daemons = daemons
        self.server = server
        #: where converted Debian packages are kept (None: busybox alone, no toolchain)
        self.toolchain_cache = toolchain_cache
        self.bootstrap: BootstrapRepo | None = None
        #: upstream tarballs that could not be put into the source cache, and why
        self.source_problems: list[tuple[UpstreamTarball, str]] = []
        self.tls = tls
        self.store = store
        self.replicas = replicas

    @property
    def postgres(self) -> PostgresCluster:
        """The farm's PostgreSQL cluster (``store="postgres"``), started or not."""
        from melange2.testenv.postgres import PostgresCluster

        return PostgresCluster(self.root / "postgres", durable=True)

    @property
    def certs(self) -> FarmCerts | None:
        return farm_certs(self.root / "tls") if self.tls else None

    def client_tls(self) -> ClientTLS | None:
        certs = self.certs
        return certs.client_tls() if certs is not None else None

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    def _pid(self, name: str) -> Path:
        return self.root / "pids" / f"{name}.pid"

    def _log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def running_services(self) -> list[str]:
        """Names of this farm's services whose process is alive."""
        pids = self.root / "pids"
        if not pids.is_dir():
            return []
        alive = []
        for pid_file in sorted(pids.glob("*.pid")):
            pid = processes.read_pid(pid_file)
            if pid is not None and processes.pid_alive(pid):
                alive.append(pid_file.stem)
        if self._postgres_running():
            alive.append("postgres")
        return alive

    def _postgres_running(self) -> bool:
        if not (self.root / "postgres" / "data").is_dir():
            return False
        try:
            return self.postgres.running()
        except FarmProcessError:  # no PostgreSQL binaries: nothing of ours runs
            return False

    async def up(self) -> FarmEnv:
        """Start the registry, push the base image, start the daemons; write ``env``."""
        if self.running_services():
            raise FarmProcessError(
                f"a farm is already running under {self.root} "
                f"({', '.join(self.running_services())}); run `make farm-down` first"
            )
        self._check_tools()
        if self.server and self.store == "postgres":
            _check_reachable(self.root / "postgres")
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            registry = await self.start_registry()
            debs = {
                arch: self.tools_dir / "debs" / f"busybox-static_{arch}.deb"
                for arch in ("amd64", "arm64")
            }
            present = {a: p for a, p in debs.items() if p.exists()}
            base = await push_base_image(registry, present)
            bootstrap = await asyncio.to_thread(
                build_bootstrap_repo,
                self.root / "bootstrap",
                present,
                toolchain_cache=self.toolchain_cache,
            )
            self.bootstrap = bootstrap
            sources = self.root / "sources"
            sources.mkdir(parents=True, exist_ok=True)
            if self.toolchain_cache is not None:
                self.source_problems = await asyncio.to_thread(
                    fill_source_cache, sources, self.toolchain_cache / "sources"
                )
            certs = make_certs(self.root / "tls") if self.tls else None
            addrs = [self._start_buildkitd(n, registry) for n in range(self.daemons)]
            await asyncio.gather(*(self._wait_buildkitd(n, a) for n, a in enumerate(addrs)))
            env = FarmEnv(
                registry=registry,
                buildkit_addrs=tuple(addrs),
                base_image=str(base),
                tls_ca_cert=str(certs.ca_cert) if certs else "",
                tls_cert=str(certs.client_cert) if certs else "",
                tls_key=str(certs.client_key) if certs else "",
                extra={
                    "BOOTSTRAP_REPO": str(bootstrap.repo),
                    "BOOTSTRAP_KEY": str(bootstrap.public_key),
                    "SOURCE_CACHE": str(sources),
                },
            )
            if self.server and self.store == "postgres":
                env = await self._start_replicas(env)
            elif self.server:
                data_dir = self.root / "server" / "data"
                token = await make_token(data_dir, name=FARM_TOKEN_NAME)
                url = await start_server(
                    env,
                    data_dir=data_dir,
                    output_dir=self.root / "server" / "output",
                    pid_file=self._pid("melange-server"),
                    log_file=self._log("melange-server"),
                    backends_config=self._backends_config(env),
                )
                env = dataclasses.replace(env, melange_server=url, melange_token=token)
        except BaseException:
            self.down()
            raise
        self.env_file.touch(mode=0o600)
        self.env_file.chmod(0o600)  # it may hold a token
        self.env_file.write_text(env.render())
        return env

    async def _start_replicas(self, env: FarmEnv) -> FarmEnv:
        """Start the PostgreSQL cluster and ``self.replicas`` servers on its database
        ``melange2``, each on its own port, sharing the backends, the storage
        (``server/output``) and the data directory (``server/data``: the signing key,
        the files a build brought and its staging repository, which the replica that
        runs a package needs whichever replica took the build). The admin token is made
        once, in the database, so it works on every replica."""
        from melange2.testenv.postgres import PostgresCluster

        cluster = PostgresCluster(self.root / "postgres", durable=True, port=processes.free_port())
        await asyncio.to_thread(cluster.start)
        if not await asyncio.to_thread(_database_exists, cluster, FARM_DATABASE):
            await asyncio.to_thread(cluster.create_database, FARM_DATABASE)
        dsn = cluster.dsn(FARM_DATABASE)
        store_args = ["--store", "postgres", "--postgres-dsn", dsn]
        server_root = self.root / "server"
        backends = self._backends_config(env)
        # migrated here, once, before any replica starts (each would at its start)
        token = await make_token(server_root / "data", name=FARM_TOKEN_NAME, store_args=store_args)

        async def start(n: int, port: int) -> str:
            return await start_server(
                env,
                data_dir=server_root / "data",
                output_dir=server_root / "output",
                pid_file=self._pid(f"melange-server-{n}"),
                log_file=self._log(f"melange-server-{n}"),
                backends_config=backends,
                port=port,
                extra_args=[*store_args, *self._advertise_args(port)],
            )

        # the first replica makes the signing key the others then share; it takes 8080
        # when free, the others a free port each
        ports = [DEFAULT_SERVER_PORT if _port_free(DEFAULT_SERVER_PORT) else processes.free_port()]
        while len(ports) < self.replicas:
            port = processes.free_port()
            if port not in ports:
                ports.append(port)
        first = await start(0, ports[0])
        rest = await asyncio.gather(*(start(n, ports[n]) for n in range(1, self.replicas)))
        urls = [first, *rest]
        return dataclasses.replace(
            env,
            melange_server=first,
            melange_token=token,
            extra=env.extra | {"MELANGE_SERVERS": " ".join(urls), "POSTGRES_DSN": dsn},
        )

    def _advertise_args(self, port: int) -> list[str]:
        """``--advertise-url`` (where the other replicas reach this one), if this
        ``melange-server`` has the flag."""
        from melange2.server import cli

        serve = cli.commands["serve"]
        if any("--advertise-url" in getattr(p, "opts", ()) for p in serve.params):
            return ["--advertise-url", f"http://127.0.0.1:{port}"]
        return []

    def down(self) -> list[str]:
        """Stop every service, clear mounts and lock files. Returns what was stopped."""
        stopped = []
        pids = self.root / "pids"
        if pids.is_dir():
            # servers first, then the daemons, the registry last
            def order(pid_file: Path) -> int:
                if pid_file.stem.startswith("melange-server"):
                    return 0
                return 2 if pid_file.stem == "registry" else 1

            for pid_file in sorted(pids.glob("*.pid"), key=order):
                if processes.stop(pid_file):
                    stopped.append(pid_file.stem)
        if self._postgres_running():
            self.postgres.stop()
            stopped.append("postgres")
        processes.unmount_under(self.root)
        for lock in self.root.glob("buildkitd-*/root/buildkitd.lock"):
            lock.unlink(missing_ok=True)
        self.env_file.unlink(missing_ok=True)
        return stopped

    def kill_buildkitd(self, n: int) -> None:
        """SIGKILL daemon ``n`` (a crash, for tests), leaving its config for a restart."""
        pid = processes.read_pid(self._pid(f"buildkitd-{n}"))
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            while processes.pid_alive(pid):
                processes.stop(self._pid(f"buildkitd-{n}"), grace=0.1)
                time.sleep(0.05)
        processes.unmount_under(self.root / f"buildkitd-{n}")
        (self.root / f"buildkitd-{n}" / "root" / "buildkitd.lock").unlink(missing_ok=True)

    async def restart_buildkitd(self, n: int, addr: str) -> None:
        """Start daemon ``n`` again on its old address and config."""
        processes.start(
            self._buildkitd_argv(n),
            pid_file=self._pid(f"buildkitd-{n}"),
            log_file=self._log(f"buildkitd-{n}"),
        )
        await self._wait_buildkitd(n, addr)

    def _buildkitd_argv(self, n: int) -> list[str]:
        home = self.root / f"buildkitd-{n}"
        certs = self.certs
        return [
            str(self.tools_dir / "bin" / "buildkitd"),
            "--config",
            str(home / "buildkitd.toml"),
            "--root",
            str(home / "root"),
            *(certs.buildkitd_flags() if certs is not None else []),
        ]

    def _backends_config(self, env: FarmEnv) -> Path:
        """The farm's pool: the first daemon serves x86_64, the second aarch64 (through
        qemu), as production pools route by architecture."""
        arches = ["x86_64", "aarch64"]
        lines = ["backends:"]
        for n, addr in enumerate(env.buildkit_addrs):
            lines += [f"  - addr: {addr}", f"    arch: {arches[n % 2]}", "    maxJobs: 4"]
            if env.tls_ca_cert:
                lines += [
                    "    tls:",
                    f"      caCert: {env.tls_ca_cert}",
                    f"      cert: {env.tls_cert}",
                    f"      key: {env.tls_key}",
                ]
        lines += ["defaultMaxJobs: 4", "failureThreshold: 3", "recoveryTimeout: 30s"]
        path = self.root / "server" / "backends.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        return path

    def _check_tools(self) -> None:
        missing = [
            str(p)
            for p in (self.tools_dir / "bin" / "buildkitd", Path(REGISTRY_BINARY))
            if not p.exists()
        ]
        if shutil.which("runc") is None:
            missing.append("runc")
        if missing:
            raise FarmProcessError(f"missing {', '.join(missing)}: run `make setup` first")

    async def start_registry(self) -> str:
        """Start the registry alone (``up`` starts it first); returns its address;
        ``down`` stops it."""
        port = processes.free_port()
        host = f"127.0.0.1:{port}"
        home = self.root / "registry"
        (home / "data").mkdir(parents=True, exist_ok=True)
        config = home / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {home / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {host}\n"
        )
        processes.start(
            [REGISTRY_BINARY, "serve", str(config)],
            pid_file=self._pid("registry"),
            log_file=self._log("registry"),
        )
        async with RegistryClient(host) as reg:
            deadline = time.monotonic() + _READY_SECONDS
            while not await reg.ping():
                if time.monotonic() > deadline:
                    raise FarmProcessError(f"registry did not start; see {self._log('registry')}")
                await asyncio.sleep(0.1)
        return host

    def _start_buildkitd(self, n: int, registry: str) -> str:
        home = self.root / f"buildkitd-{n}"
        (home / "root").mkdir(parents=True, exist_ok=True)
        addr = f"tcp://127.0.0.1:{processes.free_port()}"
        config = home / "buildkitd.toml"
        config.write_text(
            f'root = "{home / "root"}"\n'
            "[grpc]\n"
            f'  address = ["{addr}"]\n'
            # each daemon its own trace socket: the default /run/buildkit/otel-grpc.sock is
            # shared, and two daemons starting together race for it (one dies)
            "[otel]\n"
            f'  socketPath = "{home / "otel-grpc.sock"}"\n'
            "[worker.oci]\n"
            "  enabled = true\n"
            '  binary = "runc"\n'
            "  gc = true\n"
            "[worker.containerd]\n"
            "  enabled = false\n"
            f'[registry."{registry}"]\n'
            "  http = true\n"
            "  insecure = true\n"
        )
        processes.start(
            self._buildkitd_argv(n),
            pid_file=self._pid(f"buildkitd-{n}"),
            log_file=self._log(f"buildkitd-{n}"),
        )
        return addr

    async def _wait_buildkitd(self, n: int, addr: str) -> None:
        deadline = time.monotonic() + _READY_SECONDS
        last: Exception | None = None
        tls = self.client_tls()
        while time.monotonic() < deadline:
            pid = processes.read_pid(self._pid(f"buildkitd-{n}"))
            if pid is None or not processes.pid_alive(pid):
                break
            try:
                async with BuildkitClient(addr, tls=tls, connect_timeout=2.0) as bk:
                    workers = await bk.list_workers()
                if workers:
                    return
            except BuildkitError as exc:
                last = exc
            await asyncio.sleep(0.2)
        raise FarmProcessError(
            f"buildkitd-{n} at {addr} did not become ready ({last}); "
            f"see {self._log(f'buildkitd-{n}')}"
        )
