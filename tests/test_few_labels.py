"""Few labels, many images: pseudo-labels from unlabelled images (train --unlabeled) and what to label next (suggest)."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import headstart
from headstart.cli import main
from tests.conftest import CLASS_COLOURS, tiny_recipe, write_images
from tests.test_cli import one_line_error


def flat(folder: Path) -> Path:
    """Class folders' images moved into one folder (labels hidden), named by class so a test can check them."""
    out = folder.parent / f"{folder.name}-flat"
    out.mkdir()
    for image in sorted(folder.glob("*/*.png")):
        shutil.move(image, out / f"{image.parent.name}_{image.name}")
    return out


@pytest.fixture
def few(tmp_path: Path) -> tuple[Path, Path]:
    """(DATA with 3 train + 4 val images per colour class, a folder of 15 unlabelled images per class)."""
    write_images(tmp_path / "data" / "train", CLASS_COLOURS, per_class=3, seed=1)
    write_images(tmp_path / "data" / "val", CLASS_COLOURS, per_class=4, seed=2)
    unlabelled = flat(write_images(tmp_path / "pool", CLASS_COLOURS, per_class=15, seed=3))
    return tmp_path / "data", unlabelled


def test_pseudo_labels_join_train_only_are_right_and_reported(few, tmp_path, caplog):
    data, unlabelled = few
    shutil.copyfile(data / "val/red/000.png", unlabelled / "copy_of_val.png")  # must not be trained on
    recipe = tiny_recipe(data, tmp_path / "runs", data={"unlabeled": str(unlabelled)})
    with caplog.at_level(logging.WARNING, logger="headstart"):
        result = headstart.train(recipe, quiet=True)
    assert "copies of val/test images (val 1, test 0): dropped" in caplog.text
    with (result.run_dir / "pseudo_labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and not any(row["path"].endswith("copy_of_val.png") for row in rows)
    right = [Path(row["path"]).name.split("_")[0] == row["label"] for row in rows]
    assert np.mean(right) >= 0.9 and len(rows) >= 30  # colour classes: the teacher labels nearly all, correctly
    summary = (result.run_dir / "summary.txt").read_text()
    assert f"{9 + len(rows)} train / 12 val / 0 test images" in summary
    assert "pseudo-labels: 46 unlabelled images (1 dropped: 0 labelled already, 1 copies of labelled images)" in summary
    assert "used (per class: blue" in summary


def test_unlabelled_folder_that_is_the_labelled_one_is_a_one_line_error(few, tmp_path, capsys):
    data, _ = few
    err = one_line_error(capsys, ["train", str(data), "--unlabeled", str(data / "train"), "--out", str(tmp_path)])
    assert "already a labelled image" in err
    err = one_line_error(capsys, ["train", str(data), "--unlabeled", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert "unlabelled images not found" in err


def test_cold_start_covers_an_imbalanced_set_more_evenly_than_random(tmp_path):
    counts = {"red": 60, "green": 6, "blue": 3}
    for name, count in counts.items():
        write_images(tmp_path / "pool", {name: CLASS_COLOURS[name]}, per_class=count, size=32, seed=len(name))
    pool = flat(tmp_path / "pool")
    result = headstart.suggest(pool, 6, out=tmp_path / "out", quiet=True)
    picked = [pick.path.name.split("_")[0] for pick in result.picks]
    assert len(picked) == 6 and set(picked) == set(counts)

    def evenness(names: list[str]) -> float:  # entropy of the picked classes' shares
        shares = np.array([names.count(c) for c in counts]) / len(names)
        return float(-(shares[shares > 0] * np.log(shares[shares > 0])).sum())

    names = [n for n, count in counts.items() for _ in range(count)]
    draws = np.random.default_rng(0)
    random_evenness = np.mean([evenness(list(draws.choice(names, 6, replace=False))) for _ in range(500)])
    assert evenness(picked) > random_evenness + 0.3
    with result.csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["label"] for r in rows] == [""] * 6 and rows[0]["why"].startswith("typical of a group of")
    assert result.html.read_text().count("<img") == 6


def test_suggest_after_a_run_asks_where_the_model_is_unsure_and_the_sheet_trains(tmp_path, capsys):
    two = {name: CLASS_COLOURS[name] for name in ("red", "blue")}
    data = write_images(tmp_path / "data", two, per_class=12, seed=1)
    run = headstart.train(tiny_recipe(data, tmp_path / "runs"), quiet=True).run_dir
    write_images(tmp_path / "pool", {**two, "purple": (120, 50, 130)}, per_class=8, seed=5)
    pool = flat(tmp_path / "pool")
    assert main(["suggest", str(pool), "--budget", "4", "--run", str(run), "--out", str(tmp_path / "ask")]) == 0
    with (tmp_path / "ask/to_label.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["path", "label", "guess", "confidence", "why"]
    # Between the classes, the purple images are the least sure; k-means spreads the rest of the batch.
    assert [Path(r["path"]).name.split("_")[0] for r in rows[:2]] == ["purple", "purple"]
    assert len({Path(r["path"]).name.split("_")[0] for r in rows}) >= 2
    assert all(r["guess"] in two and r["why"].startswith("unsure:") for r in rows)
    margins = [float(r["why"].rsplit("margin ", 1)[1].rstrip(")")) for r in rows]
    assert margins == sorted(margins)
    # The person labels two of them (the rest stay empty) and trains with them.
    for row, label in zip(rows, ["red", "blue"], strict=False):
        row["label"] = label
    sheet = tmp_path / "ask/to_label.csv"
    with sheet.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    recipe = tiny_recipe(data, tmp_path / "runs2", data={"add_labeled": [str(sheet)]})
    summary = (headstart.train(recipe, quiet=True).run_dir / "summary.txt").read_text()
    assert "+ 2 added train labels" in summary
    capsys.readouterr()
    rows[0]["label"] = "green"  # not a class of this data: the sheet came from other data
    with sheet.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    err = one_line_error(capsys, ["train", str(data), "--add-labeled", str(sheet), "--out", str(tmp_path / "r3")])
    assert "label 'green' is not a class of data (classes: blue, red)" in err


def test_suggest_budget_larger_than_the_folder_is_a_one_line_error(tmp_path, capsys):
    pool = tmp_path / "pool"
    pool.mkdir()
    for index in range(3):
        Image.new("RGB", (16, 16), (index * 80, 0, 0)).save(pool / f"{index}.png")
    err = one_line_error(capsys, ["suggest", str(pool), "--budget", "5", "--out", str(tmp_path / "o")])
    assert "budget 5 is larger than the 3 unlabelled images" in err
    assert not (tmp_path / "o").exists()


def test_pseudo_labelling_leaves_the_runs_random_draws_as_they_were(few, tmp_path):
    """A run whose pseudo-labels are turned down must be the labelled-only run: the embedder draws nothing of its own."""
    import torch

    from headstart.config.recipe import Recipe
    from headstart.core.hardware import pick_hardware
    from headstart.data.layouts import list_images
    from headstart.model.build import resolve_preprocessing
    from headstart.training.pseudo_labels import pseudo_label

    data, unlabelled = few
    recipe = Recipe.from_dict(tiny_recipe(data, tmp_path / "runs", data={"unlabeled": str(unlabelled)}))
    split = list_images(recipe.data)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    found = pseudo_label(split, recipe, resolve_preprocessing(recipe.data, recipe.model), pick_hardware("cpu", "fp32"))
    assert found.samples and torch.equal(torch.get_rng_state(), before)


def test_unreadable_val_images_with_unlabelled_ones_are_a_one_line_error(few, tmp_path, capsys):
    """The pseudo-labels are judged on val before the images are decoded: no readable val is the run's own error."""
    data, unlabelled = few
    for image in (data / "val").glob("*/*.png"):
        image.write_bytes(b"not an image")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(data, tmp_path / "runs")))
    err = one_line_error(capsys, ["train", "--recipe", str(recipe), "--unlabeled", str(unlabelled)])
    assert "no readable validation images" in err


def test_suggest_says_why_it_drops_copies_of_val_images_without_pseudo_labels(few, tmp_path, caplog):
    from headstart.labeling.suggest import not_labelled_yet

    data, unlabelled = few
    shutil.copyfile(data / "val/red/000.png", unlabelled / "copy_of_val.png")
    paths = sorted(unlabelled.iterdir())
    with caplog.at_level(logging.WARNING, logger="headstart"):
        kept = not_labelled_yet(paths, {"data": {"path": str(data)}}, str(unlabelled))
    assert len(kept) == len(paths) - 1 and unlabelled / "copy_of_val.png" not in kept
    assert "copies of val/test images (val 1, test 0): dropped, as images the data set labels already" in caplog.text
    assert "pseudo-label" not in caplog.text  # suggest makes none


def test_the_sheets_next_command_keeps_the_runs_data_and_earlier_sheets(tmp_path):
    from headstart.labeling.sheet import SuggestResult, next_command

    result = SuggestResult(tmp_path / "round3", [], 0)
    data = {"path": "round1/to_label.csv", "add_labeled": ["round2/to_label.csv"]}
    assert next_command(result, "pool dir", "runs/r2", data) == (
        f"headstart train round1/to_label.csv --add-labeled round2/to_label.csv --add-labeled {result.csv} "
        "--unlabeled 'pool dir'"
    )
    assert next_command(result, "pool", "runs/digits", {"path": None}).startswith("headstart train DATA --add-labeled")
    assert next_command(result, "pool", None) == f"headstart train {result.csv}"


def test_suggest_names_its_default_folder_after_the_images(tmp_path, monkeypatch):
    from headstart.labeling.suggest import default_out

    monkeypatch.chdir(tmp_path)
    (tmp_path / "phone.photos").mkdir()
    monkeypatch.chdir(tmp_path / "phone.photos")
    assert default_out(".") == Path("runs/phone.photos-suggest")  # was runs/-suggest
    assert default_out("../phone.photos/") == Path("runs/phone.photos-suggest")
    assert default_out("pool.csv") == Path("runs/pool-suggest")
