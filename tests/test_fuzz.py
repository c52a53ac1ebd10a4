"""Recipes fuzzed with hypothesis: any input is a valid recipe or a one-line HeadstartError, never a traceback."""

import argparse
import contextlib
import importlib
import io
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headstart.cli import build_parser, main
from headstart.cli.flags import set_stage_field
from headstart.config.recipe import Recipe
from headstart.core.errors import HeadstartError

# Real field names, near-misses and junk, so the fuzzer reaches deep into the sections.
FIELD_NAMES = sorted(
    {
        name
        for model in ("DataConfig", "ModelConfig", "Stage", "RunConfig", "HeadConfig")
        for name in getattr(__import__("headstart.config.recipe", fromlist=[model]), model).model_fields
    }
    | set(Recipe.model_fields)
    | {"kind", "sigma", "factor", "size", "kernel_size", "epoch", "Freeze", "", "lr "}
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["backbone", "top:3", "none", "blocks.5", "cosine", "sgd", "package", "file:/nope", "-1", "1e-3"]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.sampled_from(FIELD_NAMES), children, max_size=5)
    ),
    max_leaves=25,
)
recipes = st.dictionaries(st.sampled_from(sorted(Recipe.model_fields) + ["extra"]), documents, max_size=4)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def one_line_error_or_recipe(build) -> None:
    try:
        recipe = build()
    except HeadstartError as err:
        message = str(err)
        assert message and "\n" not in message and "Traceback" not in message
        return
    assert isinstance(recipe, Recipe)
    assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml())) == recipe  # what is saved loads back the same


@pytest.mark.slow
@FUZZ
@given(recipes)
def test_any_mapping_is_a_recipe_or_one_line_error(values):
    one_line_error_or_recipe(lambda: Recipe.from_dict(values))


@FUZZ
@given(st.text(max_size=200))
def test_any_yaml_text_is_a_recipe_or_one_line_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "recipe.yaml"
    path.write_text(text)
    one_line_error_or_recipe(lambda: Recipe.from_yaml(path))


@FUZZ
@given(st.sampled_from(["epochs", "freeze", "bn", "lr", "optimizer", "schedule", "body_lr_mult"]), st.text(max_size=30))
def test_any_stage_flag_is_a_recipe_or_one_line_error(field, spec):
    one_line_error_or_recipe(lambda: set_stage_field(Recipe(), field, spec))


@settings(max_examples=40, deadline=None)
@given(recipes)
def test_command_line_never_shows_a_traceback(tmp_path_factory, values):
    path = tmp_path_factory.mktemp("cli") / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(["train", "--recipe", str(path), "--dry-run"])
    assert code in (0, 2) and "Traceback" not in err.getvalue()
    assert code == 0 or err.getvalue().startswith("headstart: error: ") and err.getvalue().count("\n") == 1


# ----------------------------------------------------------------------------- the whole command line

# Every subcommand and every flag, read from the parser itself, so a new flag is fuzzed without an edit here.
# Values are hostile in kind (junk text, negative, zero, huge, NaN, climbing paths); for flags whose *valid*
# values set how long a command runs (epochs, steps, sizes, seeds, processes) the valid ones drawn are small,
# so every example ends within seconds; values past their bounds are drawn too, and must be refused.
HOSTILE = st.one_of(
    st.text(max_size=10).filter(lambda t: "\x00" not in t),  # argv can hold any byte but NUL
    st.integers(-(10**25), 10**25).map(str),
    st.floats().map(repr),
    st.sampled_from(
        [
            "",
            " ",
            "-1",
            "0",
            "nan",
            "inf",
            "1e20",
            str(2**70),
            "../x",
            "a=b",
            "head=1,all=x",
            ":",
            "caf\udce9",
            "~0",
            "~nosuchuser/x",
        ]
    ),
)
COSTLY = {
    "epochs": ["-1", "0", "1", "2", "x", "head=1", "nope=1", "1.5", "head=0,all=1", "auto"],
    "max_epochs": ["-1", "0", "1", "2", "x", "head=1"],
    "image_size": ["-3", "0", "8", "16", "100000", "x"],
    "steps": ["-1", "0", "4", "5", "6", "x"],
    "seeds": ["0", "-1", "1", "2", "x", "0,1", "1001", "a,b", "1,,2"],
    "feature_views": ["-1", "0", "1", "2", "x"],
    "devices": ["0", "-1", "1", "x"],  # more than one process launches torchrun: tests/test_distributed.py covers it
    "workers": ["-1", "0", "x", "300"],  # worker processes cost seconds to start and prove nothing here
    "compile": ["auto", "off", "bogus"],  # 'on' compiles for ~100 s on a CPU
    "head_hidden": ["-1", "0", "1", "8", "65537", "1e20", "x"],
    "classes": ["-1", "0", "1", "2", "10", "100001", "x"],
    "batch_size": ["-1", "0", "1", "4", "x", "1000000000000"],
    "backbone": ["headstart_cnn", "resnet18", "no_such_net", "", "tf_efficientnet_lite0"],
    "backbones": ["headstart_cnn", "no_such_net", "", "headstart_cnn,no_such_net"],
    "trials": ["-1", "0", "1", "x"],  # every trial trains a run
    "folds": ["-1", "0", "1", "2", "x", "1000"],
}
NOT_FUZZED: dict[str, str] = {}  # serve is fuzzed with --dry-run: every check, the model loaded, the port taken


