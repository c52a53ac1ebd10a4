"""The training loop's hooks: early stopping and restoring, weight EMA, mixup targets, gradient accumulation."""

import copy

import pytest
import torch
from torch import nn

import headstart
from headstart.config.recipe import Recipe, Stage
from headstart.core.checkpoint import load_checkpoint
from headstart.core.hardware import pick_hardware
from headstart.training.loop import Loop, SoftTargets, weight_average
from headstart.training.optim import Schedule
from tests.conftest import tiny_recipe


def test_epochs_auto_stops_at_the_patience_restores_the_best_and_the_next_stage_starts_there(colour_folder, tmp_path):
    stages = [
        {
            "name": "head",
            "epochs": "auto",
            "max_epochs": 40,
            "freeze": "backbone",
            "lr": 0.05,
            "early_stop": {"patience": 2},
        },
        # A learning rate too small to move the weights: its first score shows where the stage started.
        {"name": "still", "epochs": 1, "freeze": "backbone", "lr": 1e-12, "weight_decay": 0.0},
    ]
    recipe = tiny_recipe(colour_folder, tmp_path / "runs", stages=stages, run={"monitor": "val_acc"})
    result = headstart.train(recipe, quiet=True)
    head = [row for row in result.history if row["stage"] == "head"]
    first_best = max(range(len(head)), key=lambda i: (head[i]["val_acc"], -i))
    # Stopped exactly `patience` epochs after the (first) best, and said so on its last row.
    assert len(head) == first_best + 1 + 2 < 40
    assert head[-1]["stop"].startswith("early stop")
    assert all("stop" not in row for row in head[:-1])
    # The next stage started from the best epoch's weights, not the last epoch's.
    still = next(row for row in result.history if row["stage"] == "still")
    assert still["val_loss"] == pytest.approx(head[first_best]["val_loss"], rel=1e-5)
    assert still["val_loss"] != pytest.approx(head[-1]["val_loss"], rel=1e-5)
    best = load_checkpoint(result.run_dir / "best.pt")
    assert (best.stage, best.epoch) == ("head", first_best + 1)


def test_a_stage_without_early_stop_keeps_its_last_weights(colour_folder, tmp_path):
    stages = [{"name": "head", "epochs": 4, "freeze": "backbone", "lr": 0.05}]
    result = headstart.train(tiny_recipe(colour_folder, tmp_path / "runs", stages=stages), quiet=True)
    assert [row.get("stop") for row in result.history] == [None, None, None, "ran its 4 epochs"]


def test_epochs_auto_without_a_rule_gets_the_default_early_stop():
    stage = Stage(epochs="auto")
    assert stage.early_stop is not None and stage.epoch_budget == stage.max_epochs
    assert Stage(epochs=3).epoch_budget == 3
    with pytest.raises(headstart.HeadstartError, match="epochs"):
        Recipe.from_dict({"stages": [{"epochs": "forever"}]})


def test_ema_weights_are_scored_saved_and_differ_from_the_raw_ones(colour_folder, tmp_path):
    recipe = tiny_recipe(colour_folder, tmp_path / "runs", run={"ema_decay": 0.9})
    result = headstart.train(recipe, quiet=True)
    for name in ("best.pt", "last.pt"):
        checkpoint = load_checkpoint(result.run_dir / name)
        ema, raw = checkpoint.model, checkpoint.raw_model
        assert ema.keys() == raw.keys()
        assert any(not torch.equal(ema[k], raw[k]) for k in ema if ema[k].is_floating_point())


def test_ema_warms_up_so_a_short_run_averages_recent_weights_not_the_initial_ones():
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    initial = copy.deepcopy(model)
    loop = linear_loop(model, accumulate=1)
    loop.ema, loop.ema_of = weight_average(model, 0.9999), model
    batches = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(40)]
    loop.epoch(batches, len(batches), 0, "test")
    for averaged, raw, start in zip(loop.ema.module.parameters(), model.parameters(), initial.parameters()):
        # Without warm-up, 40 steps at 0.9999 leave the average 99.6 % initial weights.
        assert (averaged - raw).norm() < (averaged - start).norm()
        assert not torch.equal(averaged, raw)


