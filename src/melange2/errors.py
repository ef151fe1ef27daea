"""The farm's exceptions: one root, stable codes for the wire, exit codes for the shell.

::

    FarmError
    ├── ConfigError                 bad farm or tool configuration (flags, files)
    ├── RecipeError                 a melange config that cannot be parsed or resolved
    ├── BuildkitError               talking to a BuildKit daemon
    │   ├── BuildkitUnavailable     the daemon cannot be reached or went away (a backend fault)
    │   ├── SolveFailed             the build itself failed (a step exited non-zero, ...)
    │   └── SolveCancelled          the solve was cancelled
    ├── RegistryError               talking to an OCI registry
    │   └── ManifestNotFound
    ├── ApkError                    reading or writing APK packages and indexes
    ├── LintFailed                  a required linter found something in a built package
    ├── FarmProcessError            starting or stopping the local farm's processes
    ├── StoreError                  the build store failed
    │   ├── NotFound                no such build or package
    │   ├── InvalidTransition       a state change the store refused (wrong current state)
    │   ├── StoreConflict           a write that conflicts with stored data (a taken id)
    │   └── StoreUnavailable        the database cannot be reached or gave up for now
    ├── PackageFailed               a package's attempt failed (the reason, for the client)
    │   └── TimedOut                it ran past its time limit or stayed silent too long
    ├── PublishConflict             the farm's repository already holds other bytes under
    │                               that package's file name
    ├── Unavailable                 the server cannot take work now (HTTP 503)
    └── RequestError                a client's request is invalid (HTTP 4xx)
        └── InvalidConfigs          configs of a submission do not parse or compile (each named)

Each class has a ``code`` (a stable string for JSON error bodies) and an ``exit_code``
(for the CLI). The message defaults to the class docstring's first line.
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
