"""melange YAML -> typed model, with melange's substitutions and ``if:`` conditions.

No network I/O: the loaders read only the file they are given.

* :func:`load_config` parses and substitutes a build configuration for one architecture.
* :func:`load_pipeline` parses a reusable pipeline file (``uses:`` targets), unsubstituted.
* :func:`compile_build` and :func:`compile_tests` expand ``uses:`` (melange's own
  pipelines, installed from the pinned module, and melange2's additions) into shell steps.
* :func:`substitution_map`, :func:`substitute`, :func:`with_inputs` and
  :func:`substitute_steps` substitute ``${{...}}`` as melange does.
* :func:`evaluate_condition` evaluates an ``if:`` expression.

Every error is a :class:`~melange2.errors.RecipeError`.
"""

from __future__ import annotations

from melange2.recipe.arch import Arch, parse_arch
from melange2.recipe.compile import (
    BUILTIN_PIPELINE_DIR,
    DEFAULT_ENVIRONMENT,
    DEFAULT_PATH,
    MELANGE_PIPELINE_DIR,
    BuildPlan,
    ExecStep,
    PipelineResolver,
    TestPlan,
    builtin_pipelines,
    compile_build,
    compile_tests,
    environment_packages,
    pipeline_origin,
    subpackage_builds,
)
from melange2.recipe.cond import (
    Condition,
    condition_variables,
    evaluate_condition,
    parse_condition,
    quote,
)
from melange2.recipe.errors import ConditionError, RecipeFieldError, UndefinedVariable
from melange2.recipe.model import (
    Checks,
    Config,
    Contents,
    Copyright,
    Dependencies,
    Environment,
    Location,
    Package,
    PackageOptions,
    PipelineDef,
    PipelineInput,
    RangeData,
    Resources,
    Scriptlets,
    Step,
    Subpackage,
    Test,
    VarTransform,
)
from melange2.recipe.parse import Source, load_config, load_pipeline
from melange2.recipe.subst import (
    BUILD_DIR,
    OUT_DIR,
    base_substitutions,
    find_references,
    go_regex_replace_all,
    resolve_vars,
    subpackage_substitutions,
    substitute,
    substitute_condition,
    substitute_step,
    substitute_steps,
    substitution_map,
    with_inputs,
)

__all__ = [
    "BUILD_DIR",
    "BUILTIN_PIPELINE_DIR",
    "DEFAULT_ENVIRONMENT",
    "DEFAULT_PATH",
    "MELANGE_PIPELINE_DIR",
    "OUT_DIR",
    "Arch",
    "BuildPlan",
    "Checks",
    "Condition",
    "ConditionError",
    "Config",
    "Contents",
    "Copyright",
    "Dependencies",
    "Environment",
    "ExecStep",
    "Location",
    "Package",
    "PackageOptions",
    "PipelineDef",
    "PipelineInput",
    "PipelineResolver",
    "RangeData",
    "RecipeFieldError",
    "Resources",
    "Scriptlets",
    "Source",
    "Step",
    "Subpackage",
    "Test",
    "TestPlan",
    "UndefinedVariable",
    "VarTransform",
    "base_substitutions",
    "builtin_pipelines",
    "compile_build",
    "compile_tests",
    "condition_variables",
    "environment_packages",
    "evaluate_condition",
    "find_references",
    "go_regex_replace_all",
    "load_config",
    "load_pipeline",
    "parse_arch",
    "parse_condition",
    "pipeline_origin",
    "quote",
    "resolve_vars",
    "subpackage_builds",
    "subpackage_substitutions",
    "substitute",
    "substitute_condition",
    "substitute_step",
    "substitute_steps",
    "substitution_map",
    "with_inputs",
]
