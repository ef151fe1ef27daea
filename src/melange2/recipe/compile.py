"""Compile a loaded config into the shell steps a build runs, as melange does.

A :class:`~melange2.recipe.model.Config` still holds ``uses:`` references, ``if:``
conditions and nested ``pipeline:`` groups. :func:`compile_build` walks the main
pipeline and then each subpackage's (in order, on the same workspace), and returns a
:class:`BuildPlan`: a flat tuple of :class:`ExecStep`, each one ``/bin/sh -c <script>``
with its environment and working directory, plus the packages the steps need.
:func:`compile_tests` does the same for the ``test:`` sections.

Where ``uses: <name>`` comes from (:class:`PipelineResolver`), first match wins:

1. the caller's directories (melange's ``--pipeline-dir``; a config's ``./pipelines``);
2. :data:`BUILTIN_PIPELINE_DIR`, melange2's own files: pipelines newer melange has and
   v0.34.0 lacks (``go/build/v2``), and documented extensions of melange's
   (``git-checkout`` with ``sparse-paths``, retries, ...);
3. :data:`MELANGE_PIPELINE_DIR`, every pipeline melange v0.34.0 ships, installed unchanged
   from the pinned Go module by ``scripts/gen_pipelines.py`` (``make setup``).

How a step list is walked (melange's ``pkg/build/compile.go`` and ``pipeline.go``):

* ``if:`` is substituted (values quoted) and evaluated; a false step is skipped with its
  nested steps and its ``needs``. A subpackage whose ``if:`` is false builds nothing, but
  its pipelines are still compiled and their ``needs`` still go into the build
  environment (melange gathers them before it evaluates the subpackage's ``if``). A
  subpackage's ``if`` sees only ``package.*``, ``vars.*`` and ``range.*``; any other
  variable is ``""`` there, as in melange v0.34.0 (see ``Subpackage.if_``): ``if:
  ${{build.arch}} == 'aarch64'`` on a subpackage is false on every architecture.
* ``uses: <name>`` loads the pipeline file. Its inputs are the step's ``with:`` values
  (substituted in the caller's context) over the declared defaults; an empty required
  input, a ``with:`` key the pipeline does not declare, or an ``expected-sha256``/
  ``expected-sha512``/``expected-commit`` that is not 64/128/40 hex digits is an error,
  as in melange. The pipeline's steps are then substituted with ``${{inputs.*}}`` plus
  the package or subpackage context (``targets.contextdir`` and ``targets.subpkgdir``
  differ per subpackage). As in melange, a nested ``uses`` also sees the inputs of the
  pipelines around it (its own win). A pipeline that declares ``needs`` replaces the
  calling step's own ``needs`` (melange overwrites the step with the file).
* Nested steps inherit ``working-directory`` and ``environment`` from their parent
  (also the steps a ``uses`` expands to); their own values win. ``environment`` values
  are not substituted here: as in melange v0.34.0, only ``package.*``, ``vars.*`` and
  ``range.*`` are, when the config is loaded (:mod:`melange2.recipe.parse`).
* ``assertions: {required-steps: N}`` on a step holds when exactly N of its nested steps
  run; conditions are known when compiling, so a violation is an error here, before
  anything runs (melange finds it while building).
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

Not done here: melange's ``stripComments`` (it re-prints every script with mvdan/sh,
dropping comments; ours keep the text as written), ``label`` breakpoints and ``retry:``.
melange runs an empty script for each group or ``uses`` step (its only effect is the
``mkdir -p`` of the working directory); we emit no step for it.
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
    subpackage_substitutions,
    substitute,
    substitute_condition,
    substitution_map,
)

__all__ = [
    "BUILTIN_PIPELINE_DIR",
    "DEFAULT_ENVIRONMENT",
    "DEFAULT_PATH",
    "MELANGE_PIPELINE_DIR",
    "BuildPlan",
    "ExecStep",
    "PipelineResolver",
    "TestPlan",
    "builtin_pipelines",
    "compile_build",
    "compile_tests",
    "environment_packages",
    "pipeline_origin",
    "subpackage_builds",
]

#: melange2's own pipelines: what v0.34.0 lacks (``go/build/v2``) and documented
#: extensions of melange's (``git-checkout``). Searched before melange's.
BUILTIN_PIPELINE_DIR: Final = Path(__file__).with_name("pipelines")
#: Every pipeline melange ships (``uses: fetch``, ``uses: split/dev``, ...), installed from
#: the pinned ``chainguard.dev/melange`` module by ``scripts/gen_pipelines.py``.
MELANGE_PIPELINE_DIR: Final = Path(__file__).with_name("_melange_pipelines")
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
#: Inputs melange checks the form of, and their length in hex digits.
_HEX_INPUTS: Final = {"expected-sha256": 64, "expected-sha512": 128, "expected-commit": 40}
_HEX: Final = frozenset("0123456789abcdefABCDEF")


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
    #: The build's ``environment.environment`` (with melange's defaults) and the test's
    #: ``environment.environment`` over it, as ``melange test`` sets them.
    environment: Mapping[str, str]
    steps: tuple[ExecStep, ...]


# -- pipeline files ----------------------------------------------------------------------


def _names(directory: Path) -> set[str]:
    return {p.relative_to(directory).with_suffix("").as_posix() for p in directory.rglob("*.yaml")}


def builtin_pipelines() -> tuple[str, ...]:
    """The ``uses:`` names of every built-in pipeline (melange's and ours), sorted."""
    return tuple(sorted(_names(BUILTIN_PIPELINE_DIR) | _names(MELANGE_PIPELINE_DIR)))


def melange_version() -> str:
    """The melange release whose pipelines are installed (``""`` if they are not)."""
    try:
        first = (MELANGE_PIPELINE_DIR / "SOURCE").read_text().split("\n", 1)[0]
    except OSError:
        return ""
    return first.rpartition(" ")[2]


def pipeline_origin(uses: str) -> str | None:
    """Where built-in ``uses`` comes from: ``"melange2"`` (ours, an addition or an
    extension), ``"melange <version>"``, or ``None`` if no built-in has that name."""
    if (BUILTIN_PIPELINE_DIR / f"{uses}.yaml").is_file():
        return "melange2"
    if (MELANGE_PIPELINE_DIR / f"{uses}.yaml").is_file():
        return f"melange {melange_version()}"
    return None


class PipelineResolver:
    """Finds the file behind ``uses: <name>`` and loads it (once per file).

    ``uses: autoconf/configure`` is ``<dir>/autoconf/configure.yaml`` in the first of
    ``search_dirs`` that has it (melange's ``--pipeline-dir``; pass the config's
    ``./pipelines`` too), else the built-in one (ours, then melange's: see the module
    docstring).

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
            dirs += [BUILTIN_PIPELINE_DIR, MELANGE_PIPELINE_DIR]
        self._dirs: tuple[Path, ...] = tuple(dirs)
        self._builtins = builtins
        self._cache: dict[Path, PipelineDef] = {}
        self._found: dict[str, Path | None] = {}
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
        if uses in self._found:
            return self._found[uses]
        if not _USES_RE.fullmatch(uses) or ".." in uses.split("/"):
            raise ValueError(f"invalid pipeline name {excerpt(uses)}")
        found = next(
            (d / f"{uses}.yaml" for d in self._dirs if (d / f"{uses}.yaml").is_file()), None
        )
        self._found[uses] = found
        return found

    def resolve(
        self, uses: str, *, location: Location | None = None, step: Step | None = None
    ) -> PipelineDef:
        """Load the pipeline ``uses`` names; ``location`` (or the ``uses`` of ``step``) is
        blamed when there is none."""
        path = self._found.get(uses)
        if path is not None:
            loaded = self._cache.get(path)
            if loaded is not None:
                return loaded
        if location is None and step is not None:
            location = step.where("uses")
        try:
            path = self.find(uses)
        except ValueError as exc:
            raise RecipeFieldError(str(exc), location=location) from None
        if path is None:
            looked = ", ".join(self._shown(d, f"{uses}.yaml") for d in self._dirs)
            hint = ""
            if self._builtins and not (MELANGE_PIPELINE_DIR / "SOURCE").is_file():
                hint = (
                    "; melange's pipelines are not installed: run `make setup` "
                    "(scripts/gen_pipelines.py)"
                )
            raise RecipeFieldError(
                f"unknown pipeline {excerpt(uses)}: no such file in any pipeline directory "
                f"(looked for {looked}){hint}",
                location=location,
            )
        loaded = self._cache.get(path)
        if loaded is None:
            shown = self._shown(path.parents[uses.count("/")], f"{uses}.yaml")
            try:
                loaded = self._cache[path] = load_pipeline(path, filename=shown)
            except RecipeFieldError as exc:
                # the file is at fault, through this use of it: name both
                raise RecipeFieldError(
                    f"pipeline {excerpt(uses)} is invalid: {exc}", location=location
                ) from exc
        return loaded


# -- compilation -------------------------------------------------------------------------


def compile_build(
    config: Config, resolver: PipelineResolver | None = None, *, steps: bool = True
) -> BuildPlan:
    """The steps that build ``config`` (main package, then each subpackage), in order.

    ``resolver`` defaults to the built-in pipelines only. With ``steps=False`` everything
    is compiled and checked as usual (the same errors) but no :class:`ExecStep` is made:
    the plan's ``steps`` are empty, its ``needs_packages`` complete (what a submission
    needs of thousands of configs).
    """
    resolver = resolver or PipelineResolver()
    environment = _with_defaults(config.environment.environment)
    needs = _Needs()
    out: list[ExecStep] = []
    digests: list[str] = []
    main = substitution_map(config)
    contexts: list[tuple[str, Mapping[str, str], tuple[Step, ...], bool]] = [
        (config.package.name, main, config.pipeline, True)
    ]
    for sp in config.subpackages:
        sp_mapping = _subpackage_mapping(main, sp)
        contexts.append((sp.name, sp_mapping, sp.pipeline, subpackage_builds(sp)))
    for package, mapping, pipeline, builds in contexts:
        walker = _Walker(
            resolver=resolver, package=package, base_env=environment, needs=needs, emit=steps
        )
        walker.walk(pipeline, _Frame(mapping=mapping))
        if builds:
            out.extend(walker.steps)
            digests.extend(walker.digests)
    return BuildPlan(
        steps=tuple(out),
        needs_packages=needs.packages(),
        environment=environment,
        source_digests=tuple(dict.fromkeys(digests)),
    )


def subpackage_enabled(config: Config, subpackage: Subpackage) -> bool:
    """Whether ``subpackage`` is built: its ``if:`` holds (melange skips it otherwise), as
    melange v0.34.0 evaluates it (:func:`subpackage_builds`)."""
    return subpackage_builds(subpackage)


def compile_tests(
    config: Config, resolver: PipelineResolver | None = None, *, steps: bool = True
) -> tuple[TestPlan, ...]:
    """A :class:`TestPlan` for the main package's ``test:`` and each subpackage's, in order.

    Subpackages whose ``if:`` is false are not tested (they are not built). ``steps``: as
    for :func:`compile_build`.
    """
    resolver = resolver or PipelineResolver()
    build_env = _with_defaults(config.environment.environment)
    main = substitution_map(config)
    plans: list[TestPlan] = []
    if config.test is not None:
        plans.append(
            _compile_test(config.test, config.package.name, main, resolver, build_env, steps)
        )
    for sp in config.subpackages:
        if sp.test is None:
            continue
        if not subpackage_builds(sp):
            continue
        plans.append(
            _compile_test(
                sp.test, sp.name, _subpackage_mapping(main, sp), resolver, build_env, steps
            )
        )
    return tuple(plans)


def _compile_test(
    test: Test,
    package: str,
    mapping: Mapping[str, str],
    resolver: PipelineResolver,
    build_env: Mapping[str, str],
    steps: bool,
) -> TestPlan:
    # melange test: the build's environment, then the test environment's over it
    environment = frozen_map({**build_env, **test.environment.environment})
    needs = _Needs()
    needs.add(test.environment.contents.packages)
    needs.add([package])
    walker = _Walker(
        resolver=resolver, package=package, base_env=environment, needs=needs, emit=steps
    )
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


def _subpackage_mapping(main: Mapping[str, str], sp: Subpackage) -> dict[str, str]:
    mapping = subpackage_substitutions(main, sp.name)
    if sp.range:
        mapping["range.key"] = sp.range_key
        mapping["range.value"] = sp.range_value
    return mapping


def environment_packages(config: Config, plan: BuildPlan) -> list[str]:
    """The world of a build's environment: its contents, then what its pipelines need."""
    contents = config.environment.contents.packages
    return [*contents, *(p for p in plan.needs_packages if p not in contents)]


