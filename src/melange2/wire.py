"""The wire format: pydantic models for the API's requests and responses, below both
the HTTP layer (:mod:`melange2.api`, which converts them to and from the service's
domain values) and the CLI (:mod:`melange2.cli.remote_client`); the service never sees
them. Light enough for every ``melange2 remote`` command: pydantic and the domain
values (:mod:`melange2.jobs`), nothing of the server.

Names follow ../shared/spec/api.md (users' scripts parse them); fields beyond it are
additions, never renames.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from melange2.jobs import Backend, Build, PackageJob
from melange2.names import excerpt, text_problem, valid_env_name
from melange2.resources import QuantityError, cpu_millis, format_cpu, format_memory, memory_bytes

ARCHES = ("x86_64", "aarch64")
#: what ``GET`` shows instead of each ``env`` value (the names stay)
HIDDEN = "***"


def check_request_text(data: object) -> None:
    """The one text rule for requests: every string, dict keys included, at any depth,
    is valid Unicode without NUL (:func:`melange2.names.text_problem`). Raises
    ``ValueError`` naming where (``env['K']``, ``configs[2]``). Iterative: a body
    nested as deep as JSON allows is walked without recursion."""
    stack: list[tuple[object, str]] = [(data, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            problem = text_problem(value)
            if problem is not None:
                raise ValueError(f"{where or 'body'}: the text {problem}")
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str):
                    problem = text_problem(key)
                    if problem is not None:
                        raise ValueError(f"{where or 'body'}: the key {excerpt(key)} {problem}")
                    here = f"{where}[{excerpt(key)}]" if where else key
                else:
                    here = f"{where}[{key!r}]"
                stack.append((item, here))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(value))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _text(cls, data: Any) -> Any:
        check_request_text(data)
        return data


class GitSource(_Strict):
    #: an http(s), ssh or git URL (``user@host:path`` too) of a host the server allows
    #: (``--git-allow``); a local path or ``file://`` only with ``--git-allow-local``
    repository: str = Field(min_length=1, max_length=4096)
    #: a branch, a tag or a full commit SHA (empty: the default branch)
    ref: str = Field(default="", max_length=256)
    pattern: str = Field(default="*.yaml", min_length=1, max_length=256)
    path: str = Field(default="", max_length=1024)

    @field_validator("ref")
    @classmethod
    def _ref(cls, value: str) -> str:
        if value.startswith("-") or any(c.isspace() or ord(c) < 0x20 for c in value):
            raise ValueError(f"{excerpt(value)} is not a branch, tag or commit")
        return value


class Base64Content(_Strict):
    """Binary file content: ``{"base64": "..."}``."""

    base64: str

    @field_validator("base64")
    @classmethod
    def _decodes(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("not valid base64") from exc
        return value


#: a source file: text (as the reference sends it) or ``{"base64": ...}`` for bytes
SourceContent = str | Base64Content


def content_bytes(content: SourceContent) -> bytes:
    if isinstance(content, Base64Content):
        return base64.b64decode(content.base64)
    return content.encode()


class CreateBuildRequest(_Strict):
    """``POST /api/v1/builds``: exactly one of ``config_yaml``, ``configs``, ``git_source``."""

    config_yaml: str | None = None
    configs: list[str] | None = None
    git_source: GitSource | None = None
    #: ``{"relative/path.yaml": "yaml text"}`` for ``uses:``
    pipelines: dict[str, str] = Field(default_factory=dict)
    #: ``{"pkgname": {"relative/path": content}}`` placed in that package's /home/build
    source_files: dict[str, dict[str, SourceContent]] = Field(default_factory=dict)
    arch: str | None = Field(default=None, max_length=64)
    backend_selector: dict[str, str] = Field(default_factory=dict)
    mode: Literal["flat", "dag"] = "flat"
    with_test: bool = False
    debug: bool = False
    env: dict[str, str] = Field(default_factory=dict)
    #: ``{"NAME": "value"}``: every step gets ``NAME`` as a BuildKit secret (not in the
    #: LLB or any digest, masked as ``***`` in logs; ``GET`` shows the names only)
    secrets: dict[str, str] = Field(default_factory=dict)
    #: seconds each package may run (wall clock) before it fails ``timed out``; default:
    #: its config's ``package.timeout``, else the server's ``--package-timeout`` (also
    #: the most this may be)
    timeout_s: float | None = Field(default=None, gt=0)
    cycle_policy: Literal["error", "break"] = "error"
    dry_run: bool = False
    schedule: Literal["critical-path", "fifo"] | None = None
    #: rebuild every package even when its inputs are unchanged since an earlier build
    force: bool = False
    #: into the farm's repository as each package succeeds (``package``), or only once
    #: the whole build has succeeded (``build``); always into the build's staging repository
    publish: Literal["package", "build"] = "package"
    #: allow this build to replace packages (same name, version and epoch, other
    #: content) the farm's repository already holds; each replacement is logged
    replace: bool = False

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not valid_env_name(name):
                raise ValueError(
                    f"{excerpt(name)} is not an environment variable name "
                    "(letters, digits and _, not starting with a digit)"
                )
        return value

    @model_validator(mode="after")
    def _one_source(self) -> CreateBuildRequest:
        given = [
            n
            for n, v in (
                ("config_yaml", self.config_yaml),
                ("configs", self.configs),
                ("git_source", self.git_source),
            )
            if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "exactly one of config_yaml, configs or git_source is required"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.configs is not None and not self.configs:
            raise ValueError("configs is empty: nothing to build")
        return self

    def config_texts(self) -> list[str]:
        if self.config_yaml is not None:
            return [self.config_yaml]
        return list(self.configs or [])


class CreateBuildResponse(BaseModel):
    id: str
    #: package names in build order
    packages: list[str]
    #: with ``cycle_policy: "break"``: the (dependent, dependency) edges cut to build
    #: cycles' members against the published repository
    cut_edges: list[tuple[str, str]] = Field(default_factory=list)


class ArtifactOut(BaseModel):
    #: ``<arch>/<file>``
    path: str
    size: int
    #: where it is kept (a path, ``gs://…``, ``s3://…``)
    location: str
    #: download it through the API
    url: str


class ArtifactList(BaseModel):
    artifacts: list[ArtifactOut]


class BackendOut(BaseModel):
    addr: str
    arch: str
    labels: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def of(cls, backend: Backend) -> BackendOut:
        return cls(addr=backend.addr, arch=backend.arch, labels=dict(backend.labels))


class AttemptOut(BaseModel):
    number: int
    backend: str
    started_at: datetime
    finished_at: datetime | None
    error: str
    log_path: str


def resources_out(cpu: int, memory: int) -> dict[str, str]:
    """What a package asks (cpu in millicores, memory in bytes), as quantities
    (``{"cpu": "4", "memory": "16Gi"}``)."""
    out = {}
    if cpu:
        out["cpu"] = format_cpu(cpu)
    if memory:
        out["memory"] = format_memory(memory)
    return out


class PackageOut(BaseModel):
    name: str
    status: str
    config_yaml: str
    dependencies: list[str]
    started_at: datetime | None
    finished_at: datetime | None
    error: str
    log_path: str
    output_path: str
    backend: BackendOut | None
    #: why it waits (blocked/pending), empty otherwise
    reason: str
    attempts: list[AttemptOut]
    #: seconds, once finished
    duration: float | None
    arch: str
    #: inputs unchanged since an earlier build: its artifacts were reused, nothing built
    cached: bool = False
    #: sha256 over the package's build inputs (empty until known)
    input_digest: str = ""
    #: what it asks (``package.resources``) and is placed by: ``{"cpu": "4", "memory":
    #: "16Gi"}``; empty: nothing
    resources: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def of(cls, job: PackageJob) -> PackageOut:
        return cls(
            name=job.name,
            status=job.status.value,
            config_yaml=job.config_yaml,
            dependencies=list(job.dependencies),
            started_at=job.started_at,
            finished_at=job.finished_at,
            error=job.error,
            log_path=job.log_path,
            output_path=job.output_path,
            backend=BackendOut.of(job.backend) if job.backend else None,
            reason=job.reason,
            attempts=[
                AttemptOut(
                    number=a.number,
                    backend=a.backend,
                    started_at=a.started_at,
                    finished_at=a.finished_at,
                    error=a.error,
                    log_path=a.log_path,
                )
                for a in job.attempts
            ],
            duration=job.duration_s,
            arch=job.arch,
            cached=job.cached,
            input_digest=job.input_digest,
            resources=resources_out(job.cpu_millis, job.memory_bytes),
        )


class SpecOut(BaseModel):
    """A build's request as ``GET`` shows it (``env`` values hidden): the fields clients
    read are typed; the request's others (its configs, pipelines, source file names...)
    come along as the server stored them."""

    model_config = ConfigDict(extra="allow")

    arch: str | None = None
    mode: str | None = None
    schedule: str | None = None
    backend_selector: dict[str, str] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    with_test: bool = False
    debug: bool = False
    cycle_policy: str | None = None
    force: bool = False
    publish: str | None = None
    replace: bool = False
    #: the secrets' names (each value :data:`HIDDEN`, for everyone)
    secrets: dict[str, str] = Field(default_factory=dict)
    timeout_s: float | None = None


class BuildOut(BaseModel):
    id: str
    status: str
    packages: list[PackageOut]
    spec: SpecOut
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    #: the name of the token that submitted it (empty: a server without authentication)
    submitted_by: str = ""
    #: the commit a ``git_source`` build was made from (full SHA; empty otherwise)
    source_commit: str = ""

    @classmethod
    def of(cls, build: Build, *, show_env: bool = False) -> BuildOut:
        """``show_env``: the ``env`` values as given (for the build's submitter and
        admins); otherwise each is :data:`HIDDEN`. ``secrets`` values never show."""
        return cls(
            id=build.id,
            status=build.status.value,
            packages=[PackageOut.of(p) for p in build.packages],
            spec=SpecOut.model_validate(public_spec(build.spec.to_json(), show_env=show_env)),
            created_at=build.created_at,
            started_at=build.started_at,
            finished_at=build.finished_at,
            submitted_by=build.submitted_by,
            source_commit=build.source_commit,
        )


def public_spec(spec: Mapping[str, Any], *, show_env: bool = False) -> dict[str, Any]:
    """A build's request as ``GET`` shows it: ``secrets`` keep their names, each value
    :data:`HIDDEN`, for everyone (the submitter included: they are never echoed); ``env``
    likewise for all but its submitter and admins (``show_env``)."""
    out = dict(spec)
    for key in ("secrets",) if show_env else ("env", "secrets"):
        values = out.get(key)
        if isinstance(values, dict):
            out[key] = dict.fromkeys(values, HIDDEN)
    return out


class BuildSummary(BaseModel):
    id: str
    status: str
    packages: int
    #: how many packages are in each status (statuses with none are left out)
    counts: dict[str, int] = {}
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    #: the name of the token that submitted it (empty: a server without authentication)
    submitted_by: str = ""


class BuildList(BaseModel):
    builds: list[BuildSummary]
    #: pass as ``cursor`` to get the next (older) page; null on the last page
    next_cursor: str | None


class PlannedPackage(BaseModel):
    name: str
    dependencies: list[str]
    priority: float
    #: what it asks (``package.resources``), as on a package
    resources: dict[str, str] = Field(default_factory=dict)


class PlanOut(BaseModel):
    """``dry_run``: what would be built, in what order, and how long it would take."""

    packages: list[PlannedPackage]
    cut_edges: list[tuple[str, str]]
    critical_path: list[str]
    critical_path_s: float
    total_work_s: float
    lower_bound_s: float
    estimated_makespan_s: float
    slots: int
    #: packages no backend could ever run (what they ask exceeds every backend of the
    #: arch and selector) and their dependents, with why: a real build fails them
    unplaceable: dict[str, str] = Field(default_factory=dict)


class SourceOut(BaseModel):
    """A file of the source cache (``PUT``/``GET /api/v1/sources/<digest>``)."""

    digest: str  #: ``sha256:<hex>`` (or ``sha512:<hex>``)
    size: int
    #: False when the cache already held it
    created: bool = False


class ErrorOut(BaseModel):
    """Every 4xx/5xx body."""

    error: str
    details: Annotated[Any, Field(default=None)]


_PEM_MAX = 64 * 1024


class BackendTLS(_Strict):
    """A backend's client TLS settings, as buildctl's ``--tlscacert``, ``--tlscert``,
    ``--tlskey`` and ``--tlsservername`` name them, but given as PEM text: the API takes
    certificate contents, never paths on the server. Never shown back."""

    #: PEM of the CA the daemon's certificate must chain to (absent: gRPC's default roots)
    caCert: str | None = Field(default=None, max_length=_PEM_MAX)
    #: PEM of the client certificate the daemon requires
    cert: str | None = Field(default=None, max_length=_PEM_MAX)
    #: PEM of its private key (unencrypted)
    key: str | None = Field(default=None, max_length=_PEM_MAX)
    #: the name the daemon's certificate is checked for (absent: addr's host)
    serverName: str = Field(default="", max_length=253)


#: a cpu or memory amount: a Kubernetes quantity (``"4"``, ``"500m"``, ``"16Gi"``) or a number
Quantity = Annotated[str | int | float, Field(union_mode="left_to_right")]


class AddBackendRequest(_Strict):
    addr: str = Field(min_length=1)
    arch: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    maxJobs: int = Field(default=0, ge=0)
    #: reach the daemon over TLS (absent: plain TCP)
    tls: BackendTLS | None = None
    #: the machine's cores (``"8"``, ``"7500m"``); absent: not declared, unlimited
    cpu: Quantity | None = None
    #: the machine's memory (``"32Gi"``); absent: not declared, unlimited
    memory: Quantity | None = None

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, value: str | int | float | None) -> str | int | float | None:
        return _positive(value, cpu_millis)

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | int | float | None) -> str | int | float | None:
        return _positive(value, memory_bytes)


def _positive(
    value: str | int | float | None, read: Callable[[object], int]
) -> str | int | float | None:
    """``value`` if it is a quantity above zero, else a validation error."""
    if value is None:
        return None
    try:
        amount = read(value)
    except QuantityError as exc:
        raise ValueError(str(exc)) from exc
    if amount == 0:
        raise ValueError("must be more than 0 (leave it out: unlimited)")
    return value


class RemoveBackendRequest(_Strict):
    addr: str = Field(min_length=1)


class PoolBackendOut(BackendOut):
    """A backend of the pool (``GET``/``POST /api/v1/backends``)."""

    #: reached over TLS (the settings themselves are never shown)
    tls: bool = False
    #: declared cores and memory as quantities; ``null``: not declared (unlimited)
    cpu: str | None = None
    memory: str | None = None


class BackendList(BaseModel):
    backends: list[PoolBackendOut]
    architectures: list[str]


class BackendStatusOut(BaseModel):
    addr: str
    arch: str
    labels: dict[str, str]
    maxJobs: int
    activeJobs: int
    failures: int
    circuitOpen: bool
    lastFailure: datetime | None
    circuitState: str
    lastProbe: datetime | None
    lastProbeResult: str
    buildkitVersion: str
    platforms: list[str]
    draining: bool
    #: reached over TLS
    tls: bool = False
    #: declared cores and memory as quantities; ``null``: not declared (unlimited)
    cpu: str | None = None
    memory: str | None = None
    #: what its running packages asked, as quantities
    cpuInUse: str = "0"
    memoryInUse: str = "0"
    #: the waiting package (``build/name``) it is kept for: it takes no other until that
    #: one starts there (so smaller packages cannot starve it); empty: none
    reservedFor: str = ""


class BackendStatusList(BaseModel):
    backends: list[BackendStatusOut]


class PackageEventOut(BaseModel):
    """``event: package`` of ``GET /api/v1/events``: a package moved."""

    kind: Literal["package"] = "package"
    build_id: str
    name: str
    status: str
    previous: str
    at: datetime
    #: the build's packages per status after the move
    counts: dict[str, int]
    build_status: str
    backend: str = ""
    attempt: int = 0
    reason: str = ""
    error: str = ""
    cached: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None


class BuildEventOut(BaseModel):
    """``event: build`` of ``GET /api/v1/events``: a build was submitted (``previous``
    null) or its status moved."""

    kind: Literal["build"] = "build"
    build_id: str
    status: str
    previous: str | None
    at: datetime
    counts: dict[str, int]


class ResyncOut(BaseModel):
    """``event: resync``: events were missed; read the state again."""

    reason: str


# API tokens (``/api/v1/tokens``, admin only)

#: a token's role
TokenRole = Literal["read", "submit", "admin"]


class CreateTokenRequest(_Strict):
    #: who or what holds it (``ci``, ``alice@example.org``): builds it submits say so
    name: str = Field(min_length=1, max_length=64)
    role: TokenRole
    #: a duration (``90d``, ``12h``) or an ISO 8601 date or time; absent: never expires
    expires: str | None = Field(default=None, max_length=64)


class TokenOut(BaseModel):
    """A token as the API shows it: never its secret (nor its hash)."""

    id: str
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    #: ``active``, ``expired`` or ``revoked``
    state: str


class TokenList(BaseModel):
    tokens: list[TokenOut]


class CreatedTokenOut(BaseModel):
    token: TokenOut
    #: the bearer secret: shown this once, never again (the server keeps its hash)
    secret: str


class ReplicaOut(BaseModel):
    """A server process on the store's database (``GET /api/v1/replicas``)."""

    #: its scheduler's lease owner: the ``lease_owner`` of the packages it runs
    id: str
    #: where the other replicas reach its API (``--advertise-url``)
    url: str
    started_at: datetime
    heartbeat_at: datetime
    #: its heartbeat is younger than the lease TTL
    alive: bool
    #: the replica that answered this request
    here: bool = False