def test_the_ema_of_the_trained_part_equals_timms_whole_model_ema_across_a_stage_change():
    from timm.utils import ModelEmaV3

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    ours, timms = weight_average(model, 0.9), ModelEmaV3(model, decay=0.9, use_warmup=True)
    step = 0
    # A head stage (conv and BatchNorm frozen), then everything, then the head frozen again: its
    # average still lags the trained weights, so it must keep moving as in timm's whole-model EMA.
    for frozen in ((0, 1), (), (2,)):
        for index, p in enumerate(model.parameters()):
            p.requires_grad = index // 2 not in frozen
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
        for _ in range(3):
            model.train()
            model(torch.randn(8, 3, 6, 6)).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            ours.update(model, step=step)
            timms.update(model, step=step)
    for (name, a), b in zip(ours.module.state_dict().items(), timms.module.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name


def test_mixup_targets_are_soft_and_sum_to_one():
    torch.manual_seed(0)
    mix = SoftTargets(mixup=0.4, cutmix=0.0, smoothing=0.1, classes=5)
    features, labels = torch.randn(8, 16), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    mixed, targets = mix(features.clone(), labels)
    assert targets.shape == (8, 5)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    assert (targets.max(1).values < 1).all()  # no row is a hard one-hot target
    assert not torch.allclose(mixed, features)  # the inputs were mixed too
    # An odd batch cannot be paired: smoothed one-hot targets, still summing to one.
    _, odd = mix(features[:5].clone(), labels[:5])
    assert torch.allclose(odd.sum(1), torch.ones(5)) and odd.argmax(1).tolist() == labels[:5].tolist()


def test_mixup_trains_on_cached_features_and_cutmix_takes_the_full_path(colour_folder, tmp_path):
    stages = [{"name": "head", "epochs": 2, "freeze": "backbone", "lr": 0.05, "mixup": 0.4}]
    mixed = headstart.train(tiny_recipe(colour_folder, tmp_path / "a", stages=stages), quiet=True)
    assert {row["path"] for row in mixed.history} == {"cached-features"}
    stages[0].update(mixup=0.0, cutmix=1.0)
    cut = headstart.train(tiny_recipe(colour_folder, tmp_path / "b", stages=stages), quiet=True)
    assert {row["path"] for row in cut.history} == {"full-model"}
    assert "CutMix" in (cut.run_dir / "summary.txt").read_text()


def linear_loop(model: nn.Module, accumulate: int) -> Loop:
    stage = Stage(lr=0.1, optimizer="sgd", momentum=0.0, weight_decay=0.0, schedule="constant")
    optimizer = torch.optim.SGD(model.parameters(), lr=stage.lr)
    return Loop(
        model,
        optimizer,
        Schedule(optimizer, stage, 1),
        nn.CrossEntropyLoss(),
        pick_hardware("cpu", "fp32", False),
        accumulate=accumulate,
    )


def test_accumulating_k_batches_equals_one_k_times_larger_batch():
    torch.manual_seed(0)
    inputs, labels = torch.randn(16, 6), torch.randint(0, 3, (16,))
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))  # no BatchNorm: batches are independent
    accumulated, whole = copy.deepcopy(model), copy.deepcopy(model)
    small = [(inputs[i : i + 4], labels[i : i + 4]) for i in range(0, 16, 4)]
    linear_loop(accumulated, accumulate=4).epoch(small, len(small), 0, "test")
    linear_loop(whole, accumulate=1).epoch([(inputs, labels)], 1, 0, "test")
    for a, b, before in zip(accumulated.parameters(), whole.parameters(), model.parameters()):
        assert not torch.equal(a, before)  # one step was taken
        assert torch.allclose(a, b, atol=1e-6)


