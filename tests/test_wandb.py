"""run.log wandb, offline: the W&B run in RUN_DIR/wandb/ holds every epoch's metrics, the recipe as config and the curves."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

import headstart
from headstart.config.recipe import Recipe
from headstart.core.errors import HeadstartError
from headstart.training.tracking import tracker_class
from tests.conftest import tiny_recipe
from tests.probes import cli

BLOCK, HEADER = 32768, 7  # W&B's transaction log: LevelDB's log format, a 7-byte file header (":W&B", magic, version)


def wandb_records(path: Path) -> list:
    """The protobuf records of a .wandb file (each chunk: crc32 (4), length (2), type (1: whole, 2-4: first/middle/last))."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, position, pending, records = path.read_bytes(), HEADER, b"", []
    assert data[:4] == b":W&B"
    while position + HEADER <= len(data):
        room = BLOCK - position % BLOCK
        _, length, kind = struct.unpack("<IHB", data[position : position + HEADER]) if room >= HEADER else (0, 0, 0)
        if length == 0 and kind == 0:  # a block's zero padding
            position += room
            continue
        pending += data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_an_offline_wandb_run_holds_the_metrics_the_recipe_and_the_curves(colour_folder, tmp_path, monkeypatch, capfd):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    result = headstart.train(tiny_recipe(colour_folder, tmp_path / "runs", run={"log": ["wandb"]}), quiet=True)
    assert "wandb: WARNING" not in capfd.readouterr().err  # W&B's own lines stay out of headstart's log

    (folder,) = (result.run_dir / "wandb").glob("offline-run-*")
    records = wandb_records(next(folder.glob("run-*.wandb")))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == result.run_dir.name and run.project == "headstart"
    config = {update.key: json.loads(update.value_json) for update in run.config.update}
    saved = Recipe.from_yaml(result.run_dir / "recipe.yaml").to_dict()
    assert config["stages"] == saved["stages"] and config["model"] == saved["model"]

    steps: dict[int, dict] = {}
    for record in (r.history for r in records if r.WhichOneof("record_type") == "history"):
        row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.item}
        steps.setdefault(row["_step"], {}).update(row)
    assert sorted(steps) == list(range(1, len(result.history) + 1))
    for step, row in zip(sorted(steps), result.history):
        assert steps[step]["val_loss"] == pytest.approx(row["val_loss"]) and steps[step]["lr"] == pytest.approx(
            row["lr"]
        )
    curves = steps[len(result.history)]["curves/path"]  # curves.png, logged at the last epoch's step
    assert curves.endswith(".png") and (folder / "files" / curves).is_file()


def test_a_missing_wandb_is_one_line_naming_the_extra(colour_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError, as when it is not installed
    with pytest.raises(HeadstartError, match=r"run.log wandb needs the wandb package: pip install .*\[track\]"):
        tracker_class("wandb")(tmp_path, Recipe())
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(Recipe.from_dict(tiny_recipe(colour_folder, tmp_path / "runs")).to_yaml())
    code, _, err = cli(["train", "--recipe", recipe, "--log", "wandb"], capsys)
    assert code == 2 and "run.log wandb needs the wandb package" in err and "[track]" in err
    # The run folder made for it is not left behind: an empty run would show up in compare and report.
    assert "no run folder was kept" in err and not [p for p in (tmp_path / "runs").glob("*") if p.is_dir()]
