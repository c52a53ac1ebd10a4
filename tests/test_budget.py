"""run.budget: a run planned to fit a wall-clock budget, and a trainer that starts no epoch past it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import headstart
from headstart.core.runs import read_history
from headstart.training.train import train
from tests.conftest import tiny_recipe
from tests.test_cli import one_line_error


def test_a_stage_ends_before_an_epoch_that_would_pass_the_budget_and_later_stages_are_skipped(colour_folder, tmp_path):
    stages = [
        {"name": "head", "epochs": 100000, "freeze": "backbone", "lr": 0.05},
        {"name": "all", "epochs": 3, "freeze": "none", "lr": 0.01},
    ]
    recipe = tiny_recipe(colour_folder, tmp_path / "runs", stages=stages, run={"budget": "6s"})
    result = train(recipe, quiet=True)  # the trainer alone: run.budget is its deadline, nothing is planned
    history = read_history(result.run_dir)
    assert sum(row["seconds"] for row in history) < 6  # whether the whole run fits is a benchmark's question
    assert {row["stage"] for row in history} == {"head"} and 3 < len(history) < 100000
    assert history[-1]["stop"].startswith("budget: ") and "less than an epoch" in history[-1]["stop"]
    summary = (result.run_dir / "summary.txt").read_text()
    assert "stage 'all' skipped: run.budget is spent" in summary


def test_train_with_a_budget_plans_the_run_and_says_so(colour_folder, tmp_path):
    stages = [
        {"name": "head", "epochs": 2, "freeze": "backbone", "lr": 0.05},
        {"name": "finetune", "epochs": 2, "freeze": "top:1", "lr": 0.01},
    ]
    recipe = tiny_recipe(colour_folder, tmp_path / "runs", stages=stages, run={"budget": "2m"})
    result = headstart.train(recipe, quiet=True)
    summary = (result.run_dir / "summary.txt").read_text()
    assert "budget: 2m, spent " in summary
    assert "plan: headstart_cnn top:1..top:2 fine-tuning" in summary  # the deepest the tiny CNN has, fitting easily
    assert "considered: headstart_cnn top:1..top:2 fine-tuning" in summary and "head only" in summary
    # Fine-tuning goes one block deeper a stage, each stage from the best weights so far.
    saved = yaml.safe_load((result.run_dir / "recipe.yaml").read_text())
    assert [(s["name"], s["freeze"]) for s in saved["stages"]] == [
        ("head", "backbone"),
        ("finetune", "top:1"),
        ("finetune-top2", "top:2"),
    ]
    assert saved["run"]["budget"].endswith("s")
    assert {row["stage"] for row in read_history(result.run_dir)} == {"head", "finetune", "finetune-top2"}


def test_a_budget_below_the_cheapest_plan_or_unreadable_is_a_one_line_error(colour_folder, tmp_path, capsys):
    err = one_line_error(capsys, ["train", str(colour_folder), "--budget", "0.001s", "--out", str(tmp_path / "r")])
    assert "the cheapest plan, tf_efficientnet_lite0 head only" in err and "give at least that" in err
    assert not (tmp_path / "r").exists()
    err = one_line_error(capsys, ["train", str(colour_folder), "--budget", "ten minutes", "--out", str(tmp_path)])
    assert "write a time like 90s, 10m, 1h" in err


def test_several_backbones_are_probed_and_the_best_planned_first_unless_the_probe_would_not_fit(
    colour_folder, tmp_path, monkeypatch
):
    from headstart.config.recipe import Recipe
    from headstart.experiments import budget

    recipe = Recipe.from_dict(tiny_recipe(colour_folder, tmp_path / "runs"))  # its backbone: headstart_cnn
    costed = {
        "headstart_cnn": [budget.Plan("headstart_cnn", 1, 50.0), budget.Plan("headstart_cnn", 0, 10.0)],
        "other": [budget.Plan("other", 1, 80.0), budget.Plan("other", 0, 20.0)],
    }
    monkeypatch.setattr(budget, "probe_scores", lambda recipe, backbones, quiet: {"other": 0.9, "headstart_cnn": 0.8})
    ranked = budget.ranked_plans(recipe, costed, left=1000.0, val_images=1000, quiet=True)
    assert [(p.backbone, p.depth, p.score) for p in ranked] == [
        ("other", 1, 0.9),
        ("other", 0, 0.9),
        ("headstart_cnn", 1, 0.8),
        ("headstart_cnn", 0, 0.8),
    ]
    # Probing costs both head-only passes (30 s) and then the dearest head-only plan must still fit (20 s): 45 s is short.
    monkeypatch.setattr(budget, "probe_scores", lambda *args: (_ for _ in ()).throw(AssertionError("probed")))
    assert budget.ranked_plans(recipe, costed, left=45.0, val_images=1000, quiet=True) == costed["headstart_cnn"]


def test_another_backbone_replaces_the_recipes_only_when_its_probe_beats_it_by_more_than_noise():
    from headstart.experiments.budget import trusted_order

    scores = {"lite2": 0.900, "lite0": 0.892, "lite1": 0.85}  # best first, as probe_scores returns them
    # 120 val images: one standard error of 0.892 is 0.028, and lite2 is ahead by one image (0.008).
    assert trusted_order(scores, "lite0", val_images=120) == ["lite0", "lite2", "lite1"]
    # 10,000 val images: the standard error is 0.003, and the same lead is real.
    assert trusted_order(scores, "lite0", val_images=10000) == ["lite2", "lite0", "lite1"]
    assert trusted_order({"lite1": 1.0, "lite0": 1.0}, "lite0", val_images=25) == ["lite0", "lite1"]  # a tie


@pytest.mark.slow  # two members trained, one at 176 px
def test_a_budget_that_fits_every_installed_backbone_trains_their_ensemble(
    colour_folder, tmp_path, monkeypatch, capsys
):
    from headstart.cli import main
    from headstart.experiments import budget

    # Two installed backbones (random init here; the packaged Lite0/1/2 in use) with different input sizes.
    monkeypatch.setattr(budget, "candidate_backbones", lambda recipe: ["headstart_cnn", "resnet10t"])
    monkeypatch.setattr(budget, "probe_scores", lambda *args: (_ for _ in ()).throw(AssertionError("probed")))
    stages = [
        {"name": "head", "epochs": 3, "freeze": "backbone", "lr": 0.05},
        {"name": "finetune", "epochs": 2, "freeze": "top:1", "lr": 0.01},
    ]
    data = {"test_fraction": 0.25}
    recipe = tiny_recipe(colour_folder, tmp_path / "runs", data=data, stages=stages, run={"budget": "10m"})
    recipe["model"]["weights"] = "none"
    result = headstart.train(recipe, quiet=True)
    run = result.run_dir
    summary = (run / "summary.txt").read_text()
    assert "plan: ensemble of headstart_cnn, resnet10t, top:1 fine-tuning each" in summary
    assert "considered: ensemble of" in summary and "headstart_cnn head only" in summary
    members = json.loads((run / "ensemble.json").read_text())["members"]
    assert members == ["members/headstart_cnn", "members/resnet10t"]
    sizes = [yaml.safe_load((run / m / "recipe.yaml").read_text())["data"]["image_size"] for m in members]
    assert sizes[0] == 16 and sizes[1] is None  # each member at its own input size
    assert result.test is not None and result.test["images"] == 9 and 0 <= result.test["acc"] <= 1
    # The folder is one model: load, predict and export read it so.
    images = sorted(str(p) for p in colour_folder.rglob("*.png"))[::6]
    predictor = headstart.load(run)
    assert predictor.preprocessing["image_size"] == 176  # the largest member's; the smaller one resizes inside
    probabilities = predictor.outputs_of(images)[0]
    assert torch.allclose(probabilities.sum(1), torch.ones(len(images)), atol=1e-5)
    assert main(["export", str(run), "--format", "export"]) == 0
    exported = headstart.load(run / "export" / "model.pt2").outputs_of(images)[0]
    assert torch.allclose(exported, probabilities, atol=1e-4)
    assert main(["predict", str(run), images[0]]) == 0 and images[0] in capsys.readouterr().out
    err = one_line_error(capsys, ["compare", str(run)])
    assert "is an ensemble (train --budget)" in err and "members" in err
    assert main(["evaluate", str(run), str(colour_folder)]) == 0 and (run / "confusion-test.png").is_file()
    err = one_line_error(capsys, ["predict", str(run), images[0], "--explain", str(tmp_path / "heat")])
    assert "an ensemble (train --budget) is explained one model at a time" in err
    held_out = predictor.evaluate(colour_folder)  # the run's own data: its test split, as for one model
    assert held_out.count == 9 and held_out.accuracy == pytest.approx(result.test["acc"])
    # Unknown images: a threshold on the members' averaged scores, fitted on val, flags images unlike the classes.
    fitted = json.loads((run / "ensemble.json").read_text())["unknown"]
    assert fitted["method"].startswith("mean of the members'") and fitted["threshold"] > 0
    assert f"threshold {fitted['threshold']:.4g} flags" in summary
    assert predictor.unknown is not None and predictor.unknown.threshold == fitted["threshold"]
    own = predictor.predict(images)
    foreign = predictor.predict([Image.new("RGB", (24, 24), c) for c in ((255, 255, 0), (0, 0, 0), (255, 255, 255))])
    assert sum(p.unknown for p in own) <= 1 and all(p.unknown for p in foreign)
    # An exported file of the ensemble returns the same score and flags the same images.
    foreign_images = [Image.new("RGB", (24, 24), c) for c in ((255, 255, 0), (0, 0, 0), (255, 255, 255))]
    assert main(["export", str(run), "--format", "onnx"]) == 0
    described = json.loads((run / "export" / "model.onnx.json").read_text())
    assert described["unknown"]["threshold"] == fitted["threshold"] and "unknown_score" in described["output"]
    exported = headstart.load(run / "export" / "model.onnx")
    assert exported.unknown is not None and exported.unknown.threshold == fitted["threshold"]
    for batch in (images, foreign_images):
        ours, theirs = predictor.predict(batch), exported.predict(batch)
        assert [p.unknown for p in theirs] == [p.unknown for p in ours]
        assert [p.unknown_score for p in theirs] == pytest.approx([p.unknown_score for p in ours], rel=1e-3)


@pytest.mark.slow  # two members trained, one of them twice over
def test_an_interrupted_ensemble_resumes_keeping_its_finished_members(colour_folder, tmp_path, monkeypatch):
    from headstart.experiments import budget, budget_ensemble

    monkeypatch.setattr(budget, "candidate_backbones", lambda recipe: ["headstart_cnn", "test_efficientnet"])
    stages = [
        {"name": "head", "epochs": 2, "freeze": "backbone", "lr": 0.05},
        {"name": "finetune", "epochs": 2, "freeze": "top:1", "lr": 0.01},
    ]
    recipe = tiny_recipe(colour_folder, tmp_path / "runs", stages=stages, run={"budget": "10m"})
    recipe["model"]["weights"] = "none"
    epochs = []

    def ctrl_c_in_the_second_member(done, row):
        epochs.append(row["stage"])
        if len(epochs) == 6:  # the first member's four epochs, then two of the second's
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        headstart.train(recipe, quiet=True, on_epoch=ctrl_c_in_the_second_member)
    run = Path(caught.value.run_dir)  # the ensemble's folder, not the member that was training
    first, second = run / "members" / "headstart_cnn", run / "members" / "test_efficientnet"
    assert (run / "ensemble-plan.json").is_file() and not (run / "ensemble.json").exists()
    first_weights = (first / "best.pt").read_bytes()
    assert len(read_history(second)) == 2

    epochs.clear()
    score = budget_ensemble.score_ensemble
    monkeypatch.setattr(budget_ensemble, "score_ensemble", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt) as caught:  # Ctrl-C again, once both members are trained
        headstart.train(resume=run, quiet=True, on_epoch=lambda done, row: epochs.append(row["stage"]))
    assert Path(caught.value.run_dir) == run and not (run / "ensemble.json").exists()
    assert epochs == ["finetune", "finetune"]  # only the second member's last two epochs ran
    assert (first / "best.pt").read_bytes() == first_weights and len(read_history(second)) == 4
    monkeypatch.setattr(budget_ensemble, "score_ensemble", score)
    result = headstart.train(resume=run, quiet=True)  # nothing left to train: the ensemble is scored
    members = json.loads((run / "ensemble.json").read_text())["members"]
    assert members == ["members/headstart_cnn", "members/test_efficientnet"]
    summary = (run / "summary.txt").read_text()
    assert "ensemble of 2 models" in summary
    # The plan chosen before the interruption, and the time both sessions took, planning included.
    assert "plan: ensemble of headstart_cnn, test_efficientnet" in summary and "considered: " in summary
    assert "budget: 10m, spent " in summary and " over 3 sessions (planning " in summary
    again = headstart.train(resume=run, quiet=True)  # finished: nothing runs, the same result
    assert again.history == result.history and again.run_dir == result.run_dir


def test_the_ensembles_unknown_score_is_its_members_scores_over_their_thresholds_averaged():
    from torch import nn

    from headstart.deploy.ensemble import MeanProbabilities
    from headstart.tasks.registry import task_named

    class Fixed(nn.Module):  # a member with a detector: (logits, score) whatever the image
        def __init__(self, logits: list[float], score: float):
            super().__init__()
            self.logits, self.score = torch.tensor([logits]), torch.tensor([score])

        def forward(self, x):
            return self.logits.expand(len(x), -1), self.score.expand(len(x))

    members = [Fixed([2.0, 0.0], 2.0), Fixed([0.0, 2.0], 9.0)]
    log_mean, score = MeanProbabilities(members, task_named("single-label"), thresholds=[4.0, 3.0])(
        torch.zeros(2, 3, 8, 8)
    )
    assert torch.allclose(score, torch.tensor([1.75, 1.75]))  # (2/4 + 9/3) / 2: past the members' average threshold
    assert torch.allclose(log_mean.exp(), torch.full((2, 2), 0.5))  # the mean of the two mirrored softmaxes
