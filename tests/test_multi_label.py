"""Multi-label: reading both CSV forms, the task seam, scores, thresholds, and every entry point downstream."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import headstart
from headstart.cli import main
from headstart.config.recipe import DataConfig
from headstart.core.checkpoint import load_checkpoint
from headstart.core.errors import HeadstartError
from headstart.data.balance import positive_weights
from headstart.data.layouts import list_images
from headstart.tasks.multi_label import MULTI_LABEL
from headstart.tasks.tag_metrics import choose_thresholds, tag_scores
from headstart.training.loop import SoftTargets
from tests.conftest import tiny_recipe, write_images, write_tag_images


def write_csv(path, header, rows):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header) if header else None
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """A trained multi-label run (with a test split) and its CSV."""
    root = tmp_path_factory.mktemp("tagged")
    rows = write_tag_images(root / "images", count=90)
    table = write_csv(root / "tags.csv", ["path", "labels"], [(p, " ".join(t)) for p, t in rows])
    recipe = tiny_recipe(
        table,
        root / "runs",
        data={"test_fraction": 0.2, "val_fraction": 0.2},
        stages=[
            {"name": "head", "epochs": 3, "freeze": "backbone", "lr": 0.05},
            {"name": "all", "epochs": 8, "freeze": "none", "lr": 0.02},
        ],
    )
    result = headstart.train(recipe, quiet=True)
    return result, table


# ----------------------------------------------------------------------------- reading


def test_long_and_wide_csvs_list_the_same_tags_and_splits(tmp_path):
    rows = write_tag_images(tmp_path / "images", count=40)
    rows[0] = (rows[0][0], ())  # an empty cell: an image with no tag
    long = write_csv(tmp_path / "long.csv", ["path", "labels"], [(p, " ".join(t)) for p, t in rows])
    tags = ["blue", "green", "red"]
    wide = write_csv(
        tmp_path / "wide.csv", ["path", *tags], [(p, *(int(t in shown) for t in tags)) for p, shown in rows]
    )
    comma = write_csv(tmp_path / "comma.csv", ["path", "tags"], [(p, ",".join(t)) for p, t in rows])
    splits = [
        list_images(DataConfig(path=str(long))),
        list_images(DataConfig(path=str(wide))),
        list_images(DataConfig(path=str(comma), label_delim=",")),
    ]
    for split in splits:
        assert split.task == "multi-label" and split.classes == tags
        assert "iterative stratification" in split.layout
    first = splits[0]
    assert [s.train for s in splits[1:]] == [first.train, first.train] and splits[1].val == first.val
    every = {path.name: label for path, label in first.train + first.val}
    assert every["000.png"] == () and len(every) == 40
    assert all(isinstance(label, tuple) for label in every.values())
    # Every tag reaches val (iterative stratification keeps each tag's share), and the split is seeded.
    in_val = np.zeros(3)
    for _, label in first.val:
        in_val[list(label)] += 1
    assert (in_val > 0).all()
    assert list_images(DataConfig(path=str(long))).val == first.val
    assert list_images(DataConfig(path=str(long), split_seed=1)).val != first.val


def test_a_headerless_csv_with_several_tags_in_a_cell_is_multi_label_unless_told(tmp_path):
    write_images(tmp_path / "img", {"a": (200, 0, 0)}, per_class=12)
    rows = [(f"img/a/{i:03d}.png", "dress hat" if i % 2 else "dress") for i in range(12)]
    table = write_csv(tmp_path / "t.csv", None, rows)
    assert list_images(DataConfig(path=str(table))).task == "multi-label"
    told = list_images(DataConfig(path=str(table), task="single-label"))  # "dress hat" is then one class name
    assert told.task == "single-label" and told.classes == ["dress", "dress hat"]


@pytest.mark.parametrize(
    "header, cell, task, words",
    [
        (["path", "dress", "hat"], ("1", "yes"), "auto", "column 'hat' holds 'yes'"),
        (["path", "labels"], ("1 0 1",), "auto", "look like 0/1 flags"),
        (["path", "labels"], ("dress,hat",), "auto", "set data.label_delim ','"),
        (["path", "labels"], ("dress ../x",), "auto", "not a safe folder name"),
        (["path", "labels"], ("dress hat",), "single-label", "data.task is single-label"),
        (["path", "dress", "hat"], ("1", "0"), "single-label", "data.task is single-label"),
    ],
)
def test_bad_tag_csvs_are_one_line_errors(tmp_path, capsys, header, cell, task, words):
    write_images(tmp_path / "img", {"a": (200, 0, 0)}, per_class=4)
    table = write_csv(tmp_path / "t.csv", header, [(f"img/a/{i:03d}.png", *cell) for i in range(4)])
    assert main(["train", str(table), "--task", task, "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and "Traceback" not in err


def test_a_folder_is_not_multi_label_and_multi_label_scores_are_not_single_label_monitors(
    colour_folder, tag_csv, tmp_path, capsys
):
    with pytest.raises(HeadstartError, match="data.task is multi-label but .* holds single-label data"):
        list_images(DataConfig(path=str(colour_folder), task="multi-label"))
    out = str(tmp_path / "runs")
    assert main(["train", str(colour_folder), "--monitor", "val_map", "--out", out, "--quiet"]) == 2
    assert "run.monitor val_map is not a single-label score; valid: val_loss, val_acc" in capsys.readouterr().err
    assert main(["train", str(tag_csv), "--balance", "sampler", "--out", out, "--quiet"]) == 2
    assert "use weights (per-label positive weights)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the task and its scores


def test_scores_thresholds_and_positive_weights_by_hand():
    truth = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    probabilities = np.array([[0.9, 0.2], [0.6, 0.4], [0.3, 0.1], [0.2, 0.45]])
    at_half = tag_scores(probabilities, truth)
    # Tag 1's positives score 0.4 and 0.45: below 0.5, so at 0.5 it finds neither; both tags rank perfectly.
    assert at_half["map"] == pytest.approx(1.0) and at_half["f1_macro"] == pytest.approx(0.5)
    assert at_half["exact_match"] == pytest.approx(0.5) and at_half["acc"] == pytest.approx(6 / 8)
    own = choose_thresholds(probabilities, truth, prior=0)
    assert 0.3 < own[0] <= 0.6 and 0.2 < own[1] <= 0.4
    assert tag_scores(probabilities, truth, own)["exact_match"] == 1.0
    # With few positives each tag's cut is pulled to the one shared cut (best micro-F1 over every pair).
    shared = choose_thresholds(probabilities, truth, prior=1e9)
    assert shared[0] == pytest.approx(shared[1]) and 0.3 < shared[0] <= 0.4
    between = choose_thresholds(probabilities, truth, prior=2)  # 2 positives each: halfway
    assert between == pytest.approx((own + shared) / 2)
    labels = [(0,), (0, 1), (), (1,), (1,)]
    assert positive_weights(labels, 2).tolist() == pytest.approx([3 / 2, 2 / 3])


def test_losses_mixup_and_decisions_take_rows_of_tags():
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    logits = torch.tensor([[3.0, -3.0, 3.0], [-3.0, 3.0, -3.0]], requires_grad=True)
    for kind in ("bce", "asymmetric"):
        loss = MULTI_LABEL.loss(kind=kind)(logits, targets)
        loss.backward()
        assert loss.item() < 0.1 and logits.grad is not None
    mixed_inputs, mixed = SoftTargets(1.0, 0.0, 0.0, 3, multi_label=True)(torch.rand(2, 3, 4, 4), targets)
    assert mixed.shape == (2, 3) and torch.allclose(mixed.sum(1), torch.tensor([1.5, 1.5]), atol=0.5)
    assert torch.allclose(mixed[0] + mixed[1], targets[0] + targets[1])  # each pair shares its tags
    assert MULTI_LABEL.decide(torch.tensor([[0.7, 0.2]]), torch.tensor([0.8, 0.1])).tolist() == [[0, 1]]
    assert MULTI_LABEL.correct(logits.detach(), targets) == 2


# ----------------------------------------------------------------------------- training and everything after


def test_training_records_tag_scores_thresholds_and_an_honest_test(tagged):
    result, _ = tagged
    run = result.run_dir
    row = result.history[-1]
    assert {"val_map", "val_f1_micro", "val_f1_macro", "val_exact_match"} <= row.keys()
    assert "val_balanced_acc" not in row
    header = (run / "history.csv").read_text().splitlines()[0]
    assert "val_map" in header and "val_balanced_acc" not in header
    best = load_checkpoint(run / "best.pt")
    assert best.task == "multi-label" and len(best.thresholds) == 3
    assert best.unknown is None  # no tag above its threshold is its own "none of these": no detector is fitted
    assert all(0 < t < 1 for t in best.thresholds)
    # Colour tags are easy: well above chance (a random ranking's mAP is about the positive rate, ~0.45).
    assert result.test["map"] > 0.9 and result.test["f1_micro"] > 0.8
    assert [r["label"] for r in result.test["per_label"]] == ["blue", "green", "red"]
    summary = (run / "summary.txt").read_text()
    assert "task: multi-label" in summary and "thresholds: one per tag" in summary and "test blue:" in summary


def test_predict_evaluate_and_load_give_tags_above_their_thresholds(tagged, capsys, tmp_path):
    result, table = tagged
    run = result.run_dir
    images = sorted((table.parent / "images").iterdir())[:6]
    assert main(["predict", str(run), *map(str, images), "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    thresholds = dict(zip(result.classes, load_checkpoint(run / "best.pt").thresholds))
    for entry in entries:
        assert entry["unknown"] == (not entry["labels"])
        assert all(t["probability"] >= thresholds[t["label"]] for t in entry["labels"])
        given = {t["label"] for t in entry["labels"]}
        assert all(t["probability"] < thresholds[t["label"]] for t in entry["top"] if t["label"] not in given)
    loaded = headstart.load(run).predict(images)
    assert [[t for t, _ in tags] for tags in loaded] == [[t["label"] for t in e["labels"]] for e in entries]
    assert main(["predict", str(run), *map(str, images), "--csv", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert list(rows[0]) == ["image", "labels", "unknown", "blue", "green", "red"]
    assert [r["labels"] for r in rows] == [" ".join(t["label"] for t in e["labels"]) for e in entries]
    capsys.readouterr()
    assert main(["evaluate", str(run), str(table), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["mean_average_precision"] == pytest.approx(result.test["map"])
    assert scores["f1_micro"] == pytest.approx(result.test["f1_micro"])
    assert {"f1_macro", "exact_match", "per_label"} <= scores.keys() and "held-out test" in scores["scored"]
    assert (run / "precision-recall-test.png").is_file()


def test_a_photo_with_no_tag_above_its_threshold_is_none_of_these(tagged, tmp_path, capsys):
    from PIL import Image

    result, _ = tagged
    grey = tmp_path / "grey.png"
    Image.new("RGB", (24, 24), (128, 128, 128)).save(grey)
    answer = headstart.load(result.run_dir).predict([grey])
    assert answer == [[]] and answer[0].unknown is True
    assert main(["predict", str(result.run_dir), str(grey)]) == 0
    assert "none of these (no tag reaches its threshold" in capsys.readouterr().out


@pytest.mark.parametrize("fmt, suffix", [("onnx", "model.onnx"), ("export", "model.pt2"), ("hub", "hub")])
def test_exports_carry_the_sigmoid_and_thresholds(tagged, tmp_path, fmt, suffix):
    result, table = tagged
    images = sorted((table.parent / "images").iterdir())[:8]
    exported = headstart.export(result.run_dir, format=fmt, out=tmp_path / suffix)
    want = headstart.load(result.run_dir).predict(images)
    got = headstart.load(exported).predict(images)
    assert [[t for t, _ in tags] for tags in got] == [[t for t, _ in tags] for tags in want]
    assert [p for tags in got for _, p in tags] == pytest.approx([p for tags in want for _, p in tags], abs=1e-4)
    if fmt == "hub":
        config = json.loads((exported / "config.json").read_text())["headstart"]
        assert config["task"] == "multi-label" and len(config["thresholds"]) == 3
        assert "Task: **multi-label**" in (exported / "README.md").read_text()
    else:
        sidecar = json.loads(exported.with_name(exported.name + ".json").read_text())
        assert sidecar["activation"] == "sigmoid" and sidecar["thresholds"] == pytest.approx(
            load_checkpoint(result.run_dir / "best.pt").thresholds
        )


def test_the_server_answers_with_tags(tagged):
    from fastapi.testclient import TestClient

    from headstart.deploy.server import create_app

    result, table = tagged
    image = sorted((table.parent / "images").iterdir())[1]
    app = create_app(headstart.load(result.run_dir, device="cpu"))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        answer = client.post("/predict", files={"file": ("x.png", image.read_bytes(), "image/png")}).json()
        metadata = client.get("/metadata").json()
    assert answer["labels"] == [
        {"label": t, "probability": pytest.approx(p, abs=1e-5)}
        for t, p in headstart.load(result.run_dir).predict([image])[0]
    ]
    assert "unknown" in answer and metadata["task"] == "multi-label" and len(metadata["thresholds"]) == 3


def test_a_run_killed_before_its_thresholds_gets_them_when_resumed(tagged, tmp_path):
    import shutil

    result, _ = tagged
    run = tmp_path / "copy"
    shutil.copytree(result.run_dir, run)
    best = load_checkpoint(run / "best.pt")
    expected = best.thresholds
    best.calibration = best.thresholds = best.temperature = None
    best.save(run / "best.pt")
    headstart.train(resume=run, quiet=True)
    assert load_checkpoint(run / "best.pt").thresholds == pytest.approx(expected)


# ----------------------------------------------------------------------------- inspect


def test_tag_errors_are_found_by_cleanlabs_multi_label_method():
    """Embeddings that encode each image's true tags; five images have one tag dropped or added."""
    from pathlib import Path

    from headstart.data.duplicates import Item
    from headstart.inspection.evidence import Evidence
    from headstart.inspection.tag_issues import tag_issue_rows

    rng = np.random.default_rng(0)
    tags = ["cat", "dog", "hat", "sky"]
    truth = (rng.random((200, 4)) < 0.35).astype(int)
    vectors = np.hstack([truth * 3.0, np.zeros((200, 28))]) + rng.normal(0, 0.6, (200, 32))
    given = truth.copy()
    flipped = [3, 40, 77, 120, 161]
    for row, tag in zip(flipped, [0, 1, 2, 3, 0]):
        given[row, tag] = 1 - given[row, tag]
    items = [
        Item("all", Path(f"{i}.png"), f"{i}.png", " ".join(t for t, on in zip(tags, row) if on))
        for i, row in enumerate(given)
    ]
    evidence = Evidence(items, [], list(range(200)), vectors, None, 0, multi_label=True)  # type: ignore[arg-type]
    found = tag_issue_rows(evidence)
    top = [f.path for f in found[: 2 * len(flipped)]]
    assert sum(f"{row}.png" in top for row in flipped) >= 4
    first = next(f for f in found if f.path == f"{flipped[0]}.png")
    assert first.extra["add"] == "cat" or first.extra["drop"] == "cat"
    assert 0 < first.extra["margin"] <= 1


