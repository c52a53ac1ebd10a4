"""The learning-rate range test: exponential LR per step, loss recorded, a suggestion inside the range."""

import csv

import numpy as np
import pytest

import headstart
from headstart.cli import main
from headstart.core import plots
from headstart.training import lr_find as lr_find_module
from headstart.training.lr_find import edge_warning, lr_find, suggest
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
    assert 1e-5 <= found.steepest <= 10 and 1e-6 <= found.minimum_tenth <= 1
    assert found.suggestion in (None, found.steepest)
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
    out = capsys.readouterr().out
    assert "suggested lr" in out or "no suggestion" in out
    assert main(["lr-find", str(colour_folder), "--stage", "nope", "--quiet"]) == 2
    assert "no stage named 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_range_test_can_start_from_a_trained_run(colour_folder, tmp_path):
    recipe = tiny_recipe(colour_folder, tmp_path / "runs")
    run = headstart.train(recipe, quiet=True)
    found = lr_find(recipe, stage="all", steps=20, weights_from=run.run_dir, quiet=True)
    fresh = lr_find(recipe, stage="all", steps=20, quiet=True)
    assert found.losses[0] < fresh.losses[0]  # trained weights start from a lower loss


def test_a_steepest_descent_at_the_range_edge_is_a_warning_not_a_suggestion():
    lrs = list(np.logspace(-7, 1, 50))
    assert edge_warning(lrs, lrs[20], 1e-7, 10) is None
    for index in (0, 1):
        warning = edge_warning(lrs, lrs[index], 1e-7, 10)
        assert "start of the range" in warning and "--start-lr" in warning and "--from" in warning
    warning = edge_warning(lrs, lrs[-1], 1e-7, 10)
    assert "end of the range" in warning and "--end-lr" in warning


def test_lr_find_at_the_edge_recommends_nothing(colour_folder, tmp_path, monkeypatch, caplog, capsys):
    # The fine-tune case from issue 27: the steepest descent is the range's first LR.
    monkeypatch.setattr(lr_find_module, "suggest", lambda lrs, smoothed: (lrs[0] / 10, lrs[0]))
    recipe = tiny_recipe(colour_folder, tmp_path / "runs")
    with caplog.at_level("INFO", logger="headstart"):
        found = lr_find(recipe, stage="all", steps=10, quiet=True)
    assert found.suggestion is None and found.steepest == found.lrs[0]
    assert "no suggestion" in found.warning
    assert "suggested lr" not in caplog.text and "try --lr" not in caplog.text
    assert any(r.levelname == "WARNING" and "start of the range" in r.getMessage() for r in caplog.records)


def test_lr_find_plot_shows_the_whole_smoothed_curve(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.append(figure) or path)
    lrs = list(np.logspace(-7, 1, 40))
    # Dips, then climbs past four times its minimum (the test's stop): the old limit cut that end off.
    smoothed = [1.0 - 0.5 * (i / 20) if i < 20 else 0.5 + 0.09 * (i - 20) for i in range(40)]
    losses = [v + 0.05 for v in smoothed]
    plots.plot_lr_find(lrs, losses, smoothed, lrs[10], lrs[20] / 10, tmp_path / "lr.png")
    bottom, top = figures[0].axes[0].get_ylim()
    assert bottom <= min(smoothed) and top >= max(smoothed)
    figures.clear()
    plots.plot_lr_find(lrs, losses, smoothed, lrs[0], lrs[0] / 10, tmp_path / "lr.png", at_edge=True)
    labels = [line.get_label() for line in figures[0].axes[0].get_lines()]
    assert any("no suggestion" in label for label in labels) and not any("suggested" in label for label in labels)
