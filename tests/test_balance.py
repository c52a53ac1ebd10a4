"""Imbalance and honest numbers: class-averaged metrics, data.balance, run.monitor, the test split."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score

import headstart
from headstart.core.checkpoint import load_checkpoint
from headstart.core.runs import read_history, read_test
from headstart.data.balance import choose_balance, class_weights, sample_weights
from headstart.data.batches import GlobalBatches
from headstart.tasks.metrics import confusion, scores
from tests.conftest import tiny_recipe, write_images


def test_scores_match_scikit_learn():
    rng = np.random.default_rng(0)
    labels, predicted = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    got = scores(confusion(labels, predicted, 4))
    assert got["acc"] == pytest.approx(np.mean(labels == predicted))
    assert got["balanced_acc"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert got["f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))


def test_imbalance_warning_names_the_counts(caplog):
    labels = [0] * 30 + [1] * 10 + [2] * 9
    with caplog.at_level(logging.WARNING, logger="headstart"):
        assert choose_balance(None, labels, ["a", "b", "c"]) == "sampler"
        assert choose_balance("weights", labels, ["a", "b", "c"]) == "weights"
    assert "imbalanced classes: 'a' has 30 training images, 'c' 9 (3.3x); balance: sampler (the default" in caplog.text
    caplog.clear()
    assert choose_balance(None, [0] * 29 + [1] * 10, ["a", "b"]) == "none" and not caplog.text
    assert class_weights([0, 0, 0, 1], 2).tolist() == pytest.approx([4 / 6, 2.0])


def test_balanced_sampler_is_seeded_balanced_and_the_same_on_two_processes():
    labels = [0] * 90 + [1] * 10
    weights = sample_weights(labels, 2)
    one = GlobalBatches(100, 20, seed=3, shuffle=True, weights=weights)
    one.set_epoch(2)
    batches = list(one)
    again = GlobalBatches(100, 20, seed=3, shuffle=True, weights=weights)
    again.set_epoch(2)
    assert list(again) == batches  # a function of (seed, epoch)
    halves = []
    for rank in (0, 1):
        part = GlobalBatches(100, 20, seed=3, shuffle=True, rank=rank, world=2, weights=weights)
        part.set_epoch(2)
        halves.append(list(part))
    assert [a + b for a, b in zip(*halves)] == batches  # the same global batches on 2 processes
    drawn = np.array([labels[i] for batch in batches for i in batch])
    assert 0.3 < drawn.mean() < 0.7  # about half minority, against 0.1 unbalanced
    one.set_epoch(3)
    assert list(one) != batches


def write_overlapping(folder, name, red, count, seed):
    # Each image's red shifts as a whole (sd 20) and the classes' reds differ by 30: overlapping
    # classes, so an unweighted model moves its threshold far toward the rare class (prior 10:1).
    rng = np.random.default_rng(seed)
    (folder / name).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        colour = np.array([red + rng.normal(0, 20), 100, 100])
        pixels = np.clip(colour + rng.normal(0, 8, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / name / f"{index:03d}.png")


def imbalanced_task(root):
    write_overlapping(root / "train", "common", 115, 200, seed=1)
    write_overlapping(root / "train", "rare", 145, 20, seed=2)
    write_overlapping(root / "val", "common", 115, 40, seed=3)
    write_overlapping(root / "val", "rare", 145, 40, seed=4)
    return root


def test_default_balance_beats_unweighted_on_a_10_to_1_task(tmp_path, caplog):
    data = imbalanced_task(tmp_path / "imb")
    stages = [{"name": "all", "epochs": 3, "freeze": "none", "lr": 0.01}]
    results = {}
    for balance in (None, "none"):
        recipe = tiny_recipe(data, tmp_path / "runs", stages=stages, run={"name": f"b-{balance}"})
        recipe["data"]["balance"] = balance
        with caplog.at_level(logging.WARNING, logger="headstart"):
            results[balance] = headstart.train(recipe, quiet=True)
    assert "'common' has 200 training images, 'rare' 20 (10.0x); balance: sampler" in caplog.text
    default, plain = (results[b].final["val_balanced_acc"] for b in (None, "none"))
    assert default >= plain + 0.1, (default, plain)


def test_test_split_never_changes_best_pt(tmp_path, split_folder):
    without = headstart.train(tiny_recipe(split_folder, tmp_path / "runs", run={"name": "without"}), quiet=True)
    write_images(split_folder / "test", {"red": (200, 40, 40), "blue": (40, 60, 200)}, per_class=5, seed=9)
    with_test = headstart.train(tiny_recipe(split_folder, tmp_path / "runs", run={"name": "with"}), quiet=True)
    a, b = (load_checkpoint(r.run_dir) for r in (without, with_test))
    assert (a.stage, a.epoch) == (b.stage, b.epoch)
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    untimed = [
        [{k: v for k, v in row.items() if k != "seconds"} for row in read_history(r.run_dir)]
        for r in (without, with_test)
    ]
    assert untimed[0] == untimed[1] and read_history(with_test.run_dir) == with_test.history
    test = read_test(with_test.run_dir)
    assert test == with_test.test and test["images"] == 10 and read_test(without.run_dir) is None
    assert test["model"] == f"{b.stage} epoch {b.epoch}"
    records = json.loads((with_test.run_dir / "history.json").read_text())
    assert records[-1]["record"] == "test" and len(records) == len(with_test.history) + 1
    assert "test (10 images" in (with_test.run_dir / "summary.txt").read_text()
    assert "computed in" not in (with_test.run_dir / "summary.txt").read_text()  # fp32: as loading computes


def test_summary_says_when_scores_are_not_fp32(tmp_path, split_folder):
    """A bf16 run scores val and test in bf16; load and the exports run fp32, and the summary says so."""
    write_images(split_folder / "test", {"red": (200, 40, 40), "blue": (40, 60, 200)}, per_class=3, seed=9)
    result = headstart.train(tiny_recipe(split_folder, tmp_path / "runs", run={"precision": "bf16"}), quiet=True)
    summary = (result.run_dir / "summary.txt").read_text()
    assert "scores above computed in bf16, as trained" in summary and "test (" in summary


def test_monitor_chooses_best_pt(tmp_path, colour_folder):
    recipe = tiny_recipe(colour_folder, tmp_path / "runs", run={"monitor": "val_f1"})
    result = headstart.train(recipe, quiet=True)
    history = result.history
    expected = max(range(len(history)), key=lambda i: (history[i]["val_f1"], -i))
    saved = load_checkpoint(result.run_dir)
    assert (saved.stage, saved.epoch) == (history[expected]["stage"], history[expected]["epoch"])
    assert result.best is history[expected]
    assert all({"val_balanced_acc", "val_f1"} <= set(row) for row in history)
