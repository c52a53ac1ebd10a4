"""The typed recipe: defaults, validation errors that name the field, YAML round trip, CLI stage flags."""

from pathlib import Path

import pytest

from headstart.cli.flags import set_stage_field
from headstart.config.recipe import Recipe
from headstart.core.errors import HeadstartError
from headstart.experiments.sweep import is_sweep_file

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


def test_default_recipe_is_head_then_finetune():
    recipe = Recipe()
    assert [s.name for s in recipe.stages] == ["head", "finetune"]
    assert recipe.stages[0].freeze == "backbone" and recipe.stages[1].freeze == "top:1"
    # Both stages see the plain images (so both run on cached features) and end by early stopping.
    assert all(s.augment == "none" and s.epochs == "auto" and s.early_stop for s in recipe.stages)
    assert recipe.model.backbone == "tf_efficientnet_lite0"


def test_unknown_field_lists_valid_fields():
    with pytest.raises(
        HeadstartError,
        match=r"field 'model': unknown field 'bakbone'; did you mean: backbone\?; valid fields: backbone",
    ):
        Recipe.from_dict({"model": {"bakbone": "resnet18"}})


def test_bad_value_names_field():
    with pytest.raises(HeadstartError, match=r"stages.0.bn"):
        Recipe.from_dict({"stages": [{"name": "s", "bn": "sometimes"}]})
    with pytest.raises(HeadstartError, match="exactly one of 'factor' or 'size'"):
        Recipe.from_dict({"model": {"adapters": [{"kind": "resize"}]}})


def test_yaml_round_trip(tmp_path):
    recipe = Recipe.from_dict(
        {"model": {"adapters": [{"kind": "noise", "sigma": 0.05}]}, "stages": [{"name": "x", "freeze": "12"}]}
    )
    assert recipe.stages[0].freeze == 12
    path = tmp_path / "r.yaml"
    path.write_text(recipe.to_yaml())
    assert Recipe.from_yaml(path) == recipe


def test_bad_yaml_is_one_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data: [unclosed")
    with pytest.raises(HeadstartError, match="not valid YAML"):
        Recipe.from_yaml(path)


def test_stage_flags_all_or_by_name():
    recipe = set_stage_field(Recipe(), "epochs", "7")
    assert [s.epochs for s in recipe.stages] == [7, 7]
    recipe = set_stage_field(Recipe(), "lr", "head=0.01,finetune=0.0001")
    assert [s.lr for s in recipe.stages] == [0.01, 0.0001]
    with pytest.raises(HeadstartError, match="no stage named 'tail'; stages: head, finetune"):
        set_stage_field(Recipe(), "epochs", "tail=3")


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_article_recipes_are_valid(path):
    assert path.read_text().startswith("# Article")  # each says what the article measured
    if not is_sweep_file(path):
        assert Recipe.from_yaml(path).stages
