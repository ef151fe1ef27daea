"""A throwaway PostgreSQL cluster: ``initdb`` in a directory, a unix socket there, no TCP.

For the tests (a session cluster, a migrated template database, one clone per test), the
benchmarks and the local farm. It runs Debian's (or any) PostgreSQL binaries found by
:func:`find_bindir`; as root it runs them as an unprivileged user (``postgres`` if that
user exists, else ``nobody``), since PostgreSQL refuses to run as root::

    with PostgresCluster.create() as cluster:         # initdb + start, in a new temp dir
        template = migrated_template(cluster)       # the store's schema at head, once
        dsn = cluster.create_database("t1", template=template)   # a clone per test
        ...                                         # stopped and removed on exit

    cluster = PostgresCluster(Path(".farm/postgres"))   # a cluster that outlives us
    cluster.start()          # initdb on first use; ``pg_ctl`` daemonizes the server
    PostgresCluster(Path(".farm/postgres")).stop()      # later, from another process

Layout under ``root``: ``data/`` (``PGDATA``), ``run/`` (the socket directory),
``postgres.log``, and ``owner.pid`` (the process that made a temporary cluster;
:func:`sweep_stale` removes clusters whose owner died without cleaning up, say after a
``kill -9`` of a test run).

The server listens only on ``run/.s.PGSQL.5432`` (``listen_addresses=''``); the
superuser ``melange2`` logs in without a password (``trust``: only local users who can
reach the socket directory can connect). With ``port=N`` (the local farm) it also listens
on ``127.0.0.1:N`` and its socket is ``run/.s.PGSQL.N``: ``trust`` then lets any local
user connect over loopback, which is what a developer's farm on one machine accepts.
``durable=False`` (the default) turns off ``fsync``, ``synchronous_commit`` and
``full_page_writes``: a crash may lose the data, which is what a throwaway cluster is
for; benchmarks of production settings pass ``durable=True``.

Errors starting or stopping raise :class:`~melange2.errors.FarmProcessError` with the
tail of the server's log.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

from melange2.errors import FarmProcessError
from melange2.farm.processes import pid_alive, read_pid

__all__ = [
    "SUPERUSER",
    "PostgresCluster",
    "find_bindir",
    "migrated_template",
    "missing_postgres",
    "sweep_stale",
]

#: the cluster's superuser (``initdb -U``), the user of every DSN it hands out
SUPERUSER = "melange2"
#: where Debian's ``postgresql-<major>`` packages put the server binaries
DEBIAN_BINDIRS = Path("/usr/lib/postgresql")
#: temporary clusters are made under the temp dir with this prefix
TEMP_PREFIX = "melange2-pg-"
_BINARIES = ("initdb", "pg_ctl", "postgres")
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def find_bindir() -> Path | None:
    """The directory of ``initdb``, ``pg_ctl`` and ``postgres``: ``$PG_BINDIR`` if set,
    else the newest ``/usr/lib/postgresql/<major>/bin`` (Debian), else ``initdb`` on
    ``PATH``. ``None`` when there is none."""
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    if DEBIAN_BINDIRS.is_dir():
        majors = [p for p in DEBIAN_BINDIRS.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(majors, key=lambda p: -int(p.name))]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in _BINARIES):
            return bindir
    return None


def missing_postgres() -> list[str]:
    """What this host lacks to run a cluster (empty when nothing is missing)."""
    if find_bindir() is None:
        return [
            "PostgreSQL server binaries (initdb, pg_ctl, postgres: Debian's `postgresql` "
            "package, installed by `make setup`; or set PG_BINDIR)"
        ]
    if os.geteuid() == 0 and _unprivileged_user() is None:
        return ["an unprivileged user to run PostgreSQL as (`postgres` or `nobody`)"]
    return []


def _unprivileged_user() -> pwd.struct_passwd | None:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    return None


class PostgresCluster:
    """One cluster in ``root`` (see the module docstring for the layout)."""

    def __init__(
        self,
        root: Path,
        *,
        bindir: Path | None = None,
        durable: bool = False,
        settings: Mapping[str, str] | None = None,
        temporary: bool = False,
        port: int | None = None,
    ) -> None:
        """``settings``: more ``postgres -c name=value`` options. ``temporary``: remove
        ``root`` in :meth:`stop` (as :meth:`create` does). ``port``: also listen on
        ``127.0.0.1:port`` (the socket is then ``.s.PGSQL.<port>``, which :meth:`dsn`
        names)."""
        found = bindir or find_bindir()
        if found is None:
            raise FarmProcessError("; ".join(missing_postgres()))
        self.root = root.resolve()
        self.bindir = found
        self.durable = durable
        self.settings = dict(settings or {})
        self.temporary = temporary
        self.port = port
        self._user = _unprivileged_user() if os.geteuid() == 0 else None
        if os.geteuid() == 0 and self._user is None:
            raise FarmProcessError("; ".join(missing_postgres()))

    @classmethod
    def create(cls, *, durable: bool = False, settings: Mapping[str, str] | None = None) -> Self:
        """A new, started cluster in a fresh temporary directory, removed by :meth:`stop`
        (or on leaving ``with``). Sweeps stale temporary clusters first."""
        sweep_stale()
        root = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        (root / "owner.pid").write_text(f"{os.getpid()}\n")
        cluster = cls(root, durable=durable, settings=settings, temporary=True)
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    # -- where things are ----------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def dsn(self, database: str = "postgres") -> str:
        """A libpq URI for ``database`` over the socket (``postgresql://melange2@/<db>
        ?host=<root>/run``, with ``&port=N`` when the cluster has a ``port``): what
        ``--postgres-dsn`` and ``psycopg.connect`` take."""
        dsn = f"postgresql://{SUPERUSER}@/{database}?host={quote(str(self.socket_dir), safe='/')}"
        return dsn + (f"&port={self.port}" if self.port is not None else "")

    def tcp_dsn(self, database: str = "postgres") -> str:
        """The same database over loopback TCP (only for a cluster with a ``port``)."""
        if self.port is None:
            raise FarmProcessError(f"the cluster in {self.root} listens on no TCP port")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    # -- lifecycle -----------------------------------------------------------------------

    def running(self) -> bool:
        """Whether the server of this cluster is up (by its ``postmaster.pid``)."""
        pid = read_pid_first_line(self.data_dir / "postmaster.pid")
        return pid is not None and pid_alive(pid)

    def start(self, *, timeout: float = 60.0) -> None:
        """``initdb`` if ``data/`` does not exist yet, then start the server and wait
        until it accepts connections. Starting a running cluster does nothing."""
        if self.running():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self._own(self.root)
        if not (self.data_dir / "PG_VERSION").exists():
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self._run(
                "initdb",
                "--pgdata",
                str(self.data_dir),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
                "--no-instructions",
            )
        self.socket_dir.mkdir(exist_ok=True)
        self._own(self.socket_dir)
        self.socket_dir.chmod(0o700)
        options = " ".join(f"-c {name}={value}" for name, value in self._settings().items())
        self._run(
            "pg_ctl",
            "start",
            "--pgdata",
            str(self.data_dir),
            "--log",
            str(self.log_file),
            "--wait",
            "--timeout",
            str(int(timeout)),
            "--options",
            options,
            what="starting PostgreSQL",
        )

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m fast``, then kill what is left) and, for a
        temporary cluster, remove its directory. Stopping a stopped cluster is fine."""
        try:
            if self.running():
                try:
                    self._run(
                        "pg_ctl",
                        "stop",
                        "--pgdata",
                        str(self.data_dir),
                        "--mode",
                        mode,
                        "--wait",
                        "--timeout",
                        "30",
                        what="stopping PostgreSQL",
                    )
                except FarmProcessError:
                    self._kill()
        finally:
            if self.temporary:
                shutil.rmtree(self.root, ignore_errors=True)

    def _kill(self) -> None:
        pid = read_pid_first_line(self.data_dir / "postmaster.pid")
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases -----------------------------------------------------------------------

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """``CREATE DATABASE name [TEMPLATE template]``; returns its :meth:`dsn`. A
        clone of a template is a file copy: a few milliseconds for a small schema."""
        sql = f'CREATE DATABASE "{_check_name(name)}"'
        if template is not None:
            sql += f' TEMPLATE "{_check_name(template)}" STRATEGY FILE_COPY'
        self.execute(sql)
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` (closing its connections first); no error if it is gone."""
        self.execute(f'DROP DATABASE IF EXISTS "{_check_name(name)}" WITH (FORCE)')

    def freeze_template(self, name: str) -> None:
        """Mark ``name`` a template nobody connects to (cloning fails while anyone is)."""
        self.execute(f'ALTER DATABASE "{_check_name(name)}" WITH ALLOW_CONNECTIONS false')

    def execute(self, *statements: str, database: str = "postgres") -> None:
        """Run ``statements`` in autocommit mode (``CREATE DATABASE`` needs it)."""
        import psycopg

        try:
            with psycopg.connect(self.dsn(database), autocommit=True) as conn:
                for statement in statements:
                    conn.execute(statement.encode())
        except psycopg.Error as exc:
            raise FarmProcessError(f"PostgreSQL in {self.root}: {exc}") from exc

    # -- helpers -------------------------------------------------------------------------

    def _settings(self) -> dict[str, str]:
        settings = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "unix_socket_permissions": "0700",
        }
        if self.port is not None:
            settings |= {"listen_addresses": "'127.0.0.1'", "port": str(self.port)}
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        return settings | self.settings

    def _own(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _run(self, binary: str, *args: str, what: str = "") -> None:
        argv = [str(self.bindir / binary), *args]
        user: dict[str, object] = {}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        if self._user is not None:
            user = {
                "user": self._user.pw_uid,
                "group": self._user.pw_gid,
                "extra_groups": [],
            }
            env["HOME"] = str(self.root)
        try:
            done = subprocess.run(
                argv,
                cwd=self.root,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
                **user,  # type: ignore[call-overload]
            )
        except OSError as exc:
            raise FarmProcessError(f"cannot run {argv[0]}: {exc}") from exc
        if done.returncode != 0:
            raise FarmProcessError(
                f"{what or binary} in {self.root} failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()}\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's log, for messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def migrated_template(cluster: PostgresCluster, name: str = "melange2_template") -> str:
    """Create database ``name``, migrate it to the store's head (the same migration the
    store runs) and freeze it as a template for :meth:`PostgresCluster.create_database`.
    Returns ``name``."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from melange2.store.sql.postgres import migrate, postgres_url

    dsn = cluster.create_database(name)
    engine = create_engine(postgres_url(dsn), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            migrate(conn)
    finally:
        engine.dispose()
    cluster.freeze_template(name)
    return name


def read_pid_first_line(path: Path) -> int | None:
    """The pid on the first line of a ``postmaster.pid``-style file."""
    try:
        first = path.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(first) if first.strip().isdigit() else None


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r}: database names here are lower-case identifiers")
    return name


def sweep_stale(parent: Path | None = None) -> Sequence[Path]:
    """Stop and remove temporary clusters under ``parent`` (the temp dir) whose owner
    process is gone; return their roots."""
    base = parent or Path(tempfile.gettempdir())
    swept = []
    for root in _temporary_roots(base):
        owner = read_pid(root / "owner.pid")
        if owner is None or pid_alive(owner):
            continue
        with contextlib.suppress(FarmProcessError):
            PostgresCluster(root, temporary=True).stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)
        swept.append(root)
    return swept


def _temporary_roots(base: Path) -> Iterator[Path]:
    with contextlib.suppress(OSError):
        for path in base.iterdir():
            if path.name.startswith(TEMP_PREFIX) and (path / "owner.pid").is_file():
                yield path
