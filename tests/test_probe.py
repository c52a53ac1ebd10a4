"""headstart probe: one cached head per backbone, one table with accuracy, time and inference speed."""

import pytest

import headstart
from headstart.cli import main
from headstart.config.recipe import Recipe
from tests.conftest import tiny_recipe


def probe_recipe(folder, out):
    values = tiny_recipe(folder, out)
    values["model"]["backbone_args"] = {}  # each candidate its own defaults
    return Recipe.from_dict(values)


@pytest.mark.slow
def test_probe_tables_every_backbone_with_accuracy_time_and_speed(colour_folder, tmp_path):
    backbones = ["headstart_cnn", "tf_efficientnet_lite0"]
    found = headstart.probe(colour_folder, backbones, recipe=probe_recipe(colour_folder, tmp_path), quiet=True)
    assert [row["backbone"] for row in found.rows] == backbones
    for row in found.rows:
        assert row["inference img/s"] > 0 and row["params"] > 0 and min(row["train s"]) > 0
        assert min(row["val acc"]) > 0.6  # three colours: chance is a third
    assert [row["input px"] for row in found.rows] == [32, 224]  # each backbone's own size
    for name in ("probe.md", "probe.csv", "comparison.md"):
        assert (found.folder / name).is_file()
    assert "tf_efficientnet_lite0" in (found.folder / "probe.md").read_text()


def test_probe_without_candidates_or_with_a_bad_one_is_a_one_line_error(colour_folder, tmp_path, capsys):
    assert main(["probe", str(colour_folder), "--backbones", "no_such_net", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headstart: error:") and len(err.strip().splitlines()) == 1
