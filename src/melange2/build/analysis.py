"""Between the pipelines and the APKs, what melange does to the package trees: lint them
(melange's default linters, each package's ``checks.disabled``), then find each package's
automatic dependencies and provides and merge them with its ``dependencies`` and
``options`` (:mod:`melange2.sca`).

The trees are the ``melange-out/<name>`` directories of one build: the main package
first, then each subpackage in config order, as melange lints and analyses them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from melange2.errors import LintFailed
from melange2.recipe import Config, PackageOptions, RecipeFieldError, Test
from melange2.sca import PackageDependencies, PackageTree, ScaOptions, ScaResult, analyze
from melange2.sca.lint import LintReport, LintTarget, lint_build, unknown_linters

__all__ = [
    "AnalysedPackage",
    "analyse_packages",
    "check_linter_names",
    "lint_packages",
    "package_trees",
]

Log = Callable[[str], None]


def check_linter_names(config: Config) -> None:
    """Refuse a ``checks.disabled`` naming a linter melange does not know (melange fails
    the build on it once the pipelines have run; here it fails before anything runs)."""
    owners = [(config.package.checks.disabled, config.package, "package")] + [
        (sp.checks.disabled, sp, f"subpackage {sp.name}") for sp in config.subpackages
    ]
    for disabled, node, what in owners:
        for i, name in enumerate(disabled):
            if unknown_linters([name]):
                raise RecipeFieldError(
                    f"{what}: checks.disabled names an unknown linter {name!r}",
                    location=node.where(f"checks.disabled[{i}]"),
                )


def _test_uses(test: Test | None) -> tuple[str, ...]:
    return tuple(step.uses for step in test.pipeline) if test is not None else ()


def package_trees(config: Config, out: Path) -> dict[str, PackageTree]:
    """One :class:`PackageTree` per package of the build, ``out/<name>`` (walked and read
    once, shared by the linters and the analyzers)."""
    return {name: PackageTree(out / name) for name in config.package_names}


def lint_packages(config: Config, trees: Mapping[str, PackageTree], log: Log) -> LintReport:
    """Lint every package of the build; warnings go to ``log``; :class:`LintFailed` when a
    required linter finds something (naming the linter, the package and the files)."""
    targets = [
        LintTarget(
            name=config.package.name,
            tree=trees[config.package.name],
            disabled=config.package.checks.disabled,
            test_uses=_test_uses(config.test),
        ),
        *(
            LintTarget(
                name=sp.name,
                tree=trees[sp.name],
                disabled=sp.checks.disabled,
                test_uses=_test_uses(sp.test),
            )
            for sp in config.subpackages
        ),
    ]
    report = lint_build(targets)
    current = ""
    for finding in report.findings:
        if finding.package != current:
            current = finding.package
            log(f"linting {current}:")
        for line in finding.log_lines():
            log(f"  {line}")
    if report.failed:
        # a file name need not be UTF-8; the message goes to terminals and the store
        raise LintFailed(report.error.encode("utf-8", "backslashreplace").decode())
    return report


@dataclass(frozen=True, kw_only=True, slots=True)
class AnalysedPackage:
    """One package's dependencies as ``.PKGINFO`` lists them, and what SCA found."""

    dependencies: PackageDependencies
    found: ScaResult


def _sca_options(options: PackageOptions) -> ScaOptions:
    return ScaOptions(
        no_provides=options.no_provides,
        no_depends=options.no_depends,
        no_commands=options.no_commands,
        no_versioned_shlib_deps=options.no_versioned_shlib_deps,
    )


def analyse_packages(
    config: Config, trees: Mapping[str, PackageTree], arch: str, log: Log
) -> dict[str, AnalysedPackage]:
    """Every package's automatic dependencies, merged with its config (melange's
    ``GenerateDependencies``); SCA's warnings and the merged lists go to ``log``."""
    siblings = list(trees.values())
    pkg = config.package
    owners = [(pkg.name, pkg.dependencies, pkg.options)] + [
        (sp.name, sp.dependencies, sp.options) for sp in config.subpackages
    ]
    result: dict[str, AnalysedPackage] = {}
    for name, declared, options in owners:
        found = analyze(
            trees[name],
            name=name,
            version=pkg.full_version,
            arch=arch,
            options=_sca_options(options),
            declared_runtime=declared.runtime,
            siblings=siblings,
        )
        merged = found.merged(runtime=declared.runtime, provides=declared.provides)
        for warning in found.warnings:
            log(f"{name}: warning: {warning}")
        if merged.depends:
            log(f"{name}: depends {' '.join(merged.depends)}")
        if merged.provides:
            log(f"{name}: provides {' '.join(merged.provides)}")
        result[name] = AnalysedPackage(dependencies=merged, found=found)
    return result