def test_a_short_last_group_is_averaged_over_its_own_batches():
    torch.manual_seed(1)
    inputs, labels = torch.randn(12, 6), torch.randint(0, 3, (12,))
    model = nn.Linear(6, 3)
    accumulated, reference = copy.deepcopy(model), copy.deepcopy(model)
    batches = [(inputs[i : i + 4], labels[i : i + 4]) for i in range(0, 12, 4)]
    # accumulate 2 over 3 batches: one step over batches 1-2, one over batch 3 alone.
    linear_loop(accumulated, accumulate=2).epoch(batches, 3, 0, "test")
    loop = linear_loop(reference, accumulate=1)
    loop.epoch([(inputs[:8], labels[:8]), (inputs[8:], labels[8:])], 2, 0, "test")
    for a, b in zip(accumulated.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_head_stage_without_augmentation_is_cached_when_the_data_augments(colour_folder, tmp_path):
    stages = [
        {"name": "head", "epochs": 1, "freeze": "backbone", "lr": 0.05, "augment": "none"},
        {"name": "all", "epochs": 1, "freeze": "none", "lr": 0.01},
    ]
    recipe = tiny_recipe(colour_folder, tmp_path / "runs", stages=stages, data={"augment": "trivialaugment"})
    result = headstart.train(recipe, quiet=True)
    assert [row["path"] for row in result.history] == ["cached-features", "full-model"]


@pytest.mark.parametrize("stopped", ["between stages", "inside a stage"])
def test_resume_continues_early_stopping_ema_and_accumulation_exactly(colour_folder, tmp_path, monkeypatch, stopped):
    stages = [
        {
            "name": "head",
            "epochs": "auto",
            "max_epochs": 30,
            "freeze": "backbone",
            "lr": 0.05,
            "early_stop": {"patience": 2},
        },
        {"name": "all", "epochs": 6, "freeze": "none", "lr": 0.01, "early_stop": {"patience": 2}},
    ]
    run = {"monitor": "val_acc", "ema_decay": 0.5, "accumulate": 2, "deterministic": True}
    recipe = tiny_recipe(colour_folder, tmp_path / "runs", stages=stages, run={**run, "name": "reference"})
    reference = headstart.train(recipe, quiet=True)
    head_epochs = sum(row["stage"] == "head" for row in reference.history)
    # Inside: after two epochs of the second stage, so its patience count is under way.
    finished = head_epochs if stopped == "between stages" else head_epochs + 2

    real, calls = Loop.epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > finished:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(Loop, "epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        headstart.train({**recipe, "run": {**recipe["run"], "name": "killed"}}, quiet=True)
    monkeypatch.setattr(Loop, "epoch", real)
    resumed = headstart.train(resume=tmp_path / "runs" / "killed", quiet=True)
    assert len(resumed.history) == len(reference.history)
    for got, want in zip(resumed.history, reference.history):
        for key, value in want.items():
            if key == "seconds":
                continue
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (got["stage"], got["epoch"], key)
            else:
                assert got[key] == value, key


def test_every_recipe_optimizer_name_maps_to_a_timm_optimizer():
    from typing import get_args

    from timm.optim import list_optimizers

    from headstart.training.optim import OPTIMIZERS

    assert set(OPTIMIZERS) == set(get_args(Stage.model_fields["optimizer"].annotation))
    assert set(OPTIMIZERS.values()) <= set(list_optimizers())


def test_a_one_epoch_stage_ran_its_1_epoch():
    from headstart.training.hooks import EarlyStopping

    one = EarlyStopping(Stage(name="head", epochs=1), "val_loss")
    assert one.after_epoch({"val_loss": 1.0}, 1) == "ran its 1 epoch"
    patient = EarlyStopping(Stage(name="all", epochs="auto", early_stop={"patience": 1}), "val_loss")
    patient.after_epoch({"val_loss": 1.0}, 1)
    assert patient.after_epoch({"val_loss": 2.0}, 2) == "early stop: val_loss did not improve for 1 epoch"
