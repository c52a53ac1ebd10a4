"""Hostile input, continued: YAML bombs, one-image classes, special files in a CSV (issue 26, items 4-6).

Each probe asserts a one-line error (exit 2) or correct handling, under a timeout (tests.probes.cli).
"""

from __future__ import annotations

import os

import pytest
import yaml

import headstart
from tests.conftest import CLASS_COLOURS, tiny_recipe, write_images
from tests.probes import cli, run_cli

# ----------------------------------------------------------------------------- 4: YAML aliases and size

# Nine levels of nine aliases: 530 bytes that expand to 9**9 strings wherever the structure is walked.
LAUGHS = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
    f"{b}: &{b} [*{a},*{a},*{a},*{a},*{a},*{a},*{a},*{a},*{a}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)


def recipe_text(colour_folder, tmp_path, backbone_args: str) -> str:
    recipe = tiny_recipe(colour_folder, tmp_path / "runs")
    recipe["model"]["backbone_args"] = "ARGS"
    return yaml.safe_dump(recipe).replace("ARGS", backbone_args)


@pytest.mark.parametrize(
    "backbone_args",
    [
        "{widths: &w [8, 16], again: *w}",  # one harmless alias: still refused, a recipe never needs one
        "\n" + "".join("    " + line + "\n" for line in LAUGHS.splitlines()),
    ],
    ids=["one alias", "billion laughs"],
)
def test_yaml_aliases_in_a_recipe_are_refused(colour_folder, tmp_path, capsys, backbone_args):
    (tmp_path / "r.yaml").write_text(recipe_text(colour_folder, tmp_path, backbone_args))
    code, _, err = cli(["train", "--recipe", tmp_path / "r.yaml", "--dry-run"], capsys, seconds=30)
    assert code == 2 and "r.yaml" in err and "anchors and aliases" in err


def test_yaml_aliases_in_a_sweep_vary_are_refused(colour_folder, tmp_path, capsys):
    recipe = tiny_recipe(colour_folder, tmp_path / "runs")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    text = "recipe: r.yaml\nvary:\n  lr: &l [0.01, 0.02]\n  head.lr: *l\n"
    (tmp_path / "s.yaml").write_text(text)
    code, _, err = cli(["sweep", tmp_path / "s.yaml", "--quiet"], capsys, seconds=30)
    assert code == 2 and "s.yaml" in err and "anchors and aliases" in err
    assert not (tmp_path / "runs").exists()


def test_an_oversized_recipe_is_refused_before_it_is_parsed(tmp_path, capsys):
    recipe = tmp_path / "big.yaml"
    recipe.write_text("data:\n  path: x\n" + "# padding\n" * 200_000)  # 2 MB of comments: parsed, ~4 s
    code, _, err = cli(["train", "--recipe", recipe, "--dry-run"], capsys, seconds=5)
    assert code == 2 and "big.yaml" in err and "too large" in err


# ----------------------------------------------------------------------------- 5: a class of one image


def one_image_class(tmp_path, csv: bool):
    """red and blue with 6 images each, green with one: as class folders, or as a CSV listing them."""
    data = write_images(tmp_path / "data", {k: CLASS_COLOURS[k] for k in ("red", "blue")}, per_class=6)
    write_images(data, {"green": CLASS_COLOURS["green"]}, per_class=1)
    if not csv:
        return data
    rows = [f"{p.relative_to(data)},{p.parent.name}" for p in sorted(data.rglob("*.png"))]
    (data / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return data / "list.csv"


SMALL = ["--backbone", "headstart_cnn", "--weights", "none", "--image-size", "16"]
ONE_IMAGE_COMMANDS = {
    "train": lambda data, out: ["train", data, *SMALL, "--epochs", "1", "--out", out],
    "inspect": lambda data, out: ["inspect", data, *SMALL, "--out", out],
    "lr-find": lambda data, out: ["lr-find", data, *SMALL, "--steps", "5", "--out", out],
    "probe": lambda data, out: ["probe", data, "--backbones", "headstart_cnn", "--out", out],
}


@pytest.mark.parametrize("csv", [False, True], ids=["folders", "csv"])
@pytest.mark.parametrize("command", ONE_IMAGE_COMMANDS)
def test_a_class_of_one_image_runs_with_a_warning(tmp_path, capsys, command, csv):
    # Before the fix: KeyError 'val' in merge_splits, from every command that lists the data.
    data = one_image_class(tmp_path, csv)
    code, out, err = cli(ONE_IMAGE_COMMANDS[command](data, tmp_path / "out"), capsys)
    assert code == 0, err
    assert "lacks class(es) green" in out and "too few images: 2 per class" in out  # the CLI logs to stdout


def test_when_no_class_can_give_val_an_image_it_is_one_line_error(tmp_path, capsys):
    data = write_images(tmp_path / "data", {k: CLASS_COLOURS[k] for k in ("red", "blue")}, per_class=1)
    code, _, err = cli(["train", data, *SMALL, "--out", tmp_path / "out"], capsys)
    assert code == 2 and "val split" in err and "2 images" in err and "red 1" in err


def test_a_val_fraction_near_one_keeps_an_image_of_every_class_in_train(tmp_path):
    from headstart.data.splits import stratified_split

    by_class = {"a": [tmp_path / "1", tmp_path / "2"], "b": [tmp_path / f"{i}" for i in range(3, 9)]}
    train, val = stratified_split(by_class, 0.9, 0)
    assert {label for _, label in train} == {0, 1} and len(train) == 2 and len(val) == 6


# ----------------------------------------------------------------------------- 6: inspect on special and unreadable files


@pytest.mark.slow
def test_inspect_skips_a_fifo_listed_in_a_csv_as_train_does(tmp_path):
    data = write_images(tmp_path / "data", {k: CLASS_COLOURS[k] for k in ("red", "blue")}, per_class=6)
    os.mkfifo(data / "red" / "pipe.png")
    rows = [f"{p.relative_to(data)},{p.parent.name}" for p in sorted(data.rglob("*.png"))]
    (data / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    done = run_cli(["inspect", data / "list.csv", *SMALL, "--out", tmp_path / "out"])  # a hang fails by timeout
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "skipped 1 unreadable or non-image file(s): pipe.png (not a regular file)" in done.stdout
    done = run_cli(["train", data / "list.csv", *SMALL, "--epochs", "1", "--out", tmp_path / "runs"])
    assert "skipped 1 unreadable or non-image file(s): pipe.png (not a regular file)" in done.stdout


def test_inspect_imbalance_counts_readable_images_only(tmp_path):
    # Before the fix, 20,000 zero-byte files in one class gave "imbalance 834:1".
    data = write_images(tmp_path / "data", {k: CLASS_COLOURS[k] for k in ("red", "blue")}, per_class=6)
    for index in range(30):
        (data / "blue" / f"empty{index}.png").write_bytes(b"")
    result = headstart.inspect(data, tmp_path / "out", backbone="headstart_cnn", weights="none", image_size=16)
    assert result.inventory["unreadable"] == 30 and result.inventory["imbalance"] == 1.0