def test_inspect_reads_a_tags_csv_and_its_duplicate_checks_work_unchanged(tmp_path):
    import shutil

    rows = write_tag_images(tmp_path / "images", count=40, size=48)
    shutil.copyfile(tmp_path / rows[0][0], tmp_path / "images" / "copy.png")
    other = ("red",) if rows[0][1] != ("red",) else ("blue",)
    table = write_csv(
        tmp_path / "tags.csv",
        ["path", "labels"],
        [(p, " ".join(t)) for p, t in rows] + [("images/copy.png", "red" if other == ("red",) else "blue")],
    )
    result = headstart.inspect(table, tmp_path / "out", image_size=64, quiet=True)
    conflicts = {frozenset(pair) for pair in [(f.path, f.other) for f in result.of("conflicting_label")]}
    assert frozenset((rows[0][0], "images/copy.png")) in conflicts
    assert {f.extra.get("label") for f in result.of("exact_duplicate")} <= {" ".join(rows[0][1]), *other, None}
    assert (tmp_path / "out" / "findings.csv").is_file()


def test_compare_and_report_show_tag_scores(tagged, tmp_path):
    from headstart.experiments.compare import compare
    from headstart.experiments.report import report

    result, _ = tagged
    comparison = compare([result.run_dir])
    assert "best.pt val mAP" in comparison.markdown and "test micro-F1" in comparison.markdown
    assert "balanced" not in comparison.markdown
    page = report(result.run_dir, out=tmp_path / "report.html").read_text()
    assert "val mAP" in page and "Precision-recall per tag" in page and "exact match" in page


def test_auto_monitor_is_the_tasks_own(tagged, colour_folder, tmp_path):
    result, _ = tagged
    assert result.monitor == "val_map"
    assert "monitor: val_map" in (result.run_dir / "recipe.yaml").read_text()
    stages = [{"name": "head", "epochs": 1, "freeze": "backbone", "lr": 0.05}]
    single = headstart.train(tiny_recipe(colour_folder, tmp_path / "runs", stages=stages), quiet=True)
    assert single.monitor == "val_loss"


def test_the_label_delimiters_default_space_shows_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "(default: ' ')" in capsys.readouterr().out
