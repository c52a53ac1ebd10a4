"""One default recipe: the Python API and the command line resolve the same input to the same recipe."""

import yaml

from headstart.cli import main
from headstart.config.defaults import as_recipe, default_recipe
from headstart.config.recipe import Recipe
from tests.conftest import tiny_recipe


def dry_run(capsys, *argv) -> dict:
    assert main(["train", *argv, "--dry-run"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_no_data_is_the_embedded_digits_job_both_ways(capsys):
    assert as_recipe(None).to_dict() == dry_run(capsys) == default_recipe().to_dict()
    assert as_recipe(None).data.path is None and as_recipe(None).run.name == "digits"


def test_a_data_folder_gets_the_default_stages_both_ways(colour_folder, capsys):
    from_api = as_recipe(str(colour_folder)).to_dict()
    assert from_api == dry_run(capsys, str(colour_folder))
    assert from_api == Recipe.from_dict({"data": {"path": str(colour_folder)}}).to_dict()
    assert [stage["name"] for stage in from_api["stages"]] == ["head", "finetune"]


def test_a_recipe_file_resolves_the_same_both_ways(colour_folder, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(colour_folder, tmp_path / "runs")))
    assert as_recipe(path).to_dict() == dry_run(capsys, "--recipe", str(path))
