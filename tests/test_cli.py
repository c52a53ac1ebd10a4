"""The command line: the same capabilities as the API, and one-line errors with exit code 2."""

import json
from pathlib import Path

import pytest
import yaml

from headstart.cli import main
from headstart.experiments.sweep import is_sweep_file
from tests.conftest import tiny_recipe

RECIPES = Path(__file__).parent.parent / "recipes"


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("headstart: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture
def tiny_run(colour_folder, tmp_path, capsys) -> Path:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(colour_folder, tmp_path / "runs")))
    assert main(["train", "--recipe", str(recipe), "--epochs", "head=1,all=2", "--quiet"]) == 0
    capsys.readouterr()
    return tmp_path / "runs" / "tiny"


def test_train_evaluate_predict_summary(tiny_run, colour_folder, capsys):
    assert len(json.loads((tiny_run / "history.json").read_text())) == 3
    assert main(["evaluate", str(tiny_run), str(colour_folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # The run's own folder: only its held-out val split (1 image of 12 per class) is scored.
    assert report["count"] == 3 and report["accuracy"] > 0.6 and (tiny_run / "confusion-val.png").is_file()
    assert main(["predict", str(tiny_run), str(colour_folder / "green"), "--top-k", "1", "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions) == 12 and all(len(p["top"]) == 1 for p in predictions)
    assert main(["summary", str(tiny_run)]) == 0
    assert "stage 'head': trainable" in capsys.readouterr().out


def test_epoch_lines_look_like_keras(colour_folder, tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(colour_folder, tmp_path / "runs")))
    assert main(["train", "--recipe", str(recipe), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "[head] epoch 1/1" in out and " - loss: " in out and " - val_acc: " in out


def test_flags_override_recipe(colour_folder, tmp_path, capsys):
    argv = [
        "train",
        str(colour_folder),
        "--backbone",
        "resnet18",
        "--head",
        "gap-dense",
        "--adapter",
        "noise:0.05",
        "--adapter",
        "resize:2x",
        "--freeze",
        "head=backbone,finetune=top:2",
        "--bn",
        "train",
        "--dry-run",
    ]
    assert main(argv) == 0
    recipe = yaml.safe_load(capsys.readouterr().out)
    assert recipe["model"]["backbone"] == "resnet18" and recipe["model"]["weights"] is None
    assert recipe["model"]["adapters"] == [
        {"kind": "noise", "sigma": 0.05},
        {"kind": "resize", "factor": 2.0, "size": None, "mode": "bilinear"},
    ]
    assert [s["freeze"] for s in recipe["stages"]] == ["backbone", "top:2"] and {s["bn"] for s in recipe["stages"]} == {
        "train"
    }


def test_bad_inputs_get_one_line(tmp_path, capsys, colour_folder):
    assert "data folder not found" in one_line_error(capsys, ["train", str(tmp_path / "missing")])
    (tmp_path / "one" / "cats").mkdir(parents=True)
    assert "need at least 2" in one_line_error(capsys, ["train", str(tmp_path / "one")])
    assert "did you mean" in one_line_error(capsys, ["train", str(colour_folder), "--backbone", "resnet5O"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {backbone: resnet18, head_kind: linear}\n")
    assert "valid fields: backbone, backbone_args" in one_line_error(capsys, ["train", "--recipe", str(bad)])
    assert "valid: hub, package, none, file:PATH" in one_line_error(
        capsys, ["train", str(colour_folder), "--weights", "s3://x"]
    )
    unfit = tmp_path / "unfit.pt"
    import torch

    torch.save({"conv.weight": torch.zeros(1)}, unfit)
    err = one_line_error(capsys, ["train", str(colour_folder), "--weights", f"file:{unfit}", "--image-size", "32"])
    assert "does not fit" in err
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(colour_folder, tmp_path / "runs")))
    assert "unknown freeze point 'blocks.9'" in one_line_error(
        capsys, ["train", "--recipe", str(recipe), "--freeze", "blocks.9"]
    )
    assert not (tmp_path / "runs").exists()  # checked before a run folder is made


# Expected trainable / frozen split of each article recipe's stages (2 classes), computed by hand:
# 003: VGG16 blocks 1-4 hold 7,635,264 parameters (Keras' model.layers[:15]).
EXPECTED_SPLITS = {
    "003_two_stage_vgg16": ["non-trainable 14,714,688", "non-trainable 7,635,264"],
    "001_scratch_cnn_bn": ["non-trainable 0"],
    "000_bn_trainable": ["non-trainable 21,785,568", "bn train: 76 BatchNorm"],
}


@pytest.mark.parametrize(
    "path", [p for p in sorted(RECIPES.glob("*.yaml")) if not is_sweep_file(p)], ids=lambda p: p.stem
)
def test_summary_of_article_recipes(path, capsys):
    assert main(["summary", str(path), "--classes", "2"]) == 0
    out = capsys.readouterr().out
    stages = [line for line in out.splitlines() if line.startswith("stage '")]
    assert len(stages) == len(yaml.safe_load(path.read_text())["stages"])
    for expected in EXPECTED_SPLITS.get(path.stem, []):
        assert expected in out


@pytest.mark.parametrize("path", [p for p in sorted(RECIPES.glob("*.yaml")) if is_sweep_file(p)], ids=lambda p: p.stem)
def test_summary_of_a_sweep_file_summarises_its_base_recipe(path, capsys):
    assert main(["summary", str(path), "--classes", "2"]) == 0
    out = capsys.readouterr().out
    assert "total params" in out and any(line.startswith("stage '") for line in out.splitlines())


def test_backbones_lists_offline_weights(capsys):
    assert main(["backbones", "efficientnet_lite0"]) == 0
    out = capsys.readouterr().out
    assert "tf_efficientnet_lite0" in out and "package (offline)" in out
    assert "no backbone matches" in one_line_error(capsys, ["backbones", "nosuchnet"])


def test_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    import pickle

    class RunsCode:
        def __reduce__(self):
            return (print, ("this ran",))

    (tmp_path / "best.pt").write_bytes(pickle.dumps({"format": "headstart-checkpoint-1", "model": RunsCode()}))
    assert main(["predict", str(tmp_path), str(tmp_path / "best.pt")]) == 2
    captured = capsys.readouterr()
    assert "cannot load checkpoint" in captured.err and "this ran" not in captured.out


def test_help_shows_defaults_of_options_and_recipe_flags():
    from headstart.cli.parser import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    finder = commands["lr-find"].format_help()
    assert "(default: 100)" in finder and "(default: 1e-07)" in finder
    train = " ".join(commands["train"].format_help().split())
    assert "--seed SEED (default: 0)" in train  # a recipe field's own default
    assert "(default: None)" not in train and "(default: False)" not in train
    assert "(default: 8000)" in commands["serve"].format_help()


def test_evaluate_never_replaces_the_runs_own_files_and_names_what_it_scored(trained, tmp_path, capsys, monkeypatch):
    import shutil

    from headstart.core import plots

    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    (run / "confusion.png").write_bytes(b"the run's own picture")
    titles = []
    original = plots.plot_confusion
    monkeypatch.setattr(
        "headstart.deploy.evaluation.plot_confusion",
        lambda *a, title="": titles.append(title) or original(*a, title=title),
    )
    assert main(["evaluate", str(run), str(trained[1])]) == 0
    assert main(["evaluate", str(run), str(trained[1]), "--tta"]) == 0
    out = capsys.readouterr().out
    assert (run / "confusion.png").read_bytes() == b"the run's own picture"
    assert (run / "confusion-val.png").is_file() and (run / "confusion-val-tta-flip.png").is_file()
    assert f"confusion matrix: {run / 'confusion-val-tta-flip.png'}" in out
    assert titles[0].startswith("the run's held-out val split, no TTA")
    assert titles[1].startswith("the run's held-out val split, TTA (flip)")


@pytest.mark.slow
def test_a_closed_pipe_ends_the_command_quietly():
    """`headstart backbones | head -1`: the reader goes away early; no traceback, no 'Exception ignored'."""
    import os
    import subprocess
    import sys

    script = "import sys; from headstart.cli import main; sys.exit(main(['backbones']))"
    # A pipe closed before anything is written: the first write fails, as with `| head` on long output.
    reader, writer = os.pipe()
    os.close(reader)
    done = subprocess.run([sys.executable, "-c", script], stdout=writer, stderr=subprocess.PIPE, text=True)
    os.close(writer)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "Exception ignored" not in done.stderr


def test_a_flag_value_argparse_refuses_is_a_one_line_error_too(capsys):
    for argv, says in (
        (["train", "--compile", "maybe"], "invalid choice: 'maybe' (choose from 'auto', 'on', 'off')"),
        (["predict"], "the following arguments are required: run, images"),
    ):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        err = capsys.readouterr().err
        assert stopped.value.code == 2 and err.count("\n") == 1 and says in err
        assert err.startswith(f"headstart {argv[0]}: error: ") and f"(see headstart {argv[0]} --help)" in err
