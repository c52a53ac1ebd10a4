"""headstart tune: a study in the tune folder, trials as run folders, best.yaml, continuing, pruning, one-line errors."""

import json

import pytest
import yaml

import headstart
from headstart.cli import main
from headstart.config.duration import parse_duration
from headstart.config.recipe import Recipe
from headstart.config.search_space import as_field_types, check_space, space_from_dict, with_values
from headstart.core.errors import HeadstartError
from headstart.experiments.compare import compare
from headstart.experiments.tune import make_pruner, objective, plan_search
from headstart.experiments.tune_space import default_space
from tests.conftest import tiny_recipe

optuna = pytest.importorskip("optuna")

SPACE = {
    "stages.head.lr": {"low": 0.01, "high": 0.2, "log": True},
    "stages.all.lr": {"low": 1e-3, "high": 0.05, "log": True},
}


def quick(folder, out, stages=None) -> dict:
    """tiny_recipe with three epochs in all: a trial takes a second or two."""
    stages = stages or [
        {"name": "head", "epochs": 1, "freeze": "backbone", "lr": 0.05},
        {"name": "all", "epochs": 2, "freeze": "none", "lr": 0.01},
    ]
    return tiny_recipe(folder, out, stages=stages)


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("headstart: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.slow
def test_tune_writes_study_best_recipe_and_trial_runs_then_continues_the_study(colour_folder, tmp_path, capsys):
    recipe = quick(colour_folder, tmp_path / "runs")
    first = headstart.tune(recipe, trials=2, space=SPACE, name="colours", quiet=True)
    folder = tmp_path / "runs" / "colours-tune"
    assert first.path == folder and (folder / "study.db").is_file() and (folder / "space.yaml").is_file()
    assert [t["state"] for t in first.trials] == ["complete", "complete"]
    # best.yaml is the base recipe with the best trial's values, a recipe train takes as it is.
    best = Recipe.from_yaml(folder / "best.yaml")
    assert best.stages[0].lr == pytest.approx(first.best["params"]["stages.head.lr"])
    assert best.run.out_dir == str(tmp_path / "runs") and best.run.name == "tiny"
    # Each trial is a run folder that compare reads from the tune folder, as it reads a sweep.
    assert sorted(r.variant for r in compare([folder]).records) == ["trial-0000", "trial-0001"]
    finished = {p: p.read_bytes() for p in folder.glob("trial-*/seed0/history.json")}
    assert len(finished) == 2

    # As if interrupted at 2 of 4: the same search from the command line runs the two trials missing.
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    argv = ["tune", str(tmp_path / "recipe.yaml"), "--trials", "4", "--space", str(tmp_path / "space.yaml")]
    assert main(argv + ["--name", "colours", "--quiet"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((folder / "tune.json").read_text())
    assert [t["number"] for t in summary["trials"]] == [0, 1, 2, 3]
    assert all(t["state"] in ("complete", "pruned") for t in summary["trials"])
    assert {p: p.read_bytes() for p in finished} == finished  # the finished trials did not run again
    assert len({tuple(t["params"].values()) for t in summary["trials"]}) == 4  # a continued sampler samples afresh
    assert "Which parameters mattered" in out and "best recipe:" in out
    assert summary["importances"] or summary["importance_note"]
    assert (folder / "tune.png").is_file() and (folder / "comparison.md").read_text().count("trial-") >= 4
    assert "Search (headstart tune)" in headstart.report(folder).read_text()
    # A study that holds enough finished trials runs none; its outputs are written again.
    again = headstart.tune(recipe, trials=3, space=SPACE, name="colours", quiet=True)
    assert [t["number"] for t in again.trials] == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_trial_worse_than_the_finished_ones_is_pruned_at_an_early_epoch(colour_folder, tmp_path):
    search = plan_search(quick(colour_folder, tmp_path / "runs"), SPACE, None, "pruned", "median", quiet=True)
    study = optuna.create_study(direction=search.direction, pruner=make_pruner(optuna, "median"))
    # Three finished trials better than any loss can be, from their first epoch (the colour set is so easy that a
    # real trial's val loss reached 0.0003, under a "merely excellent" 0.001, and was rightly not pruned).
    for value in (-3.0, -2.0, -1.0):
        steps = {1: value, 2: value, 3: value}
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=value, intermediate_values=steps))
    study.optimize(lambda trial: objective(search, trial), n_trials=1)
    trial = study.trials[-1]
    # The last stage's epochs only, numbered within it (the head stage's epoch is not reported); judged from
    # its second epoch on (the first is warm-up), and worse than the median there: stopped.
    assert trial.state == optuna.trial.TrialState.PRUNED and sorted(trial.intermediate_values) == [1, 2]
    run_dir = search.run_dir(trial.number)
    # The run folder holds every epoch it finished (head 1, then all 1 and 2), resumable like any interrupted run.
    history = json.loads((run_dir / "history.json").read_text())
    assert [row["stage"] for row in history] == ["head", "all", "all"] and (run_dir / "last.pt").is_file()


@pytest.mark.slow
def test_machines_share_one_study_through_a_storage_url(colour_folder, tmp_path):
    stages = [{"name": "head", "epochs": 1, "freeze": "backbone", "lr": 0.05}]
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    space = {"stages.head.lr": SPACE["stages.head.lr"]}
    one = headstart.tune(
        quick(colour_folder, tmp_path / "a", stages), trials=1, space=space, storage=storage, quiet=True
    )
    two = headstart.tune(
        quick(colour_folder, tmp_path / "b", stages), trials=2, space=space, storage=storage, quiet=True
    )
    assert [t["number"] for t in one.trials] == [0] and [t["number"] for t in two.trials] == [0, 1]
    assert not (two.path / "study.db").exists() and sorted(p.name for p in two.path.glob("trial-*")) == ["trial-0001"]
    assert (two.path / "best.yaml").is_file()


def test_unknown_space_field_and_bad_budget_are_one_line_errors(colour_folder, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(quick(colour_folder, tmp_path / "runs")))
    space = tmp_path / "space.yaml"
    space.write_text("stages.haed.lr: {low: 1.0e-3, high: 0.1, log: true}\n")
    err = one_line_error(capsys, ["tune", str(recipe), "--trials", "2", "--space", str(space)])
    assert "'stages.haed.lr' is not a recipe field" in err and "did you mean: stages.head.lr" in err
    space.write_text("model.head.hiden: [64, 128]\n")
    assert "did you mean: model.head.hidden" in one_line_error(
        capsys, ["tune", str(recipe), "--trials", "2", "--space", str(space)]
    )
    space.write_text("stages.head.lr: {low: 0, high: 0.1, log: true}\n")
    assert "log scale" in one_line_error(capsys, ["tune", str(recipe), "--trials", "2", "--space", str(space)])
    err = one_line_error(capsys, ["tune", str(recipe), "--trials", "2", "--budget", "ten minutes"])
    assert "--budget 'ten minutes'" in err and "90s, 10m, 1h" in err
    assert "--trials 0" in one_line_error(capsys, ["tune", str(recipe), "--trials", "0"])
    err = one_line_error(capsys, ["tune", str(recipe), "--trials", "2", "--storage", "nosuch://db"])
    assert "--storage nosuch://db: cannot open the study" in err
    assert not (tmp_path / "runs").exists()  # nothing ran, nothing was written (an empty tune folder neither)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("1.5h", 5400), ("2d", 172800), ("45", 45)],
)
def test_durations_parse_as_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "1h30", "-5m", "0s", "soon"])
def test_durations_that_do_not_parse_are_one_line_errors(text):
    with pytest.raises(HeadstartError, match="--budget") as err:
        parse_duration(text, "--budget")
    assert "\n" not in str(err.value)


