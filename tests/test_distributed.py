"""Data-parallel training: two CPU processes (gloo) under torchrun give the one-process history."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

import headstart
from headstart.cli import main
from headstart.data.batches import GlobalBatches
from tests.conftest import CLASS_COLOURS, tiny_recipe, write_images, write_tag_images


def test_global_batches_split_evenly_and_agree_with_one_process():
    one = list(GlobalBatches(50, 8, seed=3, shuffle=True))
    halves = [list(GlobalBatches(50, 8, seed=3, shuffle=True, rank=r, world=2)) for r in range(2)]
    assert len(one) == 6 and all(len(h) == 6 for h in halves)  # the short last batch is dropped
    for whole, first, second in zip(one, *halves):
        assert whole == first + second
    sampler = GlobalBatches(50, 8, seed=3, shuffle=True)
    sampler.set_epoch(2)
    assert list(sampler) != one  # a new order each epoch, fixed by (seed, epoch)
    evaluation = [sum(GlobalBatches(11, 4, 0, False, r, 2), []) for r in range(2)]
    assert sorted(evaluation[0] + evaluation[1]) == list(range(11))  # every image once, none padded
    with pytest.raises(headstart.HeadstartError, match="multiple of 3"):
        GlobalBatches(50, 8, 0, True, 0, 3)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["single-label", "multi-label"])
def test_two_processes_match_one_process(tmp_path, task):
    multi = task == "multi-label"
    if multi:  # tags gathered from both processes for mAP; thresholds chosen once, shared for the test split
        rows = write_tag_images(tmp_path / "data" / "images", count=60)
        folder = tmp_path / "data" / "tags.csv"
        folder.write_text("path,labels\n" + "".join(f"{p},{' '.join(t)}\n" for p, t in rows))
    else:
        folder = write_images(tmp_path / "data", CLASS_COLOURS, per_class=20, size=24)
    # No BatchNorm and no dropout: each process's BatchNorm would see only its half-batch.
    recipe = tiny_recipe(
        folder,
        tmp_path / "runs",
        model={
            "backbone": "headstart_cnn",
            "backbone_args": {"widths": [8, 16], "convs_per_block": 1, "dropout": 0.0, "batch_norm": False},
        },
        stages=[
            {"name": "head", "epochs": 2, "freeze": "backbone", "lr": 0.05},
            {"name": "all", "epochs": 2, "freeze": "none", "lr": 0.02},
        ],
        run={"deterministic": True, "name": "one", "device": "cpu"},  # gloo on CPUs, GPU or not
    )
    if multi:
        recipe["data"]["test_fraction"] = 0.2
    single = headstart.train(recipe, quiet=True)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    assert main(["train", "--recipe", str(recipe_file), "--name", "two", "--devices", "2", "--quiet"]) == 0

    records = json.loads((tmp_path / "runs" / "two" / "history.json").read_text())
    two = [r for r in records if "record" not in r]
    assert [(r["stage"], r["epoch"], r["path"]) for r in two] == [
        (r["stage"], r["epoch"], r["path"]) for r in single.history
    ]
    for got, want in zip(two, single.history):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr") + (
            ("val_map", "val_f1_micro") if multi else ()
        ):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (got["stage"], got["epoch"], key)
    # Rank 0 alone made the folder and wrote its files; the other process wrote nothing beside it.
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["one", "two"]
    assert {p.name for p in (tmp_path / "runs" / "two").iterdir()} == {p.name for p in single.run_dir.iterdir()}
    if multi:
        test = records[-1]
        assert test["record"] == "test" and test["map"] == pytest.approx(single.test["map"], abs=1e-6)
        assert test["f1_micro"] == pytest.approx(single.test["f1_micro"], abs=1e-6)


@pytest.mark.slow
def test_feature_pass_is_split_between_processes(tmp_path, monkeypatch, capfd):
    """Each process computes its share of the one feature pass (augmented views included); the run equals one process's."""
    folder = write_images(tmp_path / "data", CLASS_COLOURS, per_class=20, size=24)
    recipe = tiny_recipe(
        folder,
        tmp_path / "runs",
        data={"augment": "light", "feature_views": 2},
        model={
            "backbone": "headstart_cnn",
            "backbone_args": {"widths": [8, 16], "convs_per_block": 1, "dropout": 0.0, "batch_norm": False},
        },
        stages=[
            {"name": "head", "epochs": 2, "freeze": "backbone", "lr": 0.05},
            {"name": "top", "epochs": 2, "freeze": "top:1", "lr": 0.02},
        ],
        run={"deterministic": True, "name": "one", "device": "cpu"},
    )
    single = headstart.train(recipe, quiet=True)
    assert [r["path"] for r in single.history] == ["cached-features"] * 4
    one_cache = tmp_path / "cache-one"
    (Path(os.environ["HEADSTART_CACHE"]) / "features").rename(one_cache)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    capfd.readouterr()
    assert main(["train", "--recipe", str(recipe_file), "--name", "two", "--devices", "2"]) == 0
    assert "feature pass split over 2 processes: 27 + 27 train images each" in "".join(capfd.readouterr())

    two = [r for r in json.loads((tmp_path / "runs" / "two" / "history.json").read_text()) if "record" not in r]
    for got, want in zip(two, single.history, strict=True):
        for key in ("train_loss", "val_loss", "val_acc"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (got["stage"], got["epoch"], key)
    # The same entries (head and top:1, two augmented train views, val, test) with the same rows.
    entries = [e for e in (Path(os.environ["HEADSTART_CACHE"]) / "features").iterdir() if not e.name.startswith(".")]
    assert len(entries) == 2
    for entry in entries:
        assert sorted(a.name for a in entry.glob("*.npy")) == ["train0.npy", "train1.npy", "val.npy"]
        for array in entry.glob("*.npy"):
            np.testing.assert_allclose(np.load(array), np.load(one_cache / entry.name / array.name), atol=1e-5)
