"""Pipeline fidelity, measured: every config compiled by upstream melange v0.34.0
(``melange compile``, the oracle) and by melange2 must give the same steps.

Cases are ``examples/*/``, ``tests/differential/configs/*/`` and
``tests/differential/compile/*/`` (configs whose toolchains the bootstrap repository does
not have: they are compared here, at compile level, and never built), each compiled for
x86_64 and aarch64. For the build and for every test, in order, each step that runs must
have the same

* script: the substituted ``runs``; both sides are printed by melange's own shell printer
  (melange re-prints every script with mvdan/sh and drops comments; ours are fed back
  through ``melange compile`` as plain steps), so formatting and comments do not count;
* working directory and complete environment (the container's plus ``PATH`` plus the
  step's, merged the way melange's runner merges them);
* ``if`` outcomes (a step or subpackage whose condition is false is absent on both sides);

A case whose YAML says ``# differential: melange=refuses`` uses what v0.34.0 lacks
(substitution expressions): melange must refuse it, and we must compile it. One that says
``# differential: expect=failure`` and that ``melange compile`` refuses must be refused by
ours too.

and the build and test environments must hold the same packages (``needs`` included).
Named exceptions (:data:`KNOWN`) are the only differences allowed.

melange comes from ``.tools/bin/melange`` (``make setup``); without it these tests skip,
and under ``REQUIRE_BUILDKIT=1`` (CI) they fail.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from melange2.errors import RecipeError
from melange2.recipe import (
    BUILTIN_PIPELINE_DIR,
    DEFAULT_PATH,
    MELANGE_PIPELINE_DIR,
    PipelineResolver,
    compile_build,
    compile_tests,
    evaluate_condition,
    load_config,
)
from melange2.recipe.subst import BUILD_DIR

ROOT = Path(__file__).resolve().parents[3]
MELANGE = ROOT / ".tools" / "bin" / "melange"
CASE_ROOTS = [
    ROOT / "examples",
    ROOT / "tests" / "differential" / "configs",
    ROOT / "tests" / "differential" / "compile",
]
ARCHES = ("x86_64", "aarch64")

#: Differences we know of, by case name: what differs and why. A case listed here must
#: still show that difference (the test fails when the reason goes away).
KNOWN: dict[str, str] = {}


def _cases() -> list[Path]:
    found = []
    for root in CASE_ROOTS:
        if root.is_dir():
            found += [d for d in sorted(root.iterdir()) if len(list(d.glob("*.yaml"))) == 1]
    return found


CASES = _cases()


def _melange() -> Path:
    if MELANGE.is_file() and os.access(MELANGE, os.X_OK):
        return MELANGE
    message = f"upstream melange is not built at {MELANGE} (make setup builds it)"
    if os.environ.get("REQUIRE_BUILDKIT") == "1":
        pytest.fail(message + " (REQUIRE_BUILDKIT=1)", pytrace=False)
    pytest.skip(message)  # only without REQUIRE_BUILDKIT=1 (CI sets it: then it fails)


# -- the steps, as both sides run them ---------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One step that runs: what melange's runner would execute."""

    package: str
    runs: str
    workdir: str
    env: tuple[tuple[str, str], ...]

    def show(self) -> str:
        return f"[{self.package}] cd {self.workdir}\n{self.runs}\nenv {dict(self.env)}"


@dataclass(frozen=True)
class Compiled:
    build: tuple[Run, ...]
    build_packages: frozenset[str]
    #: per tested package: its environment's packages (sorted) and its steps
    tests: tuple[tuple[str, tuple[str, ...], tuple[Run, ...]], ...]


def _absolute(workdir: str) -> str:
    return posixpath.normpath(posixpath.join(BUILD_DIR, workdir or BUILD_DIR))


def _flatten(
    nodes: Sequence[Mapping[str, Any]],
    package: str,
    base: Mapping[str, str],
    inherited: dict[str, str],
) -> Iterator[tuple[str, str, dict[str, str]]]:
    """melange's runner over compiled pipelines: evaluate ``if``, merge environments."""
    for node in nodes:
        condition = node.get("if", "")
        if condition and not evaluate_condition(condition):
            continue
        env = {**inherited, **(node.get("environment") or {})}
        yield node.get("runs", ""), _absolute(node.get("working-directory", "")), env
        yield from _flatten(node.get("pipeline") or (), package, base, env)


