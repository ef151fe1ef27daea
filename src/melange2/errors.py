"""The farm's exceptions: one root, stable codes for the wire, exit codes for the shell.

Every exception class of the project, where it is defined (``errors`` unless named),
and what it means::

    FarmError
    ├── ConfigError                     bad farm or tool configuration (flags, files)
    │   └── TLSMaterialError            buildkit.tls: TLS files or PEM that cannot be used
    ├── RecipeError                     a melange config that cannot be parsed or resolved
    │   ├── RecipeFieldError            recipe.errors: one field's value, with where it is
    │   │   ├── UndefinedVariable       recipe.errors: ``${{...}}`` naming nothing
    │   │   └── ConditionError          recipe.errors: an ``if:`` that cannot be read
    │   └── FetchRefused                repo.policy: a repository or key this server may
    │                                   not fetch (``--fetch-allow``)
    ├── BuildkitError                   talking to a BuildKit daemon
    │   ├── BuildkitUnavailable         the daemon cannot be reached or went away (a backend fault)
    │   ├── SolveFailed                 the build itself failed (a step exited non-zero, ...)
    │   │   └── StepFailed              buildkit.client: names the step, its exit code, its log
    │   └── SolveCancelled              the solve was cancelled
    ├── RegistryError                   talking to an OCI registry
    │   └── ManifestNotFound
    ├── ApkError                        reading or writing APK packages and indexes
    │   ├── ApkFormatError              apk.errors: not an APK or index (also a ValueError)
    │   ├── ApkSignatureError           apk.errors: unsigned, or signed by an unknown key
    │   ├── ApkIntegrityError           apk.errors: a checksum that does not match
    │   ├── RepositoryError             repo.repository: a repository cannot be read
    │   │   ├── UntrustedIndexError     repo.repository: its index is not signed by a trusted
    │   │   │                           key (also an ApkSignatureError)
    │   │   └── PackageVerificationError  repo.repository: a fetched package is not what
    │   │                               the index says (also an ApkIntegrityError)
    │   └── ResolutionError             repo.resolve: the packages asked for cannot be
    │                                   installed together
    ├── LintFailed                      a required linter found something in a built package
    ├── FarmProcessError                starting or stopping the local farm's processes
    │   ├── DebianError                 farm.debian: apt or dpkg-deb failed (the toolchain)
    │   └── ConversionError             farm.toolchain: a .deb that cannot become an APK
    ├── GraphError                      scheduler.graph: a build's packages cannot be ordered
    │   ├── DuplicatePackage            scheduler.graph: two configs make one package
    │   └── CycleError                  scheduler.graph: dependencies in a cycle
    ├── StoreError                      the build store failed
    │   ├── NotFound                    no such build or package
    │   ├── InvalidTransition           a state change the store refused (wrong current state)
    │   ├── StoreConflict               a write that conflicts with stored data (a taken id)
    │   ├── StoreUnavailable            the database cannot be reached or gave up for now
    │   └── LeasesLost                  scheduler.loop: the store refused to renew this
    │                                   server's leases for a whole lease period
    ├── StorageError                    storage.base: a storage operation failed (after retries)
    │   ├── StorageNotFound             storage.base: no object at that key (also a
    │   │                               FileNotFoundError)
    │   └── StorageConfigError          storage.base: refused at start (missing bucket, ...)
    ├── PackageFailed                   a package's attempt failed (the reason, for the client)
    │   └── TimedOut                    it ran past its time limit or stayed silent too long
    ├── PublishConflict                 the farm's repository already holds other bytes under
    │                                   that package's file name
    ├── Unauthorized                    auth: no valid token (HTTP 401)
    ├── Forbidden                       auth: the token's role does not allow it (HTTP 403)
    ├── Unavailable                     the server cannot take work now (HTTP 503)
    ├── RequestError                    a client's request is invalid (HTTP 4xx)
    │   ├── GitBusy                     service.gitsource: too many clones at once (HTTP 429)
    │   ├── DigestMismatch              build.source_cache: a source upload whose content
    │   │                               has another digest than it was sent under
    │   ├── SourceTooLarge              build.source_cache: a source upload past
    │   │                               ``--max-source-bytes`` (HTTP 413)
    │   ├── Conflict                    api.routes.backends: that backend already exists
    │   └── InvalidConfigs              configs of a submission do not parse or compile
    │                                   (each named)
    └── RemoteError                     cli.remote_client: the build server failed (exit 1)
        ├── RequestRejected             cli.remote_client: it refused the request (exit 2)
        └── ServerUnreachable           cli.remote_client: no connection to it (exit 3)

Outside the tree, each caught where it is raised or answered by its own protocol::

    BodyTooLarge                        api.errors: a request body past the limit (a
                                        Starlette HTTPException: HTTP 413)
    ExprSyntaxError                     recipe.expr: a ``${{...}}`` expression that cannot be
                                        read (ValueError: recipe.subst, a malformed reference)
    GrpcError                           buildkit.h2grpc: the status the session's gRPC
                                        server answers the daemon with
    Missing                             recipe.expr: a name an expression uses and the
                                        substitutions lack (KeyError: recipe.subst makes it
                                        an UndefinedVariable)
    PcParseError                        sca.pkgconfig: a ``.pc`` file SCA cannot read (ValueError)
    QuantityError                       resources: a cpu or memory quantity that cannot be
                                        read (ValueError: the parser and the API name where)
    ShebangError                        sca.shebang: a ``#!`` line SCA cannot read (ValueError)
    SimulationError                     testenv.virtualtime: a simulation that would wait on
                                        real time (RuntimeError)
    WorkerError                         service.configs: a plan worker process failed (not
                                        a config: the dry run fails, the workers restart)

Private signals, never leaving their module: ``_TransientStatus`` (oci.registry),
``_SyntaxError`` (recipe.cond), ``_Malformed`` (recipe.subst), ``_Restart``
(repo.resolve), ``_Refused`` (sca.elf), ``_Exited`` (testenv.emulators),
``_StreamEnded`` (cli.commands.remote).

Foreign errors become ours in one place per boundary, the cause kept (``raise ... from``):
gRPC from the daemons in :func:`melange2.buildkit.errors.map_grpc_errors`; SQLAlchemy
and the database drivers in :mod:`melange2.store.sql.errors`; fsspec and its backends
in ``Storage._run`` (:mod:`melange2.storage.fsspec_store`); httpx in
``RegistryClient._request`` (registries), :mod:`melange2.repo.repository`'s fetch mapper
(repositories and keys configs name) and ``cli.remote_client._translate`` (the build
server); git in :mod:`melange2.service.gitsource`; apt and dpkg-deb in
:mod:`melange2.farm.debian`; PyYAML's (libyaml's) errors in
:mod:`melange2.recipe._yaml`; and every ``FarmError`` and request validation error
becomes an HTTP answer in :mod:`melange2.api.errors`.
``tests/unit/test_errors_tree.py`` checks this drawing against the classes themselves.

Each ``FarmError`` class has a ``code`` (a stable string for JSON error bodies) and an
``exit_code`` (for the CLI). The message defaults to the class docstring's first line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar


class FarmError(Exception):
    """Something went wrong in the build farm."""

    code: ClassVar[str] = "farm_error"
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str | None = None) -> None:
        if message is None:
            message = (self.__doc__ or self.__class__.__name__).strip().splitlines()[0]
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(FarmError):
    """Invalid configuration."""

    code = "config_error"
    exit_code = 2


class RecipeError(FarmError):
    """The melange config is invalid."""

    code = "recipe_error"
    exit_code = 2


class BuildkitError(FarmError):
    """BuildKit reported an error."""

    code = "buildkit_error"


class BuildkitUnavailable(BuildkitError):
    """The BuildKit daemon cannot be reached."""

    code = "buildkit_unavailable"


class SolveFailed(BuildkitError):
    """The build failed."""

    code = "solve_failed"


class SolveCancelled(BuildkitError):
    """The build was cancelled."""

    code = "solve_cancelled"
    exit_code = 130


class RegistryError(FarmError):
    """The registry refused a request."""

    code = "registry_error"


class ManifestNotFound(RegistryError):
    """The registry has no such manifest."""

    code = "manifest_not_found"


class ApkError(FarmError):
    """Invalid APK package or index."""

    code = "apk_error"


class LintFailed(FarmError):
    """A required linter found something in a built package."""

    code = "lint_failed"


class FarmProcessError(FarmError):
    """A local farm process failed."""

    code = "farm_process_error"


class StoreError(FarmError):
    """The build store failed."""

    code = "store_error"


class NotFound(StoreError):
    """No such build or package."""

    code = "not_found"


class InvalidTransition(StoreError):
    """The package is not in a state that allows this change."""

    code = "invalid_transition"


class StoreConflict(StoreError):
    """The write conflicts with stored data."""

    code = "store_conflict"


class StoreUnavailable(StoreError):
    """The build store's database is unavailable."""

    code = "store_unavailable"


