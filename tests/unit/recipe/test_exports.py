from __future__ import annotations

import melange2.recipe as recipe


def test_public_surface_is_explicit() -> None:
    exported = set(recipe.__all__)
    public = {name for name in vars(recipe) if not name.startswith("_")}
    modules = {
        "arch",
        "compile",
        "cond",
        "errors",
        "expr",
        "model",
        "parse",
        "subst",
        "annotations",
    }
    assert public - modules == exported
    for name in recipe.__all__:
        assert getattr(recipe, name) is not None


def test_errors_are_recipe_errors() -> None:
    from melange2.errors import RecipeError

    assert issubclass(recipe.RecipeFieldError, RecipeError)
    assert issubclass(recipe.UndefinedVariable, recipe.RecipeFieldError)
    assert issubclass(recipe.ConditionError, recipe.RecipeFieldError)