def _melange_side(out: Mapping[str, Any]) -> Compiled:
    container = dict(out["environment"].get("environment") or {})

    def runs(
        nodes: Sequence[Mapping[str, Any]], package: str, base: Mapping[str, str]
    ) -> list[Run]:
        steps = []
        for script, workdir, env in _flatten(nodes, package, base, {"PATH": DEFAULT_PATH}):
            if script.strip():
                full = {**base, **env}
                steps.append(Run(package, script, workdir, _items(full)))
        return steps

    build = runs(out.get("pipeline") or (), out["package"]["name"], container)
    tests = []
    test = out.get("test")
    if test:
        test_env = {**container, **(test["environment"].get("environment") or {})}
        tests.append(
            (
                out["package"]["name"],
                tuple(test["environment"]["contents"].get("packages") or ()),
                tuple(runs(test.get("pipeline") or (), out["package"]["name"], test_env)),
            )
        )
    for sp in out.get("subpackages") or ():
        if sp.get("if") and not evaluate_condition(sp["if"]):
            continue
        build += runs(sp.get("pipeline") or (), sp["name"], container)
        if sp.get("test"):
            test_env = {**container, **(sp["test"]["environment"].get("environment") or {})}
            tests.append(
                (
                    sp["name"],
                    tuple(sp["test"]["environment"]["contents"].get("packages") or ()),
                    tuple(runs(sp["test"].get("pipeline") or (), sp["name"], test_env)),
                )
            )
    return Compiled(
        build=tuple(build),
        build_packages=frozenset(out["environment"]["contents"].get("packages") or ()),
        tests=tuple(tests),
    )


def _items(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(env.items()))


def _script_body(script: str) -> str:
    """The ``runs`` inside our wrapper (``set -e``/``mkdir``/``cd`` ... ``exit 0``)."""
    lines = script.split("\n")
    assert lines[0] == "set -e" and lines[-2:] == ["exit 0", ""], script
    return "\n".join(lines[3:-2]) + "\n"


# -- running melange ----------------------------------------------------------------------


