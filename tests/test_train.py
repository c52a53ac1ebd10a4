"""Whole runs on tiny data: files written, accuracy above chance, the cache exact, NaN stopped, inference."""

import json
import shutil

import pytest
import torch

import headstart
from headstart.config.recipe import ModelConfig, Recipe
from headstart.core.errors import HeadstartError
from headstart.core.hardware import pick_hardware
from headstart.data.images import prepare_data
from headstart.experiments.sweep import SweepSpec, expand, is_sweep_file, read_sweep_file, seed_list
from headstart.model.build import build_model
from headstart.model.cut import find_cut, head_split
from headstart.model.freeze import plan_freeze
from headstart.training.features import FeatureCache
from tests.conftest import CLASS_COLOURS, tiny_recipe, write_images

RUN_FILES = ["recipe.yaml", "history.csv", "history.json", "curves.png", "best.pt", "last.pt", "summary.txt"]


def test_staged_run_writes_folder_and_learns(colour_folder, tmp_path):
    result = headstart.train(tiny_recipe(colour_folder, tmp_path / "runs"), quiet=True)
    for name in RUN_FILES:
        assert (result.run_dir / name).is_file(), name
    assert (result.run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((result.run_dir / "history.json").read_text())
    assert [(r["stage"], r["epoch"]) for r in history] == [("head", 1), ("head", 2), ("all", 1), ("all", 2), ("all", 3)]
    assert history[0]["path"] == "cached-features" and history[2]["path"] == "full-model"
    assert result.final["val_acc"] >= 0.8  # three colour classes: chance is 0.33
    saved = Recipe.from_yaml(result.run_dir / "recipe.yaml")
    assert saved.model.weights == "none"  # resolved, not left empty
    assert "best: epoch" in (result.run_dir / "summary.txt").read_text()


@pytest.mark.slow
def test_packaged_default_backbone_runs_with_bf16_and_channels_last(colour_folder, tmp_path):
    recipe = tiny_recipe(
        colour_folder,
        tmp_path / "runs",
        model={"backbone": "tf_efficientnet_lite0", "weights": "package", "backbone_args": {}},
        data={"image_size": 32},
        run={"precision": "auto", "channels_last": True},
        stages=[
            {"name": "head", "epochs": 1, "freeze": "backbone", "lr": 0.01},
            {"name": "top", "epochs": 1, "freeze": "blocks.5", "bn": "train", "optimizer": "sgd", "lr": 0.001},
        ],
    )
    result = headstart.train(recipe, quiet=True)
    assert len(result.history) == 2 and result.history[1]["path"] == "full-model"
    assert result.final["val_acc"] > 0.5


def test_cached_features_equal_the_uncached_forward(colour_folder):
    recipe = Recipe.from_dict(tiny_recipe(colour_folder, "/tmp/unused"))
    hw = pick_hardware("cpu", "fp32", channels_last=False)
    prep = {"image_size": 16, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}
    data = prepare_data(recipe.data, prep)
    model = build_model(recipe.model, len(data.split.classes), 16).eval()
    head_only = find_cut(model, plan_freeze(model, "backbone", "frozen"), 16)
    cache = FeatureCache.for_recipe(model, data, hw, recipe)
    cache.use(head_only)
    cached = torch.cat([x for x, _ in cache.val_batches()])
    with torch.no_grad():
        direct = model.head[: head_split(model)](
            model.features(torch.stack([data.val[i][0] for i in range(len(data.val))]))
        )
    assert torch.allclose(cached, direct, atol=1e-6)
    assert cache.reused is False
    # A second cache for the same recipe and weights finds the stored entry.
    again = FeatureCache.for_recipe(model, data, hw, recipe)
    again.use(head_only)
    assert torch.equal(torch.cat([x for x, _ in again.val_batches()]), cached) and again.reused
    # Training the prefix invalidates the cache: the next read recomputes from the new weights.
    with torch.no_grad():
        model.backbone.blocks[0][0].weight.mul_(2)
    recomputed = torch.cat([x for x, _ in cache.val_batches()])
    assert not torch.allclose(recomputed, cached)


def test_nan_loss_stops_with_stage_epoch_and_keeps_files(colour_folder, tmp_path):
    recipe = tiny_recipe(
        colour_folder,
        tmp_path / "runs",
        stages=[
            {"name": "ok", "epochs": 1, "freeze": "none", "lr": 0.01},
            {"name": "wild", "epochs": 2, "freeze": "none", "optimizer": "sgd", "lr": 1e12},
        ],
    )
    with pytest.raises(headstart.HeadstartError, match=r"stage 'wild', epoch 1, step \d+; the learning rate"):
        headstart.train(recipe, quiet=True)
    run_dir = tmp_path / "runs" / "tiny"
    assert (run_dir / "best.pt").is_file() and (run_dir / "curves.png").is_file()
    assert len(json.loads((run_dir / "history.json").read_text())) == 1


@pytest.mark.slow
def test_predictor_predicts_and_evaluates(colour_folder, tmp_path):
    result = headstart.train(tiny_recipe(colour_folder, tmp_path / "runs"), quiet=True)
    predictor = headstart.load(result.run_dir)
    top = predictor.predict([colour_folder / "red" / "000.png"], top_k=2)
    assert len(top[0]) == 2 and top[0][0][0] == "red" and top[0][0][1] > top[0][1][1]
    # The run's own class-folder tree: only its held-out val split (1 of 12 per class) is scored.
    evaluation = predictor.evaluate(colour_folder, confusion_png=tmp_path / "cm.png")
    assert evaluation.count == evaluation.confusion.sum() == 3
    assert evaluation.notes[0].startswith("scored the run's held-out val split: 3 of the 36 images")
    assert (tmp_path / "cm.png").is_file()
    assert {row["class"] for row in evaluation.per_class} == {"red", "green", "blue"}
    # A copy elsewhere: everything is scored, and the training files are found by content.
    copy = tmp_path / "copy"
    shutil.copytree(colour_folder, copy)
    evaluation = predictor.evaluate(copy)
    assert evaluation.accuracy > 0.8 and evaluation.count == 36
    assert evaluation.notes == [
        "warning: 33 of the 36 images scored are the run's training images (by path or content): "
        "the score is optimistic; evaluate on images the run never saw"
    ]


def test_layer_decay_and_body_lr_groups(colour_folder):
    from headstart.config.recipe import Stage
    from headstart.training.optim import param_groups

    recipe = Recipe.from_dict(tiny_recipe(colour_folder, "/tmp/unused"))
    model = build_model(recipe.model, 3, 16)
    groups = param_groups(model, Stage(freeze="none", lr=0.1, body_lr_mult=0.1))
    assert sorted({round(g["lr"], 6) for g in groups}) == [0.01, 0.1]
    model = build_model(
        recipe.model.model_copy(update={"backbone": "test_efficientnet", "backbone_args": {}, "weights": "none"}), 3, 32
    )
    groups = param_groups(model, Stage(freeze="none", lr=0.1, layer_decay=0.5))
    assert len({round(g["lr"], 8) for g in groups}) > 2 and max(g["lr"] for g in groups) == pytest.approx(0.1)


RECIPE_FILES = sorted((__import__("pathlib").Path(__file__).parent.parent / "recipes").glob("*.yaml"))
ARTICLE_RECIPES = [p for p in RECIPE_FILES if not is_sweep_file(p)]
ARTICLE_SWEEPS = [p for p in RECIPE_FILES if is_sweep_file(p)]


@pytest.mark.parametrize("path", ARTICLE_SWEEPS, ids=lambda p: p.stem)
def test_article_sweeps_expand_to_valid_recipes(path, tmp_path):
    base, vary, variants, seeds, _ = read_sweep_file(path)
    spec = SweepSpec(base, expand(vary, variants), seed_list(seeds, base.run.seed))
    recipes = [spec.recipe_for(v, s, tmp_path) for v in spec.variants for s in spec.seeds]
    assert len(recipes) == len(spec.variants) * len(spec.seeds) >= 2
    assert len({r.model_dump_json(exclude={"run"}) for r in recipes}) == len(spec.variants)  # each variant differs


@pytest.mark.slow
@pytest.mark.parametrize("path", ARTICLE_RECIPES, ids=lambda p: p.stem)
def test_article_recipes_run_on_small_images(path, colour_folder, tmp_path):
    """Each article's model/freeze/stage setup trains end to end (hub weights replaced by 'none' offline)."""
    import yaml

    values = yaml.safe_load(path.read_text())
    small = 75 if values["model"]["backbone"] == "inception_v3" else 32  # InceptionV3's smallest input
    adapters = values["model"].get("adapters", [])
    values["data"].update(
        path=str(colour_folder),
        image_size=small // 2 if any(a["kind"] == "resize" for a in adapters) else small,
        batch_size=12,
        workers=0,
    )
    if values["model"]["weights"] == "hub":
        values["model"]["weights"] = "none"
    for stage in values["stages"]:
        stage["epochs"] = 1
    values["run"].update(out_dir=str(tmp_path / "runs"))
    result = headstart.train(values, quiet=True)
    assert [row["stage"] for row in result.history] == [stage["name"] for stage in values["stages"]]
    assert (result.run_dir / "best.pt").is_file()


@pytest.mark.parametrize("optimizer", ["sgd", "nesterov", "adam", "adamw"])
@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_schedules_shape_the_learning_rate(optimizer, schedule):
    from headstart.config.recipe import ModelConfig, Stage
    from headstart.training.optim import Schedule, build_optimizer

    model = build_model(ModelConfig(backbone="headstart_cnn", weights="none", backbone_args={"widths": [4]}), 2, 8)
    stage = Stage(freeze="none", optimizer=optimizer, lr=0.1, schedule=schedule, epochs=2)
    opt = build_optimizer(model, stage)
    assert (
        type(opt)
        .__name__.lower()
        .startswith({"sgd": "sgd", "nesterov": "sgd", "adam": "adam", "adamw": "adamw"}[optimizer])
    )
    sched = Schedule(opt, stage, steps_per_epoch=10)
    lrs = []
    for step in range(20):
        lrs.append(sched.lr)
        opt.step()
        sched.after_step(step + 1)
    if schedule == "constant":
        assert set(lrs) == {0.1}
    elif schedule == "cosine":
        assert lrs[0] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.01
    else:  # one-cycle: warm up to the peak, then anneal far below the start
        peak = lrs.index(max(lrs))
        assert 0 < peak < 19 and max(lrs) == pytest.approx(0.1, rel=0.05) and lrs[-1] < lrs[0]


@pytest.mark.slow
def test_label_smoothing_raises_the_loss_floor(colour_folder, tmp_path):
    plain = headstart.train(tiny_recipe(colour_folder, tmp_path / "a"), quiet=True)
    smooth_stages = [
        {"name": "head", "epochs": 2, "freeze": "backbone", "lr": 0.05, "label_smoothing": 0.3},
        {"name": "all", "epochs": 3, "freeze": "none", "lr": 0.01, "label_smoothing": 0.3},
    ]
    smooth = headstart.train(tiny_recipe(colour_folder, tmp_path / "b", stages=smooth_stages), quiet=True)
    assert smooth.final["train_loss"] > plain.final["train_loss"]


@pytest.mark.slow
def test_feature_cache_key_changes_with_every_field(colour_folder):
    """Backbone weights, transform, image size, cut point, dtype, augmentation views, images: each makes a new key."""
    base = Recipe.from_dict(tiny_recipe(colour_folder, "/tmp/unused"))
    prep = {"image_size": 16, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}

    def key(recipe=base, preprocessing=prep, precision="fp32", mutate=None, point="backbone"):
        data = prepare_data(recipe.data, preprocessing)
        torch.manual_seed(0)
        model = build_model(recipe.model, 3, preprocessing["image_size"])
        if mutate:
            mutate(model)
        cache = FeatureCache.for_recipe(model, data, pick_hardware("cpu", precision, False), recipe)
        cache.use(find_cut(model, plan_freeze(model, point, "frozen"), preprocessing["image_size"]))
        return cache.key()

    def scaled(model):
        with torch.no_grad():
            model.backbone.blocks[0][0].weight.mul_(1.01)

    reference = key()
    assert key() == reference
    variants = {
        "weights": key(mutate=scaled),
        "backbone_args": key(
            recipe=base.model_copy(
                update={
                    "model": base.model.model_copy(
                        update={
                            "backbone_args": {
                                "widths": [8, 16],
                                "convs_per_block": 1,
                                "dropout": 0.0,
                                "batch_norm": False,
                            }
                        }
                    )
                }
            )
        ),
        "image size": key(preprocessing={**prep, "image_size": 20}),
        "transform": key(preprocessing={**prep, "mean": (0.4, 0.4, 0.4)}),
        "cut point": key(
            recipe=Recipe.from_dict(
                {**base.to_dict(), "model": {**base.to_dict()["model"], "head": {"kind": "flatten-dense"}}}
            )
        ),
        "dtype": key(precision="bf16"),
        "cut point in the backbone": key(point="blocks.1"),
        "views": key(
            recipe=Recipe.from_dict(
                {**base.to_dict(), "data": {**base.to_dict()["data"], "augment": "light", "feature_views": 2}}
            )
        ),
    }
    for field, value in variants.items():
        assert value != reference, field
    (colour_folder / "red" / "000.png").write_bytes((colour_folder / "blue" / "000.png").read_bytes())
    assert key() != reference, "images"


@pytest.mark.parametrize(
    "backbone, point",
    [
        ("headstart_cnn", "blocks.1"),
        ("test_efficientnet", "blocks.2"),
        ("test_efficientnet", "top:2"),
        ("test_resnet", "layer4"),
    ],
)
def test_cut_inside_the_backbone_is_exact(backbone, point):
    args = {"widths": [8, 16], "convs_per_block": 1} if backbone == "headstart_cnn" else {}
    model = build_model(ModelConfig(backbone=backbone, weights="none", backbone_args=args), 3, 32).eval()
    plan = plan_freeze(model, point, "frozen")
    cut = find_cut(model, plan, 32)
    assert cut is not None and cut.name.startswith("backbone.")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(cut.suffix(cut.prefix(x)), model(x), atol=1e-5)
    frozen = {n for n, _ in model.named_parameters() if n in plan.frozen_params}
    prefix_params = {id(p) for p in cut.prefix.parameters()}
    assert {id(p) for n, p in model.named_parameters() if n in frozen} == prefix_params


def test_no_cut_where_forward_is_not_a_chain():
    model = build_model(ModelConfig(backbone="test_vit", weights="none"), 3, 160)
    assert find_cut(model, plan_freeze(model, "blocks.1", "frozen"), 160) is None


def test_stage_with_frozen_lower_blocks_trains_on_cached_prefix(colour_folder, tmp_path):
    stages = [{"name": "top", "epochs": 3, "freeze": "blocks.1", "lr": 0.05}]
    result = headstart.train(tiny_recipe(colour_folder, tmp_path / "runs", stages=stages), quiet=True)
    assert [row["path"] for row in result.history] == ["cached-features"] * 3
    assert result.final["val_acc"] >= 0.8
    state = torch.load(result.run_dir / "last.pt", map_location="cpu", weights_only=True)["model"]
    torch.manual_seed(0)
    fresh = build_model(
        Recipe.from_dict(tiny_recipe(colour_folder, tmp_path)).model.model_copy(update={"weights": "none"}), 3, 16
    )
    # The cached prefix never changes; the block after the cut does.
    assert torch.equal(state["backbone.blocks.0.0.weight"], fresh.state_dict()["backbone.blocks.0.0.weight"])
    assert not torch.equal(state["backbone.blocks.1.0.weight"], fresh.state_dict()["backbone.blocks.1.0.weight"])


@pytest.mark.slow
def test_tensorboard_and_mlflow_receive_every_epoch(colour_folder, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store for the test; users point at their server
    result = headstart.train(
        tiny_recipe(colour_folder, tmp_path / "runs", run={"log": ["tensorboard", "mlflow"]}), quiet=True
    )

    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    val_loss = [(e.step, e.value) for e in events.Scalars("val/loss")]
    assert val_loss == [(i + 1, pytest.approx(row["val_loss"], rel=1e-5)) for i, row in enumerate(result.history)]

    client = MlflowClient((tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("headstart").experiment_id])
    assert run.info.run_name == result.run_dir.name and run.data.params["stages.all.lr"] == "0.01"
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [m.step for m in history] == list(range(1, len(result.history) + 1))
    assert "run/history.json" in {a.path for a in client.list_artifacts(run.info.run_id, "run")}


def test_feature_cache_over_its_budget_is_read_from_disk_with_the_same_result(colour_folder, tmp_path, caplog):
    import logging

    stages = [{"name": "head", "epochs": 3, "freeze": "backbone", "lr": 0.05}]
    in_memory = headstart.train(tiny_recipe(colour_folder, tmp_path / "a", stages=stages), quiet=True)
    with caplog.at_level(logging.INFO, logger="headstart"):
        # A new output folder, the same cache entry: this run reads it through memory maps.
        mapped = headstart.train(
            tiny_recipe(colour_folder, tmp_path / "b", stages=stages, run={"feature_cache_memory_mb": 0})
        )
    assert "memory-mapped (over the 0 MB budget)" in caplog.text
    assert [(r["train_loss"], r["val_loss"]) for r in mapped.history] == [
        (r["train_loss"], r["val_loss"]) for r in in_memory.history
    ]


@pytest.mark.parametrize("busy", [True, False])
def test_a_run_on_an_already_busy_cpu_says_its_timings_will_not_compare(busy, monkeypatch, caplog):
    import os

    from headstart.config.recipe import Recipe
    from headstart.training import session

    cores = os.cpu_count() or 1
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(session, "load_average", lambda: cores * (3.0 if busy else 0.2))
    monkeypatch.setattr(session, "cores_busy_elsewhere", lambda: None)  # no /proc: the load average decides
    with caplog.at_level("WARNING", logger="headstart"):
        hw, group = session.open_hardware(Recipe.from_dict({"run": {"device": "cpu"}}))
        session.warn_if_cpu_busy(hw, group)
    warned = [r.getMessage() for r in caplog.records if "already busy" in r.getMessage()]
    assert hw.device.type == "cpu"
    assert len(warned) == (1 if busy else 0)
    if busy:
        assert f"on {cores} cores" in warned[0] and "OMP_WAIT_POLICY=PASSIVE" in warned[0]


def test_a_sweeps_own_last_run_does_not_count_as_a_busy_cpu(monkeypatch, caplog):
    """A high load average left by this process's previous run is checked against what other processes use now."""
    import os

    from headstart.config.recipe import Recipe
    from headstart.training import session

    cores = os.cpu_count() or 1
    monkeypatch.setattr(session, "load_average", lambda: cores * 2.0)
    hw, group = session.open_hardware(Recipe.from_dict({"run": {"device": "cpu"}}))
    for elsewhere, warnings in ((0.1, 0), (cores * 1.0, 1)):
        monkeypatch.setattr(session, "cores_busy_elsewhere", lambda elsewhere=elsewhere: elsewhere)
        caplog.clear()
        with caplog.at_level("WARNING", logger="headstart"):
            session.warn_if_cpu_busy(hw, group)
        warned = [r.getMessage() for r in caplog.records if "already busy" in r.getMessage()]
        assert len(warned) == warnings
    assert "cores busy in other processes" in warned[0]


def test_cores_busy_elsewhere_leaves_out_this_processs_own_ticks(monkeypatch):
    import os

    from headstart.core import hardware

    # 200 ticks over all cores pass; 150 of them busy, 100 of those in this process: 50 elsewhere.
    samples = iter([(1000, 400, 100), (1200, 550, 200)])
    monkeypatch.setattr(hardware, "_cpu_ticks", lambda: next(samples))
    cores = os.cpu_count() or 1
    assert hardware.cores_busy_elsewhere(0.0) == pytest.approx(50 / 200 * cores)
    if os.path.exists("/proc/stat"):  # the real reading: a share of this machine's cores
        monkeypatch.undo()
        assert 0.0 <= hardware.cores_busy_elsewhere(0.05) <= cores


def test_the_busy_cpu_note_does_not_advise_a_passive_wait_policy_already_set(monkeypatch):
    from headstart.core.hardware import busy_cpu_note

    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    note = busy_cpu_note(4.0, 2, 2)
    assert note is not None and "already busy" in note and "OMP_WAIT_POLICY" not in note


def test_a_missing_data_folder_is_the_one_message_before_any_busy_cpu_note(tmp_path, monkeypatch, caplog):
    from headstart.training import session

    monkeypatch.setattr(session, "busy_cpu_note", lambda *args: "the CPU is busy")
    with caplog.at_level("WARNING", logger="headstart"), pytest.raises(HeadstartError, match="not found"):
        headstart.train(tiny_recipe(tmp_path / "no-such-folder", tmp_path / "runs"), quiet=True)
    assert "the CPU is busy" not in caplog.text


def test_staged_recipe_looks_at_each_image_once(tmp_path):
    """Head and top-stage caches come from one backbone pass; calibration, test and the detector reuse the stored features."""
    folder = write_images(tmp_path / "data", CLASS_COLOURS, per_class=20, size=24)
    recipe = tiny_recipe(
        folder,
        tmp_path / "runs",
        data={"test_fraction": 0.2},
        stages=[
            {"name": "head", "epochs": 3, "freeze": "backbone", "lr": 0.05},
            {"name": "finetune", "epochs": 2, "freeze": "top:1", "lr": 0.01},
        ],
        run={"channels_last": True},  # nothing to measure: the model sees the images alone
    )
    seen = []

    def count_images(module, inputs, _output):
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 3:
            seen.append(len(inputs[0]))

    hook = torch.nn.modules.module.register_module_forward_hook(count_images)
    try:
        result = headstart.train(recipe, quiet=True)
    finally:
        hook.remove()
    split = result.run_dir / "summary.txt"
    counts = split.read_text().split("\n")[1]
    assert "42 train / 6 val / 12 test images" in counts
    # Every image through the stem once: no second pass, no scoring pass. One-image calls are shape probes
    # of random input (build_model, backbone_chain); no batch of these splits has one image.
    assert sum(n for n in seen if n > 1) == 42 + 6 + 12
    assert [r["path"] for r in result.history] == ["cached-features"] * 5
    # The test score from stored features is the whole model's on the images.
    evaluation = headstart.load(result.run_dir).evaluate(folder)
    assert evaluation.scored == "the run's held-out test split" and evaluation.count == 12
    assert evaluation.accuracy == pytest.approx(result.test["acc"], abs=1e-6)
