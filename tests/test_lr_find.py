"""The learning-rate range test: exponential LR per step, loss recorded, a suggestion inside the range."""

import csv

import numpy as np
import pytest

import headstart
from headstart.cli import main
from headstart.training.lr_find import lr_find, suggest
from tests.conftest import tiny_recipe


def test_suggestions_on_a_known_curve():
    lrs = list(np.logspace(-6, 0, 61))
    # Flat, then falling fastest around 1e-3, lowest at 1e-2, then blowing up.
    smoothed = [
        2.0 - 1.5 / (1 + np.exp(-4 * (np.log10(lr) + 3))) + (5.0 * (np.log10(lr) + 2) ** 2 if lr > 1e-2 else 0)
        for lr in lrs
    ]
    minimum_tenth, steepest = suggest(lrs, smoothed)
    assert minimum_tenth == pytest.approx(1e-3, rel=0.3)
    assert steepest == pytest.approx(1e-3, rel=0.3)


def test_range_test_writes_curve_and_suggests_an_lr_in_range(colour_folder, tmp_path, capsys):
    recipe = tiny_recipe(colour_folder, tmp_path / "runs")
    found = lr_find(recipe, stage="all", steps=40, start_lr=1e-5, end_lr=10, quiet=True)
    assert 1e-5 <= found.suggestion <= 10 and 1e-6 <= found.minimum_tenth <= 1
    rows = list(csv.DictReader((found.folder / "lr_find.csv").open()))
    lrs = [float(r["lr"]) for r in rows]
    assert len(rows) == len(found.losses) <= 40
    assert np.allclose(np.diff(np.log(lrs)), np.log(10 / 1e-5) / 39, rtol=1e-3)  # exponential steps
    assert (found.folder / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert min(found.smoothed) < found.smoothed[0]  # the loss does fall somewhere in the range

    assert (
        main(
            [
                "lr-find",
                str(colour_folder),
                "--backbone",
                "headstart_cnn",
                "--weights",
                "none",
                "--image-size",
                "16",
                "--steps",
                "10",
                "--out",
                str(tmp_path / "cli"),
                "--quiet",
            ]
        )
        == 0
    )
    assert "suggested lr" in capsys.readouterr().out
    assert main(["lr-find", str(colour_folder), "--stage", "nope", "--quiet"]) == 2
    assert "no stage named 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_range_test_can_start_from_a_trained_run(colour_folder, tmp_path):
    recipe = tiny_recipe(colour_folder, tmp_path / "runs")
    run = headstart.train(recipe, quiet=True)
    found = lr_find(recipe, stage="all", steps=20, weights_from=run.run_dir, quiet=True)
    fresh = lr_find(recipe, stage="all", steps=20, quiet=True)
    assert found.losses[0] < fresh.losses[0]  # trained weights start from a lower loss