def _melange_compile(config: Path, arch: str, pipeline_dir: Path) -> Mapping[str, Any]:
    result = subprocess.run(
        [
            str(_melange()),
            "compile",
            str(config),
            "--arch",
            arch,
            "--pipeline-dir",
            str(pipeline_dir),
            "--git-commit",
            "0" * 40,
            "--git-repo-url",
            "https://example.com/configs",
            "--log-level",
            "error",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise MelangeRefused(result.stderr.strip().splitlines()[-1] if result.stderr else "")
    parsed: Mapping[str, Any] = json.loads(result.stdout)
    return parsed


class MelangeRefused(Exception):
    pass


def _canonical(scripts: Sequence[str], work: Path) -> dict[str, str]:
    """Each script as melange prints it: compiled by melange as a plain ``runs`` step."""
    unique = sorted(set(scripts))
    if not unique:
        return {}
    config = work / "canon.yaml"
    steps = "".join(f"  - runs: {json.dumps(s)}\n" for s in unique)
    config.write_text(f"package: {{name: canon, version: '0', epoch: 0}}\npipeline:\n{steps}")
    empty = work / "canon-pipelines"
    empty.mkdir(exist_ok=True)
    out = _melange_compile(config, "x86_64", empty)
    printed = [node.get("runs", "") for node in out["pipeline"]]
    assert len(printed) == len(unique)
    return dict(zip(unique, printed, strict=True))


def _pipeline_dir(case: Path, work: Path, *, ours: bool = True) -> Path:
    """melange takes one --pipeline-dir: the case's over ours (go/build/v2, git-checkout);
    with ``ours=False`` the case's alone (melange's own pipelines for the rest)."""
    merged = work / "pipelines"
    merged.mkdir(parents=True, exist_ok=True)
    if ours:
        shutil.copytree(BUILTIN_PIPELINE_DIR, merged, dirs_exist_ok=True)
    if (case / "pipelines").is_dir():
        shutil.copytree(case / "pipelines", merged, dirs_exist_ok=True)
    return merged


def _ours(
    config_path: Path, case: Path, arch: str, work: Path, *, ours: bool = True
) -> tuple[Compiled, list[str]]:
    config = load_config(config_path, arch=arch)
    dirs = [case / "pipelines"] if (case / "pipelines").is_dir() else []
    resolver = (
        PipelineResolver(dirs)
        if ours
        else PipelineResolver([*dirs, MELANGE_PIPELINE_DIR], builtins=False)
    )
    plan = compile_build(config, resolver)
    tests = compile_tests(config, resolver)
    scripts = [_script_body(s.script) for s in plan.steps]
    scripts += [_script_body(s.script) for t in tests for s in t.steps]
    canon = _canonical(scripts, work)

    def runs(steps: Sequence[Any]) -> tuple[Run, ...]:
        out = []
        for step in steps:
            printed = canon[_script_body(step.script)]
            if printed.strip():  # a script of comments only: melange prints nothing
                out.append(Run(step.package, printed, step.workdir, _items(step.env)))
        return tuple(out)

    compiled = Compiled(
        build=runs(plan.steps),
        build_packages=frozenset((*config.environment.contents.packages, *plan.needs_packages)),
        tests=tuple(
            (t.package, tuple(sorted(set(t.contents.packages))), runs(t.steps)) for t in tests
        ),
    )
    return compiled, scripts


def _compare(ours: Compiled, theirs: Compiled) -> list[str]:
    problems = []
    for label, a, b in [("build", ours.build, theirs.build)] + [
        (f"test of {t[0]}", t[2], u[2]) for t, u in zip(ours.tests, theirs.tests, strict=False)
    ]:
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y:
                problems.append(
                    f"{label} step {i}:\n--- melange2\n{x.show()}\n--- melange\n{y.show()}"
                )
                break
        if len(a) != len(b):
            problems.append(f"{label}: melange2 runs {len(a)} steps, melange {len(b)}")
    if ours.build_packages != theirs.build_packages:
        only_ours = sorted(ours.build_packages - theirs.build_packages)
        only_theirs = sorted(theirs.build_packages - ours.build_packages)
        problems.append(f"build environment: melange2 only {only_ours}, melange only {only_theirs}")
    if [(t[0], t[1]) for t in ours.tests] != [(t[0], t[1]) for t in theirs.tests]:
        problems.append(
            f"test environments: melange2 {[(t[0], t[1]) for t in ours.tests]}, "
            f"melange {[(t[0], t[1]) for t in theirs.tests]}"
        )
    return problems


def _options(config: Path) -> str:
    """The ``# differential: ...`` option lines of a case (the suites' shared syntax)."""
    return " ".join(
        line.split(":", 1)[1]
        for line in config.read_text().splitlines()
        if line.startswith("# differential:")
    )


def _refused_by_melange(config: Path) -> bool:
    """``# differential: melange=refuses``: the config uses what v0.34.0 lacks."""
    return "melange=refuses" in _options(config).split()


def _must_fail(config: Path) -> bool:
    """``# differential: expect=failure``: both sides refuse it (here: if melange's
    compile refuses it, ours must too; a build failure is the build suite's)."""
    return "expect=failure" in _options(config).split()


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_compiles_as_melange_does(case: Path, arch: str, tmp_path: Path) -> None:
    (config_path,) = case.glob("*.yaml")
    _melange()
    if _refused_by_melange(config_path):
        with pytest.raises(MelangeRefused):
            _melange_compile(config_path, arch, _pipeline_dir(case, tmp_path))
        ours, _ = _ours(config_path, case, arch, tmp_path)
        assert ours.build
        assert all("${{" not in run.runs for run in ours.build)
        return
    try:
        theirs_raw = _melange_compile(config_path, arch, _pipeline_dir(case, tmp_path))
    except MelangeRefused:
        if not _must_fail(config_path):
            raise
        with pytest.raises(RecipeError):
            _ours(config_path, case, arch, tmp_path)
        return
    ours, _ = _ours(config_path, case, arch, tmp_path)
    theirs = _melange_side(theirs_raw)
    problems = _compare(ours, theirs)
    if case.name in KNOWN:
        assert problems, f"{case.name}: the known difference is gone: {KNOWN[case.name]}"
    else:
        assert not problems, "\n\n".join(problems)
    assert ours.build, "a case must compile to at least one step"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_with_melanges_own_pipelines_only(case: Path, tmp_path: Path) -> None:
    """Without melange2's pipelines: melange's git-checkout compiled by both; a config
    that needs what v0.34.0 lacks (go/build/v2, sparse-paths, ...) refused by both."""
    (config_path,) = case.glob("*.yaml")
    _melange()
    if _refused_by_melange(config_path):
        return  # beyond v0.34.0 whatever the pipelines: test_compiles_as_melange_does
    try:
        theirs_raw = _melange_compile(
            config_path, "x86_64", _pipeline_dir(case, tmp_path, ours=False)
        )
    except MelangeRefused:
        with pytest.raises(RecipeError):
            _ours(config_path, case, "x86_64", tmp_path, ours=False)
        return
    ours, _ = _ours(config_path, case, "x86_64", tmp_path, ours=False)
    problems = _compare(ours, _melange_side(theirs_raw))
    assert not problems, "\n\n".join(problems)
