"""Resume: optimizer state by parameter name, RNG state, and a run killed with SIGKILL that continues exactly."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml

import headstart
from headstart.cli import main
from headstart.config.recipe import ModelConfig
from headstart.core.checkpoint import load_checkpoint
from headstart.model.build import build_model
from headstart.training.resume import load_optimizer_state, optimizer_state, rng_state, set_rng_state
from tests.conftest import CLASS_COLOURS, tiny_recipe, write_images


def tiny_model():
    config = ModelConfig(
        backbone="headstart_cnn", weights="none", backbone_args={"widths": [4, 8], "convs_per_block": 1}
    )
    return build_model(config, 3, 16)


def test_optimizer_state_survives_unfreezing_by_parameter_name():
    model = tiny_model()
    for param in model.backbone.parameters():
        param.requires_grad = False
    head_only = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    head_only.step()
    saved = optimizer_state(head_only, model)
    assert set(saved["state"]) == {name for name, p in model.named_parameters() if name.startswith("head.")}

    for param in model.backbone.parameters():
        param.requires_grad = True
    # The new optimizer lists the backbone first: positions differ, names still match.
    everything = torch.optim.Adam(
        [
            {"params": list(model.backbone.parameters()), "lr": 0.01},
            {"params": list(model.head.parameters()), "lr": 0.5},
        ]
    )
    load_optimizer_state(everything, model, saved)
    by_param = {id(p): name for name, p in model.named_parameters()}
    for param, state in everything.state.items():
        assert torch.equal(state["exp_avg"], saved["state"][by_param[id(param)]]["exp_avg"])
    assert all(id(p) not in {id(q) for q in everything.state} for p in model.backbone.parameters())  # fresh
    assert everything.param_groups[1]["lr"] == 0.1  # the head's group takes its saved hyperparameters
    assert everything.param_groups[0]["lr"] == 0.01  # a group with no saved parameters keeps its own


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def killable_recipe(tmp_path):
    """Augmentation and dropout draw random numbers every step, so an inexact resume would show in the history."""
    folder = write_images(tmp_path / "data", CLASS_COLOURS, per_class=60, size=56)
    return tiny_recipe(
        folder,
        tmp_path / "runs",
        data={"image_size": 48, "batch_size": 4, "augment": "light"},
        model={
            "backbone": "headstart_cnn",
            "backbone_args": {"widths": [16, 32], "convs_per_block": 2, "dropout": 0.2},
        },
        stages=[
            {"name": "head", "epochs": 2, "freeze": "backbone", "lr": 0.05, "optimizer": "adam", "schedule": "cosine"},
            {"name": "all", "epochs": 4, "freeze": "none", "lr": 0.01, "optimizer": "adamw", "schedule": "onecycle"},
        ],
        run={"deterministic": True, "name": "killed"},
    )


def comparable(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# The training process kills itself at a fixed point: two optimizer steps into the epoch after `KILL_AFTER`
# finished ones (history.json is written, then last.pt, before the next epoch's first step). A public torch
# hook counts the steps, so the kill point depends neither on timing nor on headstart's internals.
KILL_AFTER = 3
KILLED_TRAIN = """
import json, os, signal, sys
from pathlib import Path
from torch.optim.optimizer import register_optimizer_step_post_hook
from headstart.cli import main

history, after, steps = Path(sys.argv[1]) / "history.json", int(sys.argv[2]), []

def kill_mid_epoch(optimizer, args, kwargs):
    try:
        finished = len(json.loads(history.read_text()))
    except (OSError, ValueError):
        finished = 0
    if finished >= after:
        steps.append(1)
        if len(steps) == 2:
            os.kill(os.getpid(), signal.SIGKILL)

register_optimizer_step_post_hook(kill_mid_epoch)
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_uninterrupted_history(tmp_path):
    recipe = killable_recipe(tmp_path)
    reference = headstart.train(dict(recipe, run={**recipe["run"], "name": "reference"}), quiet=True)

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "runs" / "killed"
    # Three finished epochs: the process is inside the fine-tuning stage when it is killed.
    process = subprocess.run(
        [sys.executable, "-c", KILLED_TRAIN, str(run_dir), str(KILL_AFTER)]
        + ["train", "--recipe", str(recipe_file), "--quiet"],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        timeout=600,
    )
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = len(json.loads((run_dir / "history.json").read_text()))
    assert killed_at == KILL_AFTER < len(reference.history)
    for name in ("best.pt", "last.pt"):  # atomic writes: whatever is in place is whole
        load_checkpoint(run_dir / name)

    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert not list(run_dir.glob(".*")), "a temporary file was left behind"
    resumed = json.loads((run_dir / "history.json").read_text())
    assert [(r["stage"], r["epoch"]) for r in resumed] == [(r["stage"], r["epoch"]) for r in reference.history]
    for got, want in zip(comparable(resumed), comparable(reference.history)):
        assert got.keys() == want.keys()
        # Numbers to a tolerance, everything else (stage name, path) exactly: pytest 9's approx refuses strings.
        for key, value in want.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
            else:
                assert got[key] == value, key
    assert load_checkpoint(run_dir / "last.pt").resume.epochs_done == len(reference.history)
    assert load_checkpoint(run_dir).val_loss == pytest.approx(reference.best["val_loss"], rel=1e-6)
    assert len((run_dir / "history.csv").read_text().splitlines()) == len(reference.history) + 1

    # Resuming a finished run changes nothing.
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert json.loads((run_dir / "history.json").read_text()) == resumed


