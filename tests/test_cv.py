"""headstart cv: disjoint stratified folds that validate every image once, runs per fold, mean ± std, one-line errors."""

import csv
import json
import statistics
from collections import Counter

import numpy as np
import pytest
import yaml

import headstart
from headstart.cli import main
from headstart.config.recipe import DataConfig, Recipe
from headstart.core.errors import HeadstartError
from headstart.data.layouts import list_images
from headstart.experiments.compare import compare
from headstart.experiments.cv import plan_folds
from tests.conftest import CLASS_COLOURS, tiny_recipe, write_images


def read_rows(path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def quick(folder, out, **data) -> dict:
    stages = [
        {"name": "head", "epochs": 1, "freeze": "backbone", "lr": 0.05},
        {"name": "all", "epochs": 2, "freeze": "none", "lr": 0.01},
    ]
    return tiny_recipe(folder, out, stages=stages, data=data)


@pytest.fixture
def uneven_folder(tmp_path):
    """Three classes of 7, 11 and 15 images."""
    for (name, colour), count in zip(CLASS_COLOURS.items(), (7, 11, 15)):
        write_images(tmp_path / "uneven", {name: colour}, per_class=count, seed=count)
    return tmp_path / "uneven"


def test_folds_are_disjoint_stratified_and_validate_every_image_once(uneven_folder, tmp_path):
    recipe = Recipe.from_dict(quick(uneven_folder, tmp_path / "runs", test_fraction=0.2))
    plan = plan_folds(recipe, 3, None, "uneven")
    folds = [read_rows(path) for path in plan.csvs]
    assert [path.name for path in plan.csvs] == ["fold1.csv", "fold2.csv", "fold3.csv"]
    pool = {row["path"] for row in folds[0] if row["split"] != "test"}
    vals = [{row["path"] for row in rows if row["split"] == "val"} for rows in folds]
    assert set.union(*vals) == pool and sum(map(len, vals)) == len(pool)  # each image validated exactly once
    for rows, val in zip(folds, vals):
        assert {row["path"] for row in rows if row["split"] == "train"} == pool - val  # trained on the rest
    # Stratified: every fold validates each class's share of the pool, to within one image.
    labels = {row["path"]: row["label"] for row in folds[0]}
    totals = Counter(labels[path] for path in pool)
    for val in vals:
        counts = Counter(labels[path] for path in val)
        assert all(abs(counts[name] - totals[name] / 3) < 1 for name in totals), counts
    # The data's test split (here carved by test_fraction) stays out of the folds: every fold's test, the same.
    tests = [{row["path"] for row in rows if row["split"] == "test"} for rows in folds]
    assert tests[0] and all(t == tests[0] for t in tests) and not tests[0] & pool
    # A fold file is a CSV layout train reads as given.
    listed = list_images(DataConfig(path=str(plan.csvs[1]), task="single-label"))
    assert len(listed.val) == len(vals[1]) and len(listed.test) == len(tests[0]) and listed.classes == sorted(totals)


def test_multi_label_folds_keep_every_tag_and_validate_every_image_once(tag_csv, tmp_path):
    recipe = Recipe.from_dict(quick(tag_csv, tmp_path / "runs"))
    plan = plan_folds(recipe, 3, None, "tags")
    folds = [read_rows(path) for path in plan.csvs]
    vals = [{row["path"] for row in rows if row["split"] == "val"} for rows in folds]
    assert sum(map(len, vals)) == len(set.union(*vals)) == len(folds[0])
    for val, rows in zip(vals, folds):
        tags = Counter(tag for row in rows if row["path"] in val for tag in row["labels"].split())
        assert set(tags) == set(CLASS_COLOURS)  # every tag in every fold's val part
    assert list_images(DataConfig(path=str(plan.csvs[0]))).task == "multi-label"
    # An ensemble of multi-label folds is refused before any fold trains (it was after all of them).
    with pytest.raises(HeadstartError, match="--ensemble averages single-label"):
        headstart.cv(quick(tag_csv, tmp_path / "other"), folds=3, ensemble="onnx", quiet=True)
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_cv_trains_every_fold_and_writes_mean_and_std(colour_folder, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(quick(colour_folder, tmp_path / "runs")))
    argv = ["cv", str(colour_folder), "--recipe", str(recipe), "--folds", "2", "--ensemble", "export", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2-fold stratified cross-validation" in out and "| val_acc |" in out
    folder = tmp_path / "runs" / "tiny-cv"
    summary = json.loads((folder / "cv.json").read_text())
    assert sum(summary["images"]["val_per_fold"]) == summary["images"]["train_val"] == 36
    for name in ("val_loss", "val_acc", "val_balanced_acc", "val_f1"):
        score = summary["scores"][name]
        values = list(score["values"].values())
        assert list(score["values"]) == ["fold1", "fold2"]
        assert score["mean"] == pytest.approx(statistics.fmean(values))
        assert score["std"] == pytest.approx(statistics.stdev(values))
    # The folds side by side, in compare and report, without a warning that their data differ.
    comparison = compare([folder])
    assert [r.variant for r in sorted(comparison.records, key=lambda r: r.variant)] == ["fold1", "fold2"]
    assert not any(note.startswith("WARNING") for note in comparison.notes)
    assert "Cross-validation (headstart cv)" in headstart.report(folder).read_text()
    # The ensemble's probabilities are the mean of the fold models' calibrated ones.
    images = sorted(colour_folder.rglob("*.png"))[::6]
    ensemble = headstart.load(folder / "ensemble" / "model.pt2").outputs_of(images, top_k=3)[0]
    members = [headstart.load(folder / f"fold{k}" / "seed0").outputs_of(images, top_k=3)[0] for k in (1, 2)]
    assert np.allclose(np.asarray(ensemble), np.mean([np.asarray(m) for m in members], axis=0), atol=1e-5)
    # Again: both folds finished, nothing trains, the same scores.
    again = headstart.cv(tmp_path / "recipe.yaml", folds=2, quiet=True)
    assert again.scores["val_loss"]["values"] == summary["scores"]["val_loss"]["values"]


@pytest.mark.parametrize(
    ("folds", "message"),
    [("1", "--folds 1: give 2 or more"), ("0", "--folds 0: give 2 or more"), ("13", "class 'blue' has 12 image(s)")],
)
def test_too_few_or_too_many_folds_are_one_line_errors(colour_folder, tmp_path, capsys, folds, message):
    assert main(["cv", str(colour_folder), "--folds", folds, "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("headstart: error: ") and "Traceback" not in err, err
    assert message in err
    assert not (tmp_path / "runs").exists()  # nothing was written


@pytest.mark.slow
def test_a_failed_ensemble_keeps_the_scores_and_a_written_one_holds_its_description(
    colour_folder, tmp_path, monkeypatch
):
    import headstart.deploy.ensemble as ensemble_module

    def no_converter(*args, **kwargs):
        raise HeadstartError("LiteRT export needs litert-torch")

    monkeypatch.setattr(ensemble_module, "write_module", no_converter)
    recipe = quick(colour_folder, tmp_path / "runs")
    with pytest.raises(HeadstartError, match="litert-torch"):
        headstart.cv(recipe, folds=2, ensemble="tflite", quiet=True)
    folder = tmp_path / "runs" / "tiny-cv"
    assert "| val_acc |" in (folder / "cv.md").read_text()  # the folds' scores, written before the ensemble

    written = {}

    def capture(chosen, model, size, target, sidecar=None):
        written["sidecar"] = sidecar
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"model")

    monkeypatch.setattr(ensemble_module, "write_module", capture)
    result = headstart.cv(recipe, folds=2, ensemble="tflite", quiet=True)  # the folds are done: nothing trains
    # A format that holds its description inside the file (LiteRT's metadata) gets the one written beside it.
    beside = json.loads((result.ensemble.parent / "model.tflite.json").read_text())
    assert written["sidecar"] == beside and beside["classes"] == sorted(CLASS_COLOURS)
    assert "ensemble of the 2 fold models" in (folder / "cv.md").read_text()