def fuzz_world(root: Path) -> dict[str, list[str]]:
    """Files the fuzzed command lines point at: data, a recipe, a run, an export, a sweep file (all tiny)."""
    from headstart.deploy.export import export
    from tests.conftest import CLASS_COLOURS, tiny_recipe, write_images
    from tests.probes import train_tiny_run

    run, data = train_tiny_run(root)
    recipe = tiny_recipe(data, root / "out", stages=[{"name": "head", "epochs": 1}, {"name": "all", "epochs": 1}])
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (root / "sweep.yaml").write_text(yaml.safe_dump({"recipe": recipe, "vary": {"head.lr": [0.01, 0.02]}}))
    image = write_images(root / "img", {"red": CLASS_COLOURS["red"]}, per_class=1) / "red" / "000.png"
    exported = export(run, format="export", out=root / "export" / "model.pt2")
    kinds = {
        "data": [data],
        "recipe": [root / "recipe.yaml", root / "sweep.yaml", data],
        "run": [run, exported, run / "best.pt"],
        "images": [image, data / "red"],
        "anything": [data, root / "recipe.yaml", run, exported, image, root / "sweep.yaml", root / "nope"],
    }
    return {kind: [str(p) for p in paths] for kind, paths in kinds.items()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return fuzz_world(tmp_path_factory.mktemp("fuzz-world"))


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p for name, p in sub.choices.items() if name not in NOT_FUZZED}


# Which of the world's files a positional or flag expects (hostile values are drawn beside them).
EXPECTS = {
    "data": "data",
    "run": "run",
    "runs": "run",
    "images": "images",
    "resume": "run",
    "weights_from": "run",
    "recipe": "recipe",
    "target": "recipe",
}


def mostly(sensible: st.SearchStrategy) -> st.SearchStrategy:
    """Three draws in four sensible, the fourth hostile: enough valid input to reach the code behind the parsing."""
    return st.one_of(sensible, sensible, sensible, HOSTILE)


def flag_values(action: argparse.Action, world: dict) -> st.SearchStrategy:
    """Values for one flag: its choices, the costly ones' small values, typed numbers or paths, each beside junk."""
    if action.nargs == 0:
        return st.just([])
    if action.dest in COSTLY:
        pool = st.sampled_from(COSTLY[action.dest])
    elif action.choices:
        pool = mostly(st.sampled_from(list(action.choices)))
    elif action.dest in ("out", "csv", "confusion", "name"):
        pool = mostly(st.sampled_from(["out", "out/x", "new.csv", "../escape"]))  # relative: inside the sandbox
    elif action.type in (int, float):
        pool = mostly(st.one_of(st.integers(-3, 40).map(str), st.floats(-10, 10).map(repr)))
    elif action.dest in EXPECTS:
        pool = mostly(st.sampled_from(world[EXPECTS[action.dest]]))
    else:
        pool = mostly(st.sampled_from(["0.01", "1e-3", "backbone", "none", "train", "head=0.1", "2", "adamw"]))
    if action.nargs == "?":
        return st.one_of(st.just([]), pool.map(lambda v: [v]))
    return pool.map(lambda v: [v])


