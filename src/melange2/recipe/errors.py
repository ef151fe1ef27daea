"""Finer recipe errors, all :class:`~melange2.errors.RecipeError`.

::

    RecipeError                     (melange2.errors)
    └── RecipeFieldError            ``<file>:<line>: <field.path>: <problem>``
        ├── UndefinedVariable       ``${{name}}`` has no value in this context
        └── ConditionError          an ``if:`` expression does not parse

Catch :class:`~melange2.errors.RecipeError` unless you need the location.
"""

from __future__ import annotations

from melange2.errors import RecipeError
from melange2.recipe.model import Location

__all__ = ["ConditionError", "RecipeFieldError", "UndefinedVariable"]


class RecipeFieldError(RecipeError):
    """A value in the melange config is invalid."""

    code = "recipe_field_error"

    def __init__(self, problem: str, *, location: Location | None = None) -> None:
        #: Where the offending value is (``None`` when it did not come from a file).
        self.location = location
        #: What is wrong, without the location prefix.
        self.problem = problem
        super().__init__(format_problem(problem, location))


class UndefinedVariable(RecipeFieldError):
    """A substitution names a variable that is not defined."""

    code = "recipe_undefined_variable"

    def __init__(self, variable: str, *, location: Location | None = None) -> None:
        #: The variable name, without ``${{ }}`` (e.g. ``vars.foo``).
        self.variable = variable
        super().__init__(f"undefined variable ${{{{{variable}}}}}", location=location)


class ConditionError(RecipeFieldError):
    """An ``if:`` condition is not valid."""

    code = "recipe_condition_error"


def format_problem(problem: str, location: Location | None) -> str:
    """``<file>:<line>: <field.path>: <problem>``, dropping the parts that are unknown."""
    if location is None:
        return problem
    prefix = f"{location.file}:{location.line}" if location.line else location.file
    if location.path:
        return f"{prefix}: {location.path}: {problem}"
    return f"{prefix}: {problem}"
