"""headstart probe: one cached head per backbone, one table with accuracy, time and inference speed."""

import pytest

import headstart
from headstart.cli import main
from headstart.config.recipe import Recipe
from headstart.experiments import probe as probe_module
from headstart.experiments.probe import default_name
from headstart.model.weights import unavailable_backbones
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


def test_the_default_probe_folder_depends_on_the_candidates():
    assert default_name("photos/", ["a", "b"]) != default_name("photos/", ["a", "c"])
    assert default_name("photos/", ["a", "b"]) == default_name("photos", ["a", "b"])
    long = [f"some_long_backbone_name_{i}" for i in range(6)]
    assert len(default_name("photos", long)) < 80 and default_name("photos", long) != default_name("photos", long[:5])


def test_an_uncached_hub_backbone_offline_is_skipped_at_once_with_its_reason(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    calls = []
    monkeypatch.setattr("huggingface_hub.get_hf_file_metadata", lambda *a, **k: calls.append(a))
    reasons = unavailable_backbones(["resnet18", "headstart_cnn", "no_such_net"])
    assert set(reasons) == {"resnet18", "no_such_net"} and not calls  # offline: the Hub is never asked
    assert "offline" in reasons["resnet18"] and "no timm model" in reasons["no_such_net"]


def test_probe_names_skipped_backbones_takes_a_name_and_prints_its_table_once(
    colour_folder, tmp_path, monkeypatch, capsys
):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(probe_module, "default_recipe", lambda data: probe_recipe(colour_folder, tmp_path))
    args = [
        "probe",
        str(colour_folder),
        "--backbones",
        "headstart_cnn,resnet18",
        "--out",
        str(tmp_path),
        "--name",
        "mine",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("| backbone |") == 1  # the table, once
    assert "resnet18" in out and "offline" in out  # what was skipped, and why
    md = (tmp_path / "mine" / "probe.md").read_text()
    assert "Skipped" in md and "resnet18" in md
    found = headstart.probe(
        colour_folder, ["headstart_cnn"], recipe=probe_recipe(colour_folder, tmp_path), out=tmp_path
    )
    assert found.folder.name == "probe-colours-headstart_cnn" and found.skipped == {}
