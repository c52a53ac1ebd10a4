"""Layouts: split folders by name, class folders, CSV splits; the errors for mixed and ambiguous trees."""

from __future__ import annotations

import json
import logging

import pytest

from headstart.config.recipe import DataConfig
from headstart.core.errors import HeadstartError
from headstart.data.layouts import list_images
from tests.conftest import CLASS_COLOURS, write_images

TWO = {k: CLASS_COLOURS[k] for k in ("red", "blue")}


def sizes(split):
    return len(split.train), len(split.val), len(split.test)


@pytest.mark.parametrize(
    "names",
    [
        ("train", "valid", "test"),  # Roboflow, Kaggle, Ultralytics
        ("train", "validation", "test"),  # Hugging Face
        ("Train", "VAL", "Testing"),
        ("training", "dev", "eval"),
    ],
)
def test_three_split_folders_by_name(tmp_path, names):
    for name, count in zip(names, (10, 3, 4)):
        write_images(tmp_path / "d" / name, TWO, per_class=count)
    split = list_images(DataConfig(path=str(tmp_path / "d")))
    assert split.classes == ["blue", "red"]
    assert sizes(split) == (20, 6, 8)
    assert split.describe() == f"layout: {names[0]}/ {names[1]}/ {names[2]}/ \u2192 train 20, val 6, test 8"
    assert split.held_out == ("test", split.test)


def test_train_and_test_split_val_from_train(tmp_path):
    write_images(tmp_path / "d" / "Training", TWO, per_class=10)
    write_images(tmp_path / "d" / "Testing", TWO, per_class=5)
    cfg = DataConfig(path=str(tmp_path / "d"), val_fraction=0.2, split_seed=3)
    split = list_images(cfg)
    assert sizes(split) == (16, 4, 10)
    assert [label for _, label in split.val] == [0, 0, 1, 1]  # stratified
    assert split.val == list_images(cfg).val  # seeded
    assert not {p for p, _ in split.val} & {p for p, _ in split.train}
    assert "Training/ Testing/ (val 0.2 of Training/)" in split.describe()


def test_train_alone_and_train_val(tmp_path, split_folder):
    write_images(tmp_path / "d" / "train", TWO, per_class=10)
    assert sizes(list_images(DataConfig(path=str(tmp_path / "d")))) == (18, 2, 0)
    split = list_images(DataConfig(path=str(split_folder)))
    assert sizes(split) == (20, 8, 0)
    assert split.describe() == "layout: train/ val/ \u2192 train 20, val 8"


def test_class_folders_with_test_fraction(colour_folder):
    plain = list_images(DataConfig(path=str(colour_folder)))
    assert sizes(plain) == (33, 3, 0)
    split = list_images(DataConfig(path=str(colour_folder), test_fraction=0.25))
    assert split.val == plain.val  # adding a test split leaves val as it was
    assert sizes(split) == (24, 3, 9)
    assert len({p for p, _ in split.train + split.val + split.test}) == 36
    assert split.describe().startswith("layout: class folders, split here (val 0.1, test 0.25 per class")


@pytest.mark.parametrize(
    "folders, message",
    [
        (("train", "val", "cats"), "mixes split folders (train, val) with other folders (cats)"),
        (("val", "test"), "has split folder(s) test, val but no train split"),
        (("train", "valid", "val"), "has two val split folders (val, valid)"),
    ],
)
def test_mixed_and_ambiguous_top_levels(tmp_path, folders, message):
    for name in folders:
        write_images(tmp_path / "d" / name, TWO, per_class=2)
    with pytest.raises(
        HeadstartError,
        match="^" + str(tmp_path / "d").replace("\\", "\\\\") + " " + message.replace("(", r"\(").replace(")", r"\)"),
    ):
        list_images(DataConfig(path=str(tmp_path / "d")))


def test_split_named_class_folder_inside_a_split(tmp_path):
    write_images(tmp_path / "d" / "train", {"test": (1, 2, 3), "red": (200, 0, 0)}, per_class=2)
    write_images(tmp_path / "d" / "val", TWO, per_class=2)
    with pytest.raises(HeadstartError, match=r"train has a class folder named like a split \(test\)"):
        list_images(DataConfig(path=str(tmp_path / "d")))