def subpackage_builds(sp: Subpackage) -> bool:
    """Whether melange builds (and tests) subpackage ``sp``: its ``if`` holds, every
    variable still in it being ``""`` (melange v0.34.0, see ``Subpackage.if_``)."""
    return not sp.if_ or evaluate_condition(sp.if_, location=sp.where("if"))


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
        emit: bool = True,
    ) -> None:
        self.resolver = resolver
        self.package = package
        self.base_env = base_env
        self.needs = needs
        self.emitting = emit
        self.steps: list[ExecStep] = []
        self.digests: list[str] = []

    def walk(self, steps: Sequence[Step], frame: _Frame) -> int:
        """Walk ``steps``; returns how many of them run (their ``if`` holds)."""
        return sum(self.step(step, frame) for step in steps)

    def step(self, step: Step, frame: _Frame) -> bool:
        mapping = frame.mapping

        def text(key: str, value: str) -> str:
            if "${{" not in value:  # skip building the location
                return value
            return substitute(value, mapping, location=step.where(key))

        if step.if_ and not _condition_holds(step.if_, mapping, step.where("if")):
            return False
        name = text("name", step.name)
        workdir = text("working-directory", step.working_directory) or frame.workdir
        # melange substitutes no environment value when compiling (parse.py did what it does)
        env = {**frame.env, **step.environment}
        own_needs = [text(f"needs.packages[{i}]", v) for i, v in enumerate(step.needs_packages)]
        origin = frame.origin or step.loc

        # melange: a step that spells out its pipeline treats ``uses`` as a note.
        if step.uses and not step.pipeline:
            self.expand(step, name, workdir, env, origin, frame, own_needs)
            return True

        self.needs.add(own_needs)
        runs = text("runs", step.runs)
        if runs and self.emitting:
            label = name or step.uses or _short(runs)
            display = _join(frame.prefix, label, sole=frame.sole and not name)
            self.emit(display, runs, workdir, env, origin, step.where("runs"))
        if step.pipeline:
            inner_prefix = _join(frame.prefix, name, sole=False) if name else frame.prefix
            ran = self.walk(
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
            _check_required_steps(step, ran, len(step.pipeline))
        elif step.required_steps is not None:
            _check_required_steps(step, 0, 0)
        return True

    def expand(
        self,
        step: Step,
        name: str,
        workdir: str,
        env: Mapping[str, str],
        origin: Location,
        frame: _Frame,
        own_needs: Sequence[str],
    ) -> None:
        uses = step.uses
        if uses in frame.chain:
            cycle = " -> ".join((*frame.chain, uses))
            raise RecipeFieldError(
                f"pipeline {excerpt(uses)} uses itself ({cycle})", location=step.where("uses")
            )
        if len(frame.chain) >= _MAX_DEPTH:
            raise RecipeFieldError(
                f"'uses' nested more than {_MAX_DEPTH} deep", location=step.where("uses")
            )
        definition = self.resolver.resolve(uses, step=step)
        inputs = _inputs(step, definition, frame.mapping)
        for algorithm in ("sha256", "sha512"):
            value = inputs.get(f"expected-{algorithm}", "").strip().lower()
            if value:
                self.digests.append(f"{algorithm}:{value}")
        # melange: the enclosing pipelines' inputs stay visible; this one's win.
        mapping = {**frame.mapping, **{f"inputs.{k}": v for k, v in inputs.items()}}
        if definition.needs_packages:
            # melange decodes the file over the calling step: its needs replace the step's.
            self.needs.add(
                substitute(v, mapping, location=definition.where(f"needs.packages[{i}]"))
                if "${{" in v
                else v
                for i, v in enumerate(definition.needs_packages)
            )
        else:
            self.needs.add(own_needs)
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
            ran = self.walk(definition.pipeline, body)
        except RecipeFieldError as exc:
            # The pipeline file is at fault only through this step's use of it: blame both.
            raise RecipeFieldError(
                f"in pipeline {excerpt(uses)}: {exc}", location=step.where("uses")
            ) from exc
        _check_required_steps(step, ran, len(definition.pipeline))

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


def _check_required_steps(step: Step, ran: int, total: int) -> None:
    want = step.required_steps
    if want is not None and want != ran:
        skipped = f" (the 'if' of {total - ran} is false)" if ran < total else ""
        raise RecipeFieldError(
            f"the step requires {want} nested step{'s' if want != 1 else ''} to run, "
            f"but {ran} of its {total} run{skipped}",
            location=step.where("assertions.required-steps"),
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
        if "${{" in value
        else value
        for key, value in step.with_.items()
    }
    scope = {**caller, **{f"inputs.{k}": v for k, v in given.items()}}
    out: dict[str, str] = {}
    for key, spec in definition.inputs.items():
        value = given.get(key, "")
        if not value and "${{" in spec.default:
            value = substitute(spec.default, scope, location=definition.where(f"inputs.{key}"))
        elif not value:
            value = spec.default
        if spec.required and not value:
            first = next(iter(spec.description.strip().splitlines()), "")[:100]
            described = f" ({first})" if first else ""
            raise RecipeFieldError(
                f"pipeline {excerpt(step.uses)} requires input {excerpt(key)}{described}",
                location=_with_where(step, key),
            )
        length = _HEX_INPUTS.get(key)
        if length and value and (len(value) != length or not _HEX.issuperset(value)):
            raise RecipeFieldError(
                f"input {excerpt(key)} of pipeline {excerpt(step.uses)} must be {length} "
                f"hexadecimal digits, got {excerpt(value)}",
                location=_with_where(step, key),
            )
        out[key] = value
    return out


def _with_where(step: Step, key: str) -> Location:
    return step.where(f"with.{key}") if key in step.with_ else step.where("with")


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