HIDDEN = {"model.head.hidden": {"low": 64, "high": 256}}


def test_space_forms_and_values_reach_recipe_fields(colour_folder, tmp_path):
    recipe = Recipe.from_dict(tiny_recipe(colour_folder, tmp_path))
    space = space_from_dict(
        {
            "stages.all.freeze": ["none", 1],
            "model.head.hidden": {"low": 64, "high": 256, "step": 64},
            "stages.head.weight_decay": {"low": "1e-5", "high": 0.1, "log": True},
            "stages.head.early_stop.patience": {"choices": [2, 3]},
        }
    )
    assert [p.kind for p in space] == ["choice", "int", "float", "choice"]
    check_space(space, recipe)
    # Whole-number ends over a float field (mixup holds 0.0) are a float range, not the integers 0 and 1.
    ranges = as_field_types(space_from_dict({"stages.head.mixup": {"low": 0, "high": 1}, **HIDDEN}), recipe)
    assert [(p.kind, p.low, p.high) for p in ranges] == [("float", 0.0, 1.0), ("int", 64, 256)]
    changed = with_values(
        recipe, {"stages.all.freeze": 1, "model.head.hidden": 128, "stages.head.early_stop.patience": 3}
    )
    assert (
        changed.stages[1].freeze == 1
        and changed.model.head.hidden == 128
        and changed.stages[0].early_stop.patience == 3
    )
    for bad, message in [
        ({"stages.head.lr": {"low": 0.1, "high": 0.01}}, "must be below high"),
        ({"stages.head.lr": {"low": 0.1, "high": 1, "spread": 2}}, "unknown setting 'spread'"),
        ({"stages.head.lr": [0.1, 0.1]}, "lists a choice twice"),
        ({"lr": [0.1]}, "did you mean: stages.head.lr, stages.all.lr"),
        ({"stages.head.bn": ["frozen", "thawed"]}, "stages.head.bn='thawed'"),
    ]:
        with pytest.raises(HeadstartError, match=message):
            check_space(space_from_dict(bad), recipe)


def test_default_space_reads_the_recipe(colour_folder, tmp_path):
    tiny = Recipe.from_dict(tiny_recipe(colour_folder, tmp_path))
    keys = [p.key for p in default_space(tiny, "single-label")]
    assert keys == [
        f"stages.{s}.{f}" for s in ("head", "all") for f in ("lr", "weight_decay", "label_smoothing", "mixup")
    ]
    assert "stages.head.label_smoothing" not in [p.key for p in default_space(tiny, "multi-label")]
    # The default recipe's fine-tuning stage trains the top backbone stage: how many is searched too.
    space = {p.key: p for p in default_space(Recipe(), "single-label")}
    assert space["stages.finetune.freeze"].choices == ("top:1", "top:2", "top:3")
    assert space["stages.head.lr"].low == pytest.approx(2e-4) and space["stages.head.lr"].log
    check_space(list(space.values()), Recipe())
