"""The server's settings, from its flags (api.md's names plus ours)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from melange2.buildkit.tls import ClientTLS
from melange2.jobs import Schedule
from melange2.storage import StorageSpec
from melange2.store import StoreKind


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    listen_addr: str = ":8080"
    buildkit_addr: str | None = None
    #: TLS for ``buildkit_addr`` (single-backend mode)
    buildkit_tls: ClientTLS | None = None
    backends_config: Path | None = None
    default_arch: str = "x86_64"
    output_dir: Path = Path("/var/lib/melange/output")
    data_dir: Path = Path("/var/lib/melange/data")
    store: StoreKind = "sqlite"
    #: the database of ``store="postgres"`` (a ``postgresql://`` URL; POSTGRES_DSN)
    postgres_dsn: str = ""
    registry: str = "127.0.0.1:5000"
    signing_key: Path | None = None  #: default: <data-dir>/melange2.rsa, made on first start
    repositories: Sequence[str] = ()  #: appended to every build environment
    keyrings: Sequence[str] = ()
    schedule: Schedule = "critical-path"
    max_attempts: int = 3
    #: processes that parse a large dry run's configs (0: one per core; 1: none)
    plan_workers: int = 0
    lease_ttl: float = 15.0
    probe_interval: float = 5.0
    max_body_bytes: int = 64 * 1024 * 1024
    cache_registry: str = ""  #: CACHE_REGISTRY
    cache_mode: str = "min"  #: CACHE_MODE
    #: where logs, artifacts, the published repository and reuse records go; default:
    #: the local directory ``output_dir``
    storage: StorageSpec | None = None
    #: a log stops growing here, with a marker where it was cut
    max_log_bytes: int = 64 * 1024 * 1024
    #: melange's source cache (``--source-cache``): a directory, ``gs://`` or ``s3://``;
    #: default: ``<data-dir>/sources``
    source_cache: str = ""
    #: endpoint and credentials of a bucket source cache (kind, bucket, prefix: from
    #: ``source_cache``)
    source_cache_spec: StorageSpec | None = None
    #: largest upload to the source cache (413 above)
    max_source_bytes: int = 4 * 1024 * 1024 * 1024
    #: ``--fetch-allow``: the URLs (globs with ``://``) or hosts (globs) configs may
    #: make the server fetch repositories and keys from; none by default
    fetch_allow: Sequence[str] = ()
    #: seconds for each connect, read and write of such a fetch
    fetch_timeout: float = 30.0
    #: ``git_source``: local paths and ``file://`` are cloned only with this
    git_allow_local: bool = False
    #: clones at once (their own pool), and seconds each may take, waiting included
    git_jobs: int = 2
    git_timeout: float = 120.0
    #: seconds git may spend connecting (ssh) or without receiving a byte (http)
    git_connect_timeout: float = 20.0
    #: ``git_source``: the hosts (globs; ``host:port`` globs too) it may clone from;
    #: none by default (``--git-allow``)
    git_allow: Sequence[str] = ()
    #: tokens required (``--no-auth``: off)
    auth: bool = True
    #: anonymous callers read builds, packages, logs and artifacts (``--public-read``)
    public_read: bool = False
    #: parsed configs kept for resubmissions, by estimated size
    parse_cache_bytes: int = 256 * 1024 * 1024
    #: ``SECRET_ENV_<NAME>`` of the server's environment, prefix stripped: given to every
    #: step as BuildKit secret env (never in the LLB, masked in logs)
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: ``--package-timeout``: the longest an attempt may run, and the default of a build's
    #: ``timeout_s`` and a config's ``package.timeout`` (seconds; 0: no limit)
    package_timeout: float = 36000.0
    #: ``--max-silent``: fail a package whose build writes no output this long (0: off)
    max_silent: float = 7200.0
    extra: dict[str, str] = field(default_factory=dict)
    #: ``--advertise-url``: where other replicas on the same database reach this one's
    #: API (a log followed through them is proxied here); "": from ``listen_addr``
    advertise_url: str = ""

    @property
    def source_cache_location(self) -> str:
        return self.source_cache or str(self.data_dir / "sources")

    @property
    def storage_spec(self) -> StorageSpec:
        return self.storage or StorageSpec(kind="local", path=self.output_dir)

    def work_dir(self, build_id: str, name: str) -> Path:
        """A package's local scratch space (its live log and outputs before upload)."""
        return self.data_dir / "work" / f"{build_id}-{name}"

    @property
    def key_path(self) -> Path:
        return self.signing_key or self.data_dir / "melange2.rsa"

    def build_dir(self, build_id: str) -> Path:
        """What a build brought: configs (and pipelines/) and sources, kept for retries."""
        return self.data_dir / "builds" / build_id

    def staging_repo(self, build_id: str) -> Path:
        return self.data_dir / "staging" / build_id