def test_resume_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    (tmp_path / "recipe.yaml").write_text("{}\n")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no epoch finished" in capsys.readouterr().err
    assert main(["train", "data", "--resume", str(tmp_path)]) == 2
    assert "give no DATA" in capsys.readouterr().err


def test_a_run_killed_after_its_last_epoch_scores_its_test_split_when_resumed(tmp_path, caplog):
    two = {k: CLASS_COLOURS[k] for k in ("red", "blue")}
    for seed, (name, count) in enumerate((("train", 8), ("valid", 3), ("test", 4))):
        write_images(tmp_path / "d" / name, two, per_class=count, seed=seed)
    stages = [{"name": "head", "epochs": 1, "freeze": "backbone", "lr": 0.05}]
    run_dir = headstart.train(tiny_recipe(tmp_path / "d", tmp_path / "runs", stages=stages), quiet=True).run_dir
    history = json.loads((run_dir / "history.json").read_text())
    test = history[-1]
    assert test["record"] == "test" and test["images"] == 8
    # Killed after the last epoch, before the test split was scored and best.pt calibrated.
    (run_dir / "history.json").write_text(json.dumps(history[:-1]))
    best = load_checkpoint(run_dir / "best.pt")
    best.temperature = best.calibration = None
    best.save(run_dir / "best.pt")
    (run_dir / "summary.txt").unlink()

    with caplog.at_level("INFO", logger="headstart"):
        result = headstart.train(resume=run_dir)
    assert "finished all its stages but not its test score, calibration and summary" in caplog.text
    assert result.test == json.loads((run_dir / "history.json").read_text())[-1]
    assert result.test.keys() == test.keys() and result.test["model"] == test["model"]
    assert [result.test[k] for k in ("loss", "acc", "f1")] == pytest.approx([test[k] for k in ("loss", "acc", "f1")])
    assert load_checkpoint(run_dir / "best.pt").calibration is not None
    summary = (run_dir / "summary.txt").read_text()
    assert "test (8 images" in summary and "calibration: temperature" in summary

    # Now it is whole: resuming again changes nothing.
    before = (run_dir / "history.json").read_text(), (run_dir / "best.pt").read_bytes()
    caplog.clear()
    with caplog.at_level("INFO", logger="headstart"):
        headstart.train(resume=run_dir)
    assert "nothing to resume" in caplog.text
    assert ((run_dir / "history.json").read_text(), (run_dir / "best.pt").read_bytes()) == before


def test_a_run_killed_before_its_summary_writes_it_when_resumed(colour_folder, tmp_path):
    stages = [{"name": "head", "epochs": 1, "freeze": "backbone", "lr": 0.05}]
    run_dir = headstart.train(tiny_recipe(colour_folder, tmp_path / "runs", stages=stages), quiet=True).run_dir
    (run_dir / "summary.txt").unlink()  # killed after calibrating, before the summary
    headstart.train(resume=run_dir, quiet=True)
    assert "best: epoch 1" in (run_dir / "summary.txt").read_text()


@pytest.mark.parametrize("every_s, last_writes", [(1e9, [4]), (0.0, [1, 2, 3, 4])])
def test_checkpoints_wait_within_a_stage_and_a_stopped_run_writes_its_last_epoch(
    colour_folder, tmp_path, monkeypatch, every_s, last_writes
):
    """Fast epochs share one write (WRITE_EVERY_S apart at most); Ctrl-C still leaves the last finished epoch."""
    from headstart.core.runs import RunFolder
    from headstart.training import hooks

    monkeypatch.setattr(hooks, "WRITE_EVERY_S", every_s)
    written: list[tuple[str, int]] = []
    save = RunFolder.save_checkpoint

    def counted(self, filename, checkpoint):
        written.append((filename, checkpoint.epoch))
        save(self, filename, checkpoint)

    monkeypatch.setattr(RunFolder, "save_checkpoint", counted)
    stages = [{"name": "head", "epochs": 6, "freeze": "backbone", "lr": 0.05}]
    recipe = tiny_recipe(colour_folder, tmp_path / "runs", stages=stages)

    def ctrl_c_after_four(done, row):
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        headstart.train(recipe, quiet=True, on_epoch=ctrl_c_after_four)
    run = caught.value.run_dir
    assert [epoch for name, epoch in written if name == "last.pt"] == last_writes
    assert load_checkpoint(run / "last.pt").resume.epochs_done == 4 and (run / "best.pt").is_file()
    result = headstart.train(resume=run, quiet=True)
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4, 5, 6]
