"""Sweeps and comparisons: keys reach the right recipe fields, every combination runs, an interrupted sweep continues."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

import headstart
from headstart.cli import main
from headstart.config.recipe import Recipe
from headstart.core.errors import HeadstartError
from headstart.experiments.compare import compare
from headstart.experiments.sweep import expand, parse_vary, set_field
from tests.conftest import tiny_recipe


def test_keys_reach_stage_section_and_nested_fields(colour_folder):
    values = Recipe.from_dict(tiny_recipe(colour_folder, "runs")).to_dict()
    set_field(values, "bn", "train")
    set_field(values, "all.lr", 0.5)
    set_field(values, "model.backbone_args.batch_norm", False)
    set_field(values, "augment", "light")
    recipe = Recipe.from_dict(values)
    assert [s.bn for s in recipe.stages] == ["train", "train"]
    assert [s.lr for s in recipe.stages] == [0.05, 0.5]
    assert recipe.model.backbone_args["batch_norm"] is False and recipe.data.augment == "light"
    with pytest.raises(HeadstartError, match="did you mean: head"):
        set_field(values, "haed.lr", 1)
    with pytest.raises(HeadstartError, match="stages have no field 'lrr'"):
        set_field(values, "all.lrr", 1)


def test_vary_values_are_yaml_and_combinations_are_crossed():
    assert parse_vary("lr=1e-3,0.01") == ("lr", [0.001, 0.01])
    assert parse_vary("model.backbone_args.widths=[8,16],[16,32]")[1] == [[8, 16], [16, 32]]
    variants = expand({"bn": ["frozen", "train"], "lr": [0.1, 0.01]})
    assert [v.name for v in variants] == [
        "bn-frozen_lr-0.1",
        "bn-frozen_lr-0.01",
        "bn-train_lr-0.1",
        "bn-train_lr-0.01",
    ]
    named = expand(variants={"scratch": {"backbone": "headstart_cnn"}, "lite0": {"backbone": "tf_efficientnet_lite0"}})
    assert [v.name for v in named] == ["scratch", "lite0"]
    with pytest.raises(HeadstartError, match="KEY=VALUE1,VALUE2"):
        parse_vary("bn")


@pytest.mark.slow
def test_sweep_runs_every_variant_and_seed_then_compares(colour_folder, tmp_path, capsys):
    recipe = tiny_recipe(colour_folder, tmp_path / "runs")
    result = headstart.sweep(recipe, vary={"all.lr": [0.01, 1e-6]}, seeds=2, name="lr", quiet=True)
    assert sorted(result.runs) == ["all.lr-0.01", "all.lr-1e-06"]
    for runs in result.runs.values():
        assert [p.name for p in runs] == ["seed0", "seed1"] and all((p / "best.pt").is_file() for p in runs)
    assert Recipe.from_yaml(result.runs["all.lr-1e-06"][1] / "recipe.yaml").run.seed == 1
    comparison = result.comparison
    assert [row["runs"] for row in comparison.rows] == [2, 2]
    assert {f.name for f in comparison.files.values()} == {"comparison.md", "comparison.csv", "comparison.png"}
    slow = next(row for row in comparison.rows if row["variant"] == "all.lr-1e-06")
    assert "±" in comparison.markdown and "seed spread" in " ".join(comparison.notes)
    assert slow["trainable_params"][0] > 0
    lines = (result.path / "comparison.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("variant,runs,seeds,best_val_loss_mean")

    # The same comparison from the command line, on the run folders themselves: labelled by what differs.
    runs = [str(p) for p in result.runs["all.lr-1e-06"] + result.runs["all.lr-0.01"]]
    assert main(["compare", *runs, "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "all.lr=1e-06" in out and "all.lr=0.01" in out and (tmp_path / "cmp" / "comparison.png").is_file()


@pytest.mark.slow
def test_interrupted_sweep_continues_without_rerunning_finished_runs(colour_folder, tmp_path):
    recipe = tiny_recipe(colour_folder, tmp_path / "runs")
    recipe["stages"][1]["epochs"] = 30  # long enough to be killed inside the second run
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "sweep.yaml").write_text(
        yaml.safe_dump({"recipe": "base.yaml", "vary": {"all.lr": [0.01, 0.02]}, "name": "cut"})
    )
    command = [sys.executable, "-m", "headstart.cli", "sweep", str(tmp_path / "sweep.yaml"), "--quiet"]
    process = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    sweep_dir = tmp_path / "runs" / "cut"
    first, second = sweep_dir / "all.lr-0.01" / "seed0", sweep_dir / "all.lr-0.02" / "seed0"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (second / "last.pt").is_file():
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (first / "summary.txt").is_file() and not (second / "summary.txt").is_file()
    finished_at = (first / "history.json").stat().st_mtime_ns
    assert main(["sweep", str(tmp_path / "sweep.yaml"), "--quiet"]) == 0
    assert (first / "history.json").stat().st_mtime_ns == finished_at  # not run again
    assert len(json.loads((second / "history.json").read_text())) == 32  # resumed and completed
    assert [row["runs"] for row in compare([sweep_dir]).rows] == [1, 1]


def test_sweep_errors_before_anything_runs(colour_folder, tmp_path, capsys):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe(colour_folder, tmp_path / "runs")))
    assert main(["sweep", str(tmp_path / "r.yaml"), "--vary", "all.bn=sideways"]) == 2
    assert "sideways" in capsys.readouterr().err and not (tmp_path / "runs").exists()
    assert main(["sweep", str(tmp_path / "r.yaml")]) == 2
    assert "nothing to sweep" in capsys.readouterr().err


def test_a_run_that_failed_before_and_succeeds_now_is_compared(colour_folder, tmp_path):
    recipe = tiny_recipe(colour_folder, tmp_path / "runs")
    first = headstart.sweep(recipe, vary={"all.lr": [0.01, 0.02]}, name="retry", quiet=True)
    run_dir = first.runs["all.lr-0.02"][0]
    # As if it had failed in its last epoch: a resumable last.pt one epoch short, and the error recorded.
    from headstart.core.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(run_dir / "last.pt")
    checkpoint.resume.epoch -= 1
    checkpoint.resume.epochs_done -= 1
    checkpoint.save(run_dir / "last.pt")
    (run_dir / "error.txt").write_text("loss became nan\n")
    assert [row["runs"] for row in compare([first.path]).rows] == [1]
    again = headstart.sweep(recipe, vary={"all.lr": [0.01, 0.02]}, name="retry", quiet=True)
    assert not again.failed and not again.comparison.failed
    assert sorted(row["runs"] for row in again.comparison.rows) == [1, 1]