class PackageFailed(FarmError):
    """The package failed."""

    code = "package_failed"


class TimedOut(PackageFailed):
    """The package ran past its time limit."""

    code = "timed_out"


class PublishConflict(FarmError):
    """The repository already holds a different package of that name, version and epoch."""

    code = "publish_conflict"


class Unavailable(FarmError):
    """The server cannot take work now."""

    code = "unavailable"


class RequestError(FarmError):
    """The request is invalid."""

    code = "bad_request"
    exit_code = 2


@dataclass(frozen=True, kw_only=True, slots=True)
class ConfigProblem:
    """What is wrong with one config of a submission."""

    #: its position in the request's ``configs`` (0 for ``config_yaml``)
    index: int
    #: how the request names it: ``configs[3]`` or ``config_yaml``
    config: str
    #: ``package.name`` when it could be read, else ``""``
    package: str
    #: the error, ``<config>:<line>: <field>: <what is wrong>``
    error: str


class InvalidConfigs(RequestError):
    """Configs of the submission are invalid."""

    def __init__(self, problems: Sequence[ConfigProblem], *, total: int) -> None:
        #: every invalid config, in submission order
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        #: how many configs the submission had
        self.total = total
        if len(self.problems) == 1:
            message = self.problems[0].error
        else:
            lines = "\n".join(p.error for p in self.problems)
            message = f"{len(self.problems)} of {total} configs are invalid:\n{lines}"
        super().__init__(message)
