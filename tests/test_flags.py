"""Command-line flags come from the recipe's schema: every field has one, and a new field gets one by itself."""

import argparse

import pytest
import yaml
from pydantic import Field

from headstart.cli import build_parser, flags, main
from headstart.config.recipe import DataConfig, HeadConfig, ModelConfig, RunConfig, Stage


def train_options() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {option for action in sub.choices["train"]._actions for option in action.option_strings}


def test_every_recipe_field_has_a_flag():
    options = train_options()
    for flag in flags.section_flags() + flags.stage_flags():
        assert f"--{flag.flag}" in options or f"--no-{flag.flag}" in options, flag
    covered = {(f.section, f.path[0]) for f in flags.section_flags()} | flags.SKIPPED
    for section, model in {
        "data": DataConfig,
        "model": ModelConfig,
        "model.head": HeadConfig,
        "run": RunConfig,
    }.items():
        for name in model.model_fields:
            assert (section, name) in covered or name == "log" and "--log" in options, (section, name)
    assert {f.path[0] for f in flags.stage_flags()} == set(Stage.model_fields) - {"name"}


def test_a_new_field_becomes_a_flag_without_an_edit(monkeypatch):
    class Wider(DataConfig):
        shear_degrees: float = Field(0.0, ge=0)
        mode: str = "plain"

    monkeypatch.setitem(flags.SECTIONS, "data", Wider)
    assert {"--shear-degrees", "--mode"} <= train_options()


def test_new_fields_reach_the_recipe(colour_folder, capsys):
    argv = [
        "train",
        str(colour_folder),
        "--early-stop-patience",
        "head=7",
        "--stage-augment",
        "finetune=light",
        "--ema-decay",
        "0.99",
        "--accumulate",
        "4",
        "--deterministic",
        "--channels-last",
        "false",
        "--augment",
        "trivialaugment",
        "--dry-run",
    ]
    assert main(argv) == 0
    recipe = yaml.safe_load(capsys.readouterr().out)
    head, finetune = recipe["stages"]
    assert head["early_stop"]["patience"] == 7 and finetune["early_stop"]["patience"] == 2
    assert finetune["augment"] == "light" and head["augment"] == "none"
    assert recipe["data"]["augment"] == "trivialaugment"
    expected = {"ema_decay": 0.99, "accumulate": 4, "deterministic": True, "channels_last": False}
    assert {key: recipe["run"][key] for key in expected} == expected


@pytest.mark.parametrize("argv", [["--ema-decay", "1.5"], ["--early-stop-patience", "0"], ["--epochs", "never"]])
def test_bad_values_for_new_flags_are_one_line_errors(colour_folder, capsys, argv):
    assert main(["train", str(colour_folder), *argv, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headstart: error:") and len(err.strip().splitlines()) == 1