def test_bad_splits(tmp_path, caplog):
    write_images(tmp_path / "d" / "train", TWO, per_class=4)
    (tmp_path / "d" / "val").mkdir()
    with pytest.raises(HeadstartError, match=r"split folder .*val holds no images"):
        list_images(DataConfig(path=str(tmp_path / "d")))
    write_images(tmp_path / "d" / "val", {"green": (0, 200, 0)}, per_class=2)
    with pytest.raises(
        HeadstartError, match=r"val has class 'green' that the train split lacks; train classes: blue, red"
    ):
        list_images(DataConfig(path=str(tmp_path / "d")))
    (tmp_path / "d" / "val" / "green").rename(tmp_path / "d" / "val" / "red")
    with caplog.at_level(logging.WARNING, logger="headstart"):
        split = list_images(DataConfig(path=str(tmp_path / "d")))
    assert sizes(split) == (8, 2, 0)
    assert "val lacks class(es) blue that train has: their val metrics are undefined" in caplog.text


def test_csv_split_column(colour_folder):
    csv = colour_folder / "list.csv"
    rows = ["label,path,split"] + [
        f"{c},{c}/{i:03d}.png,{s}" for c in TWO for i, s in enumerate(["train"] * 6 + ["valid"] * 2 + ["TEST"] * 3)
    ]
    csv.write_text("\n".join(rows) + "\n")
    split = list_images(DataConfig(path=str(csv)))
    assert split.classes == ["blue", "red"] and sizes(split) == (12, 4, 6)
    csv.write_text("path,label,split\nred/000.png,red,train\nred/001.png,red,holdout\n")
    with pytest.raises(HeadstartError, match=r"line 3: split 'holdout' is not one of train, val, test"):
        list_images(DataConfig(path=str(csv)))


def test_cli_train_with_a_test_split_then_compare_and_evaluate(tmp_path, capsys):
    import yaml

    from headstart.cli import main
    from tests.conftest import tiny_recipe

    for name, count in (("train", 8), ("valid", 3), ("test", 4)):
        write_images(tmp_path / "d" / name, TWO, per_class=count)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path / "d", tmp_path / "runs")))
    argv = ["train", "--recipe", str(recipe), "--epochs", "1", "--monitor", "val_balanced_acc", "--balance", "none"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "layout: train/ valid/ test/ \u2192 train 16, val 6, test 8" in out
    assert "test (8 images, " in out
    run = tmp_path / "runs" / "tiny"
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["run"]["monitor"] == "val_balanced_acc" and saved["data"]["balance"] == "none"
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 0
    capsys.readouterr()
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "test balanced acc" in table and "best.pt val macro-F1" in table
    assert main(["evaluate", str(run), str(tmp_path / "d"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["count"] == 8 and result["notes"][0].startswith("scored the run's held-out test split: 8 of the 30")


def test_data_given_as_dot_is_named_after_its_folder(colour_folder, tmp_path, monkeypatch):
    """'.' named runs '-<backbone>' and tune/cv folders '-tune' / '-cv'."""
    from headstart.config.defaults import as_recipe
    from headstart.experiments.sweep import experiment_folder

    monkeypatch.chdir(colour_folder / "red")
    assert list_images(DataConfig(path="..")).name == "colours"
    monkeypatch.chdir(colour_folder)
    assert list_images(DataConfig(path=".")).name == "colours"
    recipe = as_recipe({"data": {"path": "."}, "run": {"out_dir": str(tmp_path)}})
    assert experiment_folder(recipe, None, None, "cv") == tmp_path / "colours-cv"
    assert experiment_folder(recipe, None, "mine", "tune") == tmp_path / "mine-tune"


def test_a_file_given_as_data_is_not_called_a_missing_folder(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("stages: []\n")
    with pytest.raises(HeadstartError, match=r"recipe.yaml is a file, not image data.*--recipe"):
        list_images(DataConfig(path=str(recipe)))