@st.composite
def command_lines(draw, name: str, parser: argparse.ArgumentParser, world: dict) -> list[str]:
    argv = [name]
    for action in parser._actions:
        if action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        # sweep, lr-find, inspect, tune and cv with no TARGET fall back to the embedded digits (1,797 images): always given.
        if (
            action.nargs in ("?", "*")
            and name not in ("sweep", "lr-find", "inspect", "tune", "cv")
            and draw(st.booleans())
        ):
            continue
        pool = world[EXPECTS.get(action.dest, "anything")]
        argv.append(draw(mostly(st.sampled_from(pool))))
        if action.nargs == "+" and draw(st.booleans()):
            argv.append(draw(st.sampled_from(pool)))
    if name == "serve":  # checks its settings, loads the model and takes the port, then exits
        argv.append("--dry-run")
    if name == "inspect":  # a tiny backbone: embedding with EfficientNet-Lite0 at 224 px costs seconds per call
        argv += ["--backbone", "headstart_cnn", "--image-size", "16"]
    if name in ("train", "sweep", "lr-find", "tune", "cv"):
        # A tiny base: without it the default trains EfficientNet-Lite0 (on the digits, with no DATA) for minutes.
        argv += (
            ["--recipe", world["recipe"][0]]
            if name == "train"
            else ["--backbone", "headstart_cnn", "--image-size", "16"]
        )
    options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    for action in draw(st.lists(st.sampled_from(options), max_size=4, unique_by=lambda a: a.dest)):
        argv += [draw(st.sampled_from(action.option_strings)), *draw(flag_values(action, world))]
    return argv


def run_command_line(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of main(argv) in-process, under a timeout; argparse's exit is an exit code too."""
    from tests.probes import within

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), within(120):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
    return code, err.getvalue()


# 15 command lines per subcommand keep CI's run near 20 s; HEADSTART_FUZZ_EXAMPLES=N runs a deeper, random search.
DEEP = int(os.environ.get("HEADSTART_FUZZ_EXAMPLES", 0))
CLI_FUZZ = settings(
    max_examples=DEEP or 15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=not DEEP
)
FUZZ_LOG = os.environ.get("HEADSTART_FUZZ_LOG")  # a file to append "exit code<TAB>argv" lines to, for the figures


# probe trains a head per candidate backbone (the slow lane's); every other subcommand takes a second or two.
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "probe" else n for n in sorted(subcommands())]
)
def test_every_subcommand_and_flag_exits_0_or_2_never_a_traceback(world, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # relative --out, --csv, mlruns/ land in the sandbox
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub backbone fails at once instead of waiting on the network
    # probe's default candidates are the packaged backbones installed: lite0 alone, as in CI, on any machine.
    probe_module = importlib.import_module(
        "headstart.experiments.probe"
    )  # headstart.experiments.probe is also the function's name
    monkeypatch.setattr(probe_module, "installed_packaged_backbones", lambda: ["tf_efficientnet_lite0"])
    parser = subcommands()[name]

    @CLI_FUZZ
    @given(command_lines(name, parser, world))
    def probe(argv):
        code, err = run_command_line(argv)
        if FUZZ_LOG:
            with open(FUZZ_LOG, "a", errors="backslashreplace") as log:
                log.write(f"{code}\t{argv!r}\t{err.strip().splitlines()[-1][:150] if err.strip() else ''}\n")
        # sweep: 1 = a variant failed, recorded; tune: no trial completed; cv: a fold failed.
        allowed = (0, 1, 2) if name in ("sweep", "tune", "cv") else (0, 2)
        assert code in allowed and "Traceback" not in err, (argv, code, err)
        if code == 2 and err.startswith("headstart: error:"):
            assert err.count("\n") == 1, (argv, err)

    probe()


def test_the_fuzzed_flags_are_every_flag_of_every_subcommand():
    parser_flags = {
        (name, option) for name, p in subcommands().items() for a in p._actions for option in a.option_strings
    }
    assert {name for name, _ in parser_flags} | set(NOT_FUZZED) >= {"train", "predict", "evaluate", "export", "report"}
    assert len(parser_flags) > 60  # introspected, not listed: a new flag is fuzzed from the day it is added
