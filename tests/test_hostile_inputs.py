"""Hostile input, continued: YAML bombs, one-image classes, special files in a CSV (issue 26, items 4-6).

Each probe asserts a one-line error (exit 2) or correct handling, under a timeout (tests.probes.cli).
"""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import tiny_recipe
from tests.probes import cli

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
