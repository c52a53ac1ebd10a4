"""A run folder written before typed run state (tests/fixtures/run_v1, see make_run_v1.py) still works."""

import json
import shutil
from pathlib import Path

import pytest

import headstart
from headstart.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "run_v1"


@pytest.fixture
def legacy(tmp_path, monkeypatch):
    """A private copy of the old run and its data; its recipe names both relative to this folder."""
    shutil.copytree(FIXTURE, tmp_path / "run_v1")
    monkeypatch.chdir(tmp_path / "run_v1")
    return Path("runs/tiny")


def test_an_old_run_predicts_and_exports(legacy, capsys, tmp_path):
    image = Path("data/red/000.png")
    assert main(["predict", str(legacy), str(image), "--json"]) == 0
    expected = json.loads(capsys.readouterr().out)[0]["top"]
    assert {entry["label"] for entry in expected} == {"blue", "red"}
    exported = headstart.export(legacy, format="onnx", out=tmp_path / "old.onnx")
    again = headstart.load(exported).predict([image], top_k=2)[0]
    assert [label for label, _ in again] == [entry["label"] for entry in expected]
    assert [p for _, p in again] == pytest.approx([entry["probability"] for entry in expected], abs=1e-4)


def test_an_old_interrupted_run_resumes_to_its_end(legacy):
    before = json.loads((legacy / "history.json").read_text())
    assert [(row["stage"], row["epoch"]) for row in before] == [("head", 1), ("head", 2), ("all", 1)]
    assert main(["train", "--resume", str(legacy), "--quiet"]) == 0
    after = json.loads((legacy / "history.json").read_text())
    rows = [(row["stage"], row["epoch"]) for row in after if "stage" in row]
    assert rows == [("head", 1), ("head", 2), ("all", 1), ("all", 2)]
    assert after[:3] == before
