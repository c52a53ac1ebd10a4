"""StageBuilder: which path each stage's batches take, and the loop it builds over them."""

import pytest
import torch

from headstart.config.recipe import Recipe
from headstart.training.optim import Schedule, build_optimizer
from headstart.training.session import prepare
from headstart.training.stagepath import StageBuilder, cpu_compiler_found
from tests.conftest import tiny_recipe


@pytest.fixture
def session(colour_folder, tmp_path):
    stages = [
        {"name": "head", "epochs": 1, "freeze": "backbone", "lr": 0.05},
        {"name": "all", "epochs": 1, "freeze": "none", "lr": 0.01},
        {"name": "cutmix", "epochs": 1, "freeze": "backbone", "lr": 0.01, "cutmix": 1.0},
    ]
    return prepare(Recipe.from_dict(tiny_recipe(colour_folder, tmp_path / "runs", stages=stages)))


def test_a_frozen_backbone_trains_the_head_on_cached_features(session):
    build = StageBuilder(session)
    session.plans[0].apply(session.model)
    path = build.path(0, session.plans[0])
    assert path.name == "cached-features" and path.module is not session.model
    assert not any(p.requires_grad for p in session.model.backbone.parameters())
    inputs, labels = next(iter(path.train_batches(1)))
    assert len(labels) == len(inputs) and inputs.shape[1:] != (3, 16, 16)  # stored outputs, not images
    assert path.batches_per_epoch == sum(1 for _ in path.train_batches(1))


def test_an_unfrozen_stage_and_cutmix_take_the_full_model(session):
    build = StageBuilder(session)
    for index in (1, 2):
        session.plans[index].apply(session.model)
        path = build.path(index, session.plans[index])
        assert path.name == "full-model" and path.module is session.model
        inputs, _ = next(iter(path.train_batches(1)))
        assert inputs.shape[1:] == (3, 16, 16)
    assert "CutMix" in path.reason


def test_the_loop_steps_the_trained_part_and_sees_every_batch_loss(session):
    build = StageBuilder(session)
    stage, plan = session.recipe.stages[0], session.plans[0]
    plan.apply(session.model)
    path = build.path(0, plan)
    optimizer = build_optimizer(session.model, stage)
    schedule = Schedule(optimizer, stage, build.steps_per_epoch(path))
    seen = []
    loop = build.loop(
        stage, path, optimizer, schedule, accumulate=1, on_step=lambda i, loss: seen.append(loss) and False
    )
    before = {k: v.clone() for k, v in session.model.head.state_dict().items()}
    backbone = {k: v.clone() for k, v in session.model.backbone.state_dict().items()}
    path.set_train_mode()
    loss, accuracy = loop.epoch(path.train_batches(1), path.batches_per_epoch, 0, "test")
    assert len(seen) == path.batches_per_epoch and loop.accumulate == 1 and 0 <= accuracy <= 1
    assert any(not torch.equal(before[k], v) for k, v in session.model.head.state_dict().items())
    assert all(torch.equal(backbone[k], v) for k, v in session.model.backbone.state_dict().items())


def test_compile_auto_takes_a_cached_stage_only_past_its_own_threshold_and_only_on_a_cpu(monkeypatch):
    from headstart.core.hardware import Hardware
    from headstart.training import stagepath

    cpu = Hardware(torch.device("cpu"), "fp32", True)
    gpu = Hardware(torch.device("cuda"), "bf16", True)
    many = stagepath.CPU_COMPILE_MIN_CACHED_IMAGES
    monkeypatch.setattr(stagepath, "cpu_compiler_found", lambda: True)
    assert stagepath.should_compile("auto", cpu, many, many)
    assert not stagepath.should_compile("auto", cpu, many - 1, many)
    assert not stagepath.should_compile("auto", gpu, many, many)
    assert stagepath.should_compile("on", gpu, 1, many) and not stagepath.should_compile("off", cpu, many, many)
    # Without a C++ compiler inductor would fail at the first step: the stage trains eagerly instead.
    monkeypatch.setattr(stagepath, "cpu_compiler_found", lambda: False)
    assert not stagepath.should_compile("on", cpu, many, many)


def test_a_cached_stage_that_trains_backbone_layers_compiles_and_a_head_does_not(colour_folder, tmp_path, caplog):
    import logging

    import headstart

    if not cpu_compiler_found():
        pytest.skip("no C++ compiler for torch.compile on this machine")
    stages = [
        {"name": "head", "epochs": 1, "freeze": "backbone", "lr": 0.05},
        {"name": "top", "epochs": 2, "freeze": "top:1", "lr": 0.01},
    ]
    recipe = tiny_recipe(colour_folder, tmp_path / "runs", stages=stages, run={"compile": "on"})
    with caplog.at_level(logging.INFO, logger="headstart"):
        result = headstart.train(recipe)  # not quiet: the INFO lines are what is checked
    assert [row["path"] for row in result.history] == ["cached-features", *["cached-features+compiled"] * 2]
    # Said before the first steps stand still while compiling.
    assert sum("torch.compile: this stage's first steps compile" in r.message for r in caplog.records) == 1
    assert all(torch.isfinite(torch.tensor(row["val_loss"])) for row in result.history)


def test_lr_find_builds_every_stage_eagerly_whatever_run_compile_says(colour_folder, tmp_path):
    stages = [
        {"name": "head", "epochs": 1, "freeze": "backbone", "lr": 0.05},
        {"name": "top", "epochs": 1, "freeze": "top:1", "lr": 0.01},
        {"name": "all", "epochs": 1, "freeze": "none", "lr": 0.01},
    ]
    recipe = tiny_recipe(colour_folder, tmp_path / "runs", stages=stages, run={"compile": "on"})
    session = prepare(Recipe.from_dict(recipe))
    for compiling in (True, False):
        build = StageBuilder(session, compiling=compiling)
        paths = []
        for index, plan in enumerate(session.plans):
            plan.apply(session.model)
            paths.append(build.path(index, plan))
        # With compiling allowed, 'on' compiles what trains backbone layers (with a C++ compiler here).
        expected = [False, True, True] if compiling and cpu_compiler_found() else [False, False, False]
        assert [path.compile for path in paths] == expected


def test_a_compile_is_weighed_against_the_images_each_data_parallel_process_trains_on(session):
    import dataclasses

    images = len(session.data.train)
    assert StageBuilder(session).images_per_process(10) == 10 * images
    session.group = dataclasses.replace(session.group, rank=0, world=2)  # each process steps through half
    assert StageBuilder(session).images_per_process(10) == 10 * images // 2
