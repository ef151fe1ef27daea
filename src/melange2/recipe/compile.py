"""Compile a loaded config into the shell steps a build runs, as melange does.

A :class:`~melange2.recipe.model.Config` still holds ``uses:`` references, ``if:``
conditions and nested ``pipeline:`` groups. :func:`compile_build` walks the main
pipeline and then each subpackage's (in order, on the same workspace), and returns a
:class:`BuildPlan`: a flat tuple of :class:`ExecStep`, each one ``/bin/sh -c <script>``
with its environment and working directory, plus the packages the steps need.
:func:`compile_tests` does the same for the ``test:`` sections.

How a step list is walked (melange's ``pkg/build/compile.go`` and ``pipeline.go``):

* ``if:`` is substituted (values quoted) and evaluated; a false step is skipped with its
  nested steps and its ``needs``. A subpackage whose ``if:`` is false is skipped whole.
* ``uses: <name>`` loads ``<dir>/<name>.yaml`` from the :class:`PipelineResolver`'s
  directories, then the built-ins. Its inputs are the step's ``with:`` values (substituted
  in the caller's context) over the declared defaults; an empty required input, or a
  ``with:`` key the pipeline does not declare, is an error (current melange rejects
  undeclared inputs too: it catches typos such as ``expected-sha265``). The pipeline's
  steps are then substituted with ``${{inputs.*}}`` plus the package or subpackage
  context (``targets.contextdir`` and ``targets.subpkgdir`` differ per subpackage).
  Inputs of an enclosing ``uses`` are not visible inside a nested one unless passed on
  through ``with:``.
* Nested steps inherit ``working-directory`` and ``environment`` from their parent
  (also the steps a ``uses`` expands to); their own values win.
* A step with ``runs`` becomes an :class:`ExecStep`. Its script is melange's wrapper::

      set -e
      [ -d '<workdir>' ] || mkdir -p '<workdir>'
      cd '<workdir>'
      <runs>
      exit 0

  The working directory defaults to ``/home/build``; a relative one is relative to it.
  The step's environment is the config's ``environment.environment`` (with melange's
  defaults for ``HOME``, ``GOPATH`` and ``GOMODCACHE``), then ``PATH`` (melange sets it
  for every step, so it wins over the config's), then the step's own ``environment``.

Every problem (unknown ``uses``, missing required input, undefined variable, recursion)
is a :class:`~melange2.recipe.errors.RecipeFieldError` raised before anything runs,
naming the file, line and field.

Not done here: melange's ``stripComments`` (the scripts keep their comments), ``label``
breakpoints, ``retry:`` and ``assertions:``.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from melange2.names import excerpt
from melange2.recipe.cond import evaluate_condition
from melange2.recipe.errors import RecipeFieldError
from melange2.recipe.model import (
    Config,
    Contents,
    Location,
    PipelineDef,
    Step,
    Subpackage,
    Test,
    frozen_map,
)
from melange2.recipe.parse import load_pipeline
from melange2.recipe.subst import (
    BUILD_DIR,
    substitute,
    substitute_condition,
    substitution_map,
)

__all__ = [
    "BUILTIN_PIPELINE_DIR",
    "DEFAULT_ENVIRONMENT",
    "DEFAULT_PATH",
    "BuildPlan",
    "ExecStep",
    "PipelineResolver",
    "TestPlan",
    "builtin_pipelines",
    "compile_build",
    "compile_tests",
]

#: The pipelines shipped with melange2 (``uses: fetch``, ``uses: split/dev``, ...).
BUILTIN_PIPELINE_DIR: Final = Path(__file__).with_name("pipelines")
#: ``PATH`` of every step (melange sets it per step, over the image's).
DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Variables melange puts in a build or test environment when the config leaves them unset.
DEFAULT_ENVIRONMENT: Final[Mapping[str, str]] = frozen_map(
    {
        "HOME": BUILD_DIR,
        "GOPATH": f"{BUILD_DIR}/.cache/go",
        "GOMODCACHE": "/var/cache/melange/gomodcache",
    }
)

_USES_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*")
_MAX_DEPTH: Final = 32
_SHORT_SCRIPT: Final = 60


# -- results -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class ExecStep:
    """One shell step of a build or test, ready to run as ``/bin/sh -c script``."""

    #: Display name: the step's ``name``, else its ``uses``, else the script's first line;
    #: steps a ``uses`` expands to are ``"<uses or name> / <inner name>"``.
    name: str
    #: The whole script: melange's ``set -e``/``mkdir -p``/``cd`` prologue, the substituted
    #: ``runs`` and ``exit 0``.
    script: str
    #: The complete environment of the step (see the module docstring).
    env: Mapping[str, str]
    #: Absolute working directory (created by the script if missing).
    workdir: str
    #: The package or subpackage this step builds (or tests).
    package: str
    #: The step in the recipe this came from (for a ``uses``, the calling step).
    location: Location
    #: Where the ``runs`` text itself was written (a pipeline file for ``uses`` steps).
    source: Location

    @property
    def argv(self) -> tuple[str, ...]:
        """The command to execute."""
        return ("/bin/sh", "-c", self.script)


@dataclass(frozen=True, kw_only=True, slots=True)
class BuildPlan:
    """Everything a build runs, in order: the main package, then each subpackage."""

    steps: tuple[ExecStep, ...]
    #: ``needs.packages`` of every step and pipeline that runs (deduplicated, in order).
    #: The build environment is ``environment.contents.packages`` plus these.
    needs_packages: tuple[str, ...]
    #: The config's ``environment.environment`` with melange's defaults.
    environment: Mapping[str, str]
    #: What the ``expected-sha256``/``expected-sha512`` inputs of the pipelines that run
    #: name (``sha256:<hex>``, in order): the downloads a source cache may already hold.
    source_digests: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class TestPlan:
    """The ``test:`` section of one package, compiled."""

    #: The package under test.
    package: str
    #: The test environment: its repositories and keyring, and its packages followed by
    #: the package under test and the steps' ``needs.packages`` (deduplicated, in order).
    contents: Contents
    #: The test's ``environment.environment`` with melange's defaults.
    environment: Mapping[str, str]
    steps: tuple[ExecStep, ...]


# -- pipeline files ----------------------------------------------------------------------


def builtin_pipelines() -> tuple[str, ...]:
    """The ``uses:`` names of every built-in pipeline, sorted."""
    return tuple(
        sorted(
            path.relative_to(BUILTIN_PIPELINE_DIR).with_suffix("").as_posix()
            for path in BUILTIN_PIPELINE_DIR.rglob("*.yaml")
        )
    )


class PipelineResolver:
    """Finds the file behind ``uses: <name>`` and loads it (once per file).

    ``uses: autoconf/configure`` is ``<dir>/autoconf/configure.yaml`` in the first of
    ``search_dirs`` that has it (melange's ``--pipeline-dir``; pass the config's
    ``./pipelines`` too), else the built-in one.

    >>> PipelineResolver([]).resolve("split/dev").name
    'Split development files'
    """

    def __init__(
        self,
        search_dirs: Sequence[Path] = (),
        *,
        builtins: bool = True,
        labels: Mapping[Path, str] | None = None,
    ) -> None:
        dirs = [Path(d) for d in search_dirs]
        if builtins:
            dirs.append(BUILTIN_PIPELINE_DIR)
        self._dirs: tuple[Path, ...] = tuple(dirs)
        self._cache: dict[Path, PipelineDef] = {}
        #: what errors call a directory instead of its path (a server's scratch
        #: directory means nothing to its client): ``<label>/<file>``
        self._labels = {Path(d): label for d, label in (labels or {}).items()}

    def _shown(self, directory: Path, relative: str) -> str:
        label = self._labels.get(directory)
        return f"{label}/{relative}" if label is not None else str(directory / relative)

    @property
    def search_dirs(self) -> tuple[Path, ...]:
        """Where ``uses`` names are looked up, in order (the built-ins last)."""
        return self._dirs

    def find(self, uses: str) -> Path | None:
        """The file ``uses`` refers to, or ``None``. Raises ``ValueError`` for a bad name."""
        if not _USES_RE.fullmatch(uses) or ".." in uses.split("/"):
            raise ValueError(f"invalid pipeline name {excerpt(uses)}")
        for directory in self._dirs:
            candidate = directory / f"{uses}.yaml"
            if candidate.is_file():
                return candidate
        return None

    def resolve(self, uses: str, *, location: Location | None = None) -> PipelineDef:
        """Load the pipeline ``uses`` names; ``location`` is blamed when there is none."""
        try:
            path = self.find(uses)
        except ValueError as exc:
            raise RecipeFieldError(str(exc), location=location) from None
        if path is None:
            looked = ", ".join(self._shown(d, f"{uses}.yaml") for d in self._dirs)
            raise RecipeFieldError(
                f"unknown pipeline {excerpt(uses)} (looked for {looked})", location=location
            )
        loaded = self._cache.get(path)
        if loaded is None:
            shown = self._shown(path.parents[uses.count("/")], f"{uses}.yaml")
            loaded = self._cache[path] = load_pipeline(path, filename=shown)
        return loaded


# -- compilation -------------------------------------------------------------------------


def compile_build(config: Config, resolver: PipelineResolver | None = None) -> BuildPlan:
    """The steps that build ``config`` (main package, then each subpackage), in order.

    ``resolver`` defaults to the built-in pipelines only.
    """
    resolver = resolver or PipelineResolver()
    environment = _with_defaults(config.environment.environment)
    needs = _Needs()
    steps: list[ExecStep] = []
    digests: list[str] = []
    contexts: list[tuple[str, Mapping[str, str], tuple[Step, ...]]] = [
        (config.package.name, substitution_map(config), config.pipeline)
    ]
    for sp in config.subpackages:
        sp_mapping = substitution_map(config, subpackage=sp.name)
        if not _condition_holds(sp.if_, sp_mapping, sp.where("if")):
            continue
        contexts.append((sp.name, sp_mapping, sp.pipeline))
    for package, mapping, pipeline in contexts:
        walker = _Walker(resolver=resolver, package=package, base_env=environment, needs=needs)
        walker.walk(pipeline, _Frame(mapping=mapping))
        steps.extend(walker.steps)
        digests.extend(walker.digests)
    return BuildPlan(
        steps=tuple(steps),
        needs_packages=needs.packages(),
        environment=environment,
        source_digests=tuple(dict.fromkeys(digests)),
    )


def subpackage_enabled(config: Config, subpackage: Subpackage) -> bool:
    """Whether ``subpackage`` is built: its ``if:`` holds (melange skips it otherwise)."""
    mapping = substitution_map(config, subpackage=subpackage.name)
    return _condition_holds(subpackage.if_, mapping, subpackage.where("if"))


def compile_tests(config: Config, resolver: PipelineResolver | None = None) -> tuple[TestPlan, ...]:
    """A :class:`TestPlan` for the main package's ``test:`` and each subpackage's, in order.

    Subpackages whose ``if:`` is false are not tested (they are not built).
    """
    resolver = resolver or PipelineResolver()
    plans: list[TestPlan] = []
    if config.test is not None:
        plans.append(
            _compile_test(config.test, config.package.name, substitution_map(config), resolver)
        )
    for sp in config.subpackages:
        if sp.test is None:
            continue
        mapping = substitution_map(config, subpackage=sp.name)
        if not _condition_holds(sp.if_, mapping, sp.where("if")):
            continue
        plans.append(_compile_test(sp.test, sp.name, mapping, resolver))
    return tuple(plans)


def _compile_test(
    test: Test, package: str, mapping: Mapping[str, str], resolver: PipelineResolver
) -> TestPlan:
    environment = _with_defaults(test.environment.environment)
    needs = _Needs()
    needs.add(test.environment.contents.packages)
    needs.add([package])
    walker = _Walker(resolver=resolver, package=package, base_env=environment, needs=needs)
    walker.walk(test.pipeline, _Frame(mapping=mapping))
    contents = test.environment.contents
    return TestPlan(
        package=package,
        contents=Contents(
            repositories=contents.repositories,
            keyring=contents.keyring,
            packages=needs.packages(),
        ),
        environment=environment,
        steps=tuple(walker.steps),
    )


def _with_defaults(env: Mapping[str, str]) -> Mapping[str, str]:
    out = dict(env)
    for key, value in DEFAULT_ENVIRONMENT.items():
        if not out.get(key):
            out[key] = value
    return frozen_map(out)


def _condition_holds(expr: str, mapping: Mapping[str, str], where: Location) -> bool:
    if not expr:
        return True
    quoted = substitute_condition(expr, mapping, location=where)
    return evaluate_condition(quoted, location=where)


class _Needs:
    """An ordered set of package names."""

    def __init__(self) -> None:
        self._seen: dict[str, None] = {}

    def add(self, names: Iterable[str]) -> None:
        for name in names:
            if name:
                self._seen.setdefault(name, None)

    def packages(self) -> tuple[str, ...]:
        return tuple(self._seen)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Frame:
    """What a step inherits from where it sits."""

    #: Substitutions: the package or subpackage context, plus the enclosing ``uses``'s inputs.
    mapping: Mapping[str, str]
    #: Inherited working directory (``""``: none).
    workdir: str = ""
    #: Inherited step environment.
    env: Mapping[str, str] = field(default_factory=dict)
    #: Display-name prefix (``"fetch"`` inside ``uses: fetch``).
    prefix: str = ""
    #: The recipe step that led here (``None`` at the recipe's own level).
    origin: Location | None = None
    #: The ``uses`` names being expanded, outermost first (to refuse recursion).
    chain: tuple[str, ...] = ()
    #: Whether this is the body of a ``uses`` with a single step (it takes the prefix).
    sole: bool = False


class _Walker:
    """Flattens one package's (or test's) step list into :class:`ExecStep`\\ s."""

    def __init__(
        self,
        *,
        resolver: PipelineResolver,
        package: str,
        base_env: Mapping[str, str],
        needs: _Needs,
    ) -> None:
        self.resolver = resolver
        self.package = package
        self.base_env = base_env
        self.needs = needs
        self.steps: list[ExecStep] = []
        self.digests: list[str] = []

    def walk(self, steps: Sequence[Step], frame: _Frame) -> None:
        for step in steps:
            self.step(step, frame)

    def step(self, step: Step, frame: _Frame) -> None:
        mapping = frame.mapping

        def text(key: str, value: str) -> str:
            return substitute(value, mapping, location=step.where(key))

        if not _condition_holds(step.if_, mapping, step.where("if")):
            return
        name = text("name", step.name)
        workdir = text("working-directory", step.working_directory) or frame.workdir
        env = {
            **frame.env,
            **{k: text(f"environment.{k}", v) for k, v in step.environment.items()},
        }
        self.needs.add(text(f"needs.packages[{i}]", v) for i, v in enumerate(step.needs_packages))
        origin = frame.origin or step.loc

        # melange: a step that spells out its pipeline treats ``uses`` as a note.
        if step.uses and not step.pipeline:
            self.expand(step, name, workdir, env, origin, frame)
            return

        runs = text("runs", step.runs)
        label = name or step.uses or _short(runs)
        display = _join(frame.prefix, label, sole=frame.sole and not name)
        if runs:
            self.emit(display, runs, workdir, env, origin, step.where("runs"))
        if step.pipeline:
            inner_prefix = _join(frame.prefix, name, sole=False) if name else frame.prefix
            self.walk(
                step.pipeline,
                _Frame(
                    mapping=mapping,
                    workdir=workdir,
                    env=env,
                    prefix=inner_prefix,
                    origin=frame.origin,
                    chain=frame.chain,
                ),
            )

    def expand(
        self,
        step: Step,
        name: str,
        workdir: str,
        env: Mapping[str, str],
        origin: Location,
        frame: _Frame,
    ) -> None:
        uses = step.uses
        where = step.where("uses")
        if uses in frame.chain:
            cycle = " -> ".join((*frame.chain, uses))
            raise RecipeFieldError(
                f"pipeline {excerpt(uses)} uses itself ({cycle})", location=where
            )
        if len(frame.chain) >= _MAX_DEPTH:
            raise RecipeFieldError(f"'uses' nested more than {_MAX_DEPTH} deep", location=where)
        definition = self.resolver.resolve(uses, location=where)
        inputs = _inputs(step, definition, frame.mapping)
        for algorithm in ("sha256", "sha512"):
            value = inputs.get(f"expected-{algorithm}", "").strip().lower()
            if value:
                self.digests.append(f"{algorithm}:{value}")
        context = {k: v for k, v in frame.mapping.items() if not k.startswith("inputs.")}
        mapping = {**context, **{f"inputs.{k}": v for k, v in inputs.items()}}
        self.needs.add(
            substitute(v, mapping, location=definition.where(f"needs.packages[{i}]"))
            for i, v in enumerate(definition.needs_packages)
        )
        body = _Frame(
            mapping=mapping,
            workdir=workdir,
            env=env,
            prefix=_join(frame.prefix, name or uses, sole=False),
            origin=origin,
            chain=(*frame.chain, uses),
            sole=len(definition.pipeline) == 1,
        )
        try:
            self.walk(definition.pipeline, body)
        except RecipeFieldError as exc:
            # The pipeline file is at fault only through this step's use of it: blame both.
            raise RecipeFieldError(f"in pipeline {excerpt(uses)}: {exc}", location=where) from exc

    def emit(
        self,
        name: str,
        runs: str,
        workdir: str,
        env: Mapping[str, str],
        origin: Location,
        source: Location,
    ) -> None:
        directory = posixpath.normpath(posixpath.join(BUILD_DIR, workdir or BUILD_DIR))
        quoted = shlex.quote(directory)
        script = (
            f"set -e\n[ -d {quoted} ] || mkdir -p {quoted}\ncd {quoted}\n"
            f"{runs.rstrip(chr(10))}\nexit 0\n"
        )
        self.steps.append(
            ExecStep(
                name=name,
                script=script,
                env=frozen_map({**self.base_env, "PATH": DEFAULT_PATH, **env}),
                workdir=directory,
                package=self.package,
                location=origin,
                source=source,
            )
        )


def _inputs(step: Step, definition: PipelineDef, caller: Mapping[str, str]) -> dict[str, str]:
    """The inputs of ``uses`` for ``step``: ``with:`` values over declared defaults."""
    for key in step.with_:
        if key not in definition.inputs:
            declared = ", ".join(sorted(definition.inputs)) or "none"
            raise RecipeFieldError(
                f"pipeline {excerpt(step.uses)} has no input {excerpt(key)} "
                f"(it declares: {declared})",
                location=step.where(f"with.{key}"),
            )
    given = {
        key: substitute(value, caller, location=step.where(f"with.{key}"))
        for key, value in step.with_.items()
    }
    context = {k: v for k, v in caller.items() if not k.startswith("inputs.")}
    scope = {**context, **{f"inputs.{k}": v for k, v in given.items()}}
    out: dict[str, str] = {}
    for key, spec in definition.inputs.items():
        value = given.get(key, "")
        if not value:
            value = substitute(spec.default, scope, location=definition.where(f"inputs.{key}"))
        if spec.required and not value:
            raise RecipeFieldError(
                f"pipeline {excerpt(step.uses)} requires input {excerpt(key)}",
                location=step.where(f"with.{key}") if key in step.with_ else step.where("with"),
            )
        out[key] = value
    return out


def _join(prefix: str, label: str, *, sole: bool) -> str:
    if not prefix:
        return label
    if sole or not label:
        return prefix
    return f"{prefix} / {label}"


def _short(runs: str) -> str:
    """The first line of a script that says something, shortened."""
    for line in runs.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            if len(line) > _SHORT_SCRIPT:
                return line[: _SHORT_SCRIPT - 3] + "..."
            return line
    return "???"
