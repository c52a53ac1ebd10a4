"""The registries are the one place their names live: the CLI's and the recipe's choices are read from them,
and docs/architecture.md's "Where do I add…" table names modules that exist."""

from __future__ import annotations

import argparse
import re
import typing
from pathlib import Path

import pytest

from headstart.cli.parser import build_parser
from headstart.config.recipe import RunConfig
from headstart.config.trackers import TRACKERS
from headstart.data.duplicates import Thresholds
from headstart.data.layouts import SOURCES
from headstart.deploy.formats import FORMATS, quantizations
from headstart.inspection.findings import kind_names
from headstart.inspection.report import InspectResult, summary
from headstart.training.tracking import tracker_class

ROOT = Path(__file__).resolve().parents[1]
REGISTRY_MODULES = {
    "src/headstart/deploy/formats.py",
    "src/headstart/config/trackers.py",
    "src/headstart/data/layouts.py",
    "src/headstart/inspection/findings.py",
}


def where_do_i_add() -> str:
    text = (ROOT / "docs/architecture.md").read_text()
    return text.split("## Where do I add", 1)[1].split("\n## ", 1)[0]


def test_the_where_do_i_add_table_names_real_modules_and_every_registry():
    named = set(re.findall(r"src/headstart/[\w/]*\w(?:\.py)?/?", where_do_i_add()))
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, missing
    assert REGISTRY_MODULES <= named, REGISTRY_MODULES - named


def cli_choices(command: str, flag: str) -> tuple[str, ...]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in commands.choices[command]._actions if flag in a.option_strings)
    return tuple(action.choices)


def summary_kinds() -> tuple[str, ...]:
    """The kinds the console summary (and so inspect.html) lists, one line each."""
    inventory = {"images": 0, "classes": 0, "per_split": {}, "imbalance": 0, "grayscale": 0, "cmyk": 0}
    result = InspectResult(Path("out"), [], dict(inventory, sixteen_bit=0), Thresholds(0.9, 0.9))
    return tuple(line.split()[0] for line in summary(result).splitlines() if line.startswith("  "))


@pytest.mark.parametrize(
    "registry, choices",
    [
        pytest.param(lambda: tuple(FORMATS), lambda: cli_choices("export", "--format"), id="export --format"),
        pytest.param(quantizations, lambda: cli_choices("export", "--quantize"), id="export --quantize"),
        pytest.param(
            lambda: tuple(TRACKERS),
            lambda: typing.get_args(typing.get_args(RunConfig.model_fields["log"].annotation)[0]),
            id="recipe run.log",
        ),
        pytest.param(lambda: tuple(TRACKERS), lambda: cli_choices("train", "--log"), id="train --log"),
        pytest.param(kind_names, summary_kinds, id="inspect summary kinds"),
    ],
)
def test_choices_are_the_registry_names(registry, choices):
    assert choices() == registry()


@pytest.mark.parametrize("name", list(TRACKERS))
def test_each_registered_tracker_names_a_tracker_class(name):
    cls = tracker_class(name)
    assert callable(cls.log_epoch) and callable(cls.close)


def planted_sources(tmp: Path) -> dict[str, Path]:
    """One path per data source that it, and no source before it, recognises (nothing is read but names)."""
    cifar = tmp / "cifar-10-batches-py"
    cifar.mkdir()
    for name in ("batches.meta", "test_batch", "data_batch_1"):
        (cifar / name).write_bytes(b"")
    folder = tmp / "photos"
    folder.mkdir()
    saved = tmp / "hf-saved"  # a datasets save_to_disk folder
    saved.mkdir()
    (saved / "dataset_dict.json").write_text("{}")
    return {"cifar": cifar, "csv": tmp / "labels.csv", "hf": saved, "folder": folder}


def test_each_data_source_is_the_first_to_recognise_its_layout(tmp_path):
    planted = planted_sources(tmp_path)
    assert set(planted) == {source.name for source in SOURCES}  # a new source brings its example here
    for name, path in planted.items():
        assert next(source.name for source in SOURCES if source.detect(path)) == name
    assert not any(source.detect(tmp_path / "nothing-here") for source in SOURCES)
