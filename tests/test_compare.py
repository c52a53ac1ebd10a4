"""compare on hand-made run folders: the kept model's scores, the run's wall time, ranking by run.monitor, data warnings."""

from __future__ import annotations

import json
import logging

from headstart.config.recipe import Recipe
from headstart.experiments.compare import compare
from tests.conftest import tiny_recipe


def row(epoch: int, val_loss: float, val_acc: float, seconds: float = 2.0) -> dict:
    return {
        "stage": "head",
        "epoch": epoch,
        "train_loss": 1.0,
        "train_acc": 0.5,
        "val_loss": val_loss,
        "val_acc": val_acc,
        "val_balanced_acc": val_acc,
        "val_f1": val_acc,
        "lr": 0.01,
        "seconds": seconds,
        "trainable_params": 10,
    }


def fake_run(folder, name, rows, *, monitor="val_loss", data="/data/colours", wall=None, lr=0.05):
    values = tiny_recipe(folder / "nowhere", folder, run={"name": name, "monitor": monitor})
    values["data"]["path"] = data
    values["stages"][0]["lr"] = lr
    run = folder / name
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text(Recipe.from_dict(values).to_yaml())
    (run / "history.json").write_text(json.dumps(rows))
    if wall is not None:
        (run / "summary.txt").write_text(f"run: {run}\nepochs: {len(rows)}, wall time {wall:.1f}s\n")
    return run


def test_compare_shows_the_kept_models_scores_and_the_runs_wall_time(tmp_path):
    # Monitor val_loss keeps epoch 2 (acc 0.94) while epoch 3 scored the highest accuracy (0.96).
    rows = [row(1, 0.5, 0.90), row(2, 0.2, 0.94), row(3, 0.3, 0.96), row(4, 0.4, 0.92)]
    run = fake_run(tmp_path / "runs", "a", rows, wall=141.1)
    comparison = compare([run])
    found = comparison.rows[0]
    assert found["best_val_acc"][0] == 0.94 and found["best_val_loss"][0] == 0.2
    assert found["seconds"][0] == 141.1  # the run's, not the epochs' 8 s
    assert "best.pt val acc" in comparison.markdown and "run wall time (s)" in comparison.markdown
    assert "0.9400" in comparison.markdown and "0.9600" not in comparison.markdown
    assert "last epoch val acc" in comparison.markdown


def test_compare_reads_the_kept_epoch_by_the_runs_monitor(tmp_path):
    rows = [row(1, 0.5, 0.90), row(2, 0.2, 0.94)]
    rows[0]["val_f1"] = 0.99
    run = fake_run(tmp_path / "runs", "a", rows, monitor="val_f1")
    kept = compare([run]).rows[0]
    assert kept["best_val_acc"][0] == 0.90 and kept["best_val_loss"][0] == 0.5


def test_compare_ranks_by_run_monitor_not_val_loss(tmp_path):
    runs = tmp_path / "runs"
    low_loss = fake_run(runs, "low-loss", [row(1, 0.1, 0.80)], monitor="val_acc", lr=0.05)
    high_acc = fake_run(runs, "high-acc", [row(1, 0.4, 0.95)], monitor="val_acc", lr=0.01)
    comparison = compare([low_loss, high_acc])
    assert [r["variant"] for r in comparison.rows] == ["head.lr=0.01", "head.lr=0.05"]
    assert "run.monitor val_acc" in comparison.notes[0] and "highest" in comparison.notes[0]
    assert "best.pt val acc -0.1500" in comparison.notes[1]


def test_compare_says_which_monitor_ranks_when_runs_differ(tmp_path):
    runs = tmp_path / "runs"
    first = fake_run(runs, "a", [row(1, 0.1, 0.80)], monitor="val_acc", lr=0.05)
    second = fake_run(runs, "b", [row(1, 0.4, 0.95)], monitor="val_acc", lr=0.01)
    third = fake_run(runs, "c", [row(1, 0.3, 0.90)], monitor="val_loss", lr=0.02)
    notes = " ".join(compare([first, second, third]).notes)
    assert "runs differ in run.monitor" in notes and "ranked by best.pt val_acc" in notes


def test_compare_warns_when_runs_differ_in_data_and_writes_its_own_folder(tmp_path, caplog):
    runs = tmp_path / "runs"
    ants = fake_run(runs, "ants", [row(1, 0.3, 0.9)], data="/data/hymenoptera")
    cats = fake_run(runs, "cats", [row(1, 0.4, 0.8)], data="/data/cat_breeds")
    with caplog.at_level(logging.WARNING, logger="headstart"):
        comparison = compare([ants, cats])
    assert "runs differ in data" in caplog.text
    assert "/data/hymenoptera" in comparison.markdown and "/data/cat_breeds" in comparison.markdown
    folder = runs / "comparison"
    assert comparison.files == {name: folder / f"comparison.{name}" for name in ("md", "csv", "png")}
    assert all(path.is_file() for path in comparison.files.values())
    assert not list(runs.glob("comparison.*"))


def test_a_relative_and_an_absolute_path_to_the_same_data_are_one_data_set(tmp_path, monkeypatch, caplog):
    (tmp_path / "ants").mkdir()
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    typed = fake_run(runs, "typed", [row(1, 0.3, 0.9)], data="ants", lr=0.05)
    absolute = fake_run(runs, "absolute", [row(1, 0.4, 0.8)], data=str(tmp_path / "ants"), lr=0.01)
    with caplog.at_level(logging.WARNING, logger="headstart"):
        comparison = compare([typed, absolute])
    assert "differ in data" not in caplog.text
    assert sorted(r["variant"] for r in comparison.rows) == ["head.lr=0.01", "head.lr=0.05"]  # not data.path


def test_without_a_summary_the_wall_time_is_last_pts_and_otherwise_unknown(tmp_path):
    from headstart.core.checkpoint import Checkpoint, ResumeState

    runs = tmp_path / "runs"
    run = fake_run(runs, "a", [row(1, 0.3, 0.9, seconds=5.0)])
    assert compare([run]).markdown.split("\n")[2].split(" | ")[-2] == "-"  # not the epochs' 5 s
    resume = ResumeState(0, 1, 1, {}, {}, {}, elapsed=33.3)
    Checkpoint({}, {}, ["a"], {}, "head", 1, 0.3, 0.9, resume=resume).save(run / "last.pt")
    assert compare([run]).rows[0]["seconds"][0] == 33.3
