"""The one default recipe, for the Python API and the command line alike.

    default_recipe()        no data: the embedded digits job (builtin/digits.yaml)
    default_recipe(DATA)    a folder or CSV: Recipe() with data.path = DATA, whose stages are
                            recipe.default_stages() (why they are what they are is written there)
    as_recipe(x)            what headstart.training.train / lr_find / sweep accept: a Recipe, a dict, a YAML
                            path, a data folder or CSV, or None

`headstart train [DATA]` and `headstart.train(DATA or None)` resolve to the same recipe (a test pins it).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from headstart.config.hf_path import HF_PREFIX
from headstart.config.recipe import Recipe
from headstart.core.yamlfile import parse


def builtin_recipe(name: str) -> Recipe:
    text = resources.files("headstart").joinpath(f"builtin/{name}.yaml").read_text()
    return Recipe.from_dict(parse(text), source=f"built-in recipe '{name}'")


def is_data(target: str | Path) -> bool:
    """A folder of images, a CSV listing them or hf://datasets/NAME (anything else is read as a recipe file)."""
    return str(target).startswith(HF_PREFIX) or Path(target).is_dir() or Path(target).suffix.lower() == ".csv"


def default_recipe(data: str | Path | None = None) -> Recipe:
    if data is None:
        return builtin_recipe("digits")
    return Recipe.from_dict({"data": {"path": str(data)}})


def as_recipe(recipe: Recipe | str | Path | dict | None) -> Recipe:
    if recipe is None:
        return default_recipe()
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    if is_data(recipe):
        return default_recipe(recipe)
    return Recipe.from_yaml(recipe)
