"""Write faults: a read-only or full target ends every command with the one-line error naming the path.

Targets are tmpfs mounts (a tiny one is full at once; a filled one is remounted read-only), so the
probes hold as root, where chmod stops nothing. Results computed before the failing write are
printed first, nothing half-written is left, and no file outside the target and cache changes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_recipe
from tests.probes import Mounts, cli, snapshot


@pytest.fixture
def mounts():
    made = Mounts()
    yield made
    made.release()


def cache_dir() -> Path:
    return Path(os.environ["HEADSTART_CACHE"])


def test_train_into_a_read_only_folder(colour_folder, tmp_path, capsys, mounts):
    out = mounts.read_only(tmp_path / "ro")
    before = snapshot(tmp_path, skip=(cache_dir(),))
    code, _, err = cli(["train", colour_folder, "--out", out, "--epochs", "1", "--backbone", "headstart_cnn"], capsys)
    assert code == 2 and f"cannot write {out}" in err and "read-only" in err
    assert snapshot(tmp_path, skip=(cache_dir(),)) == before


def test_train_onto_a_full_disk_keeps_no_half_written_file(colour_folder, tmp_path, capsys, mounts):
    out = mounts.full(tmp_path / "full", "256k")
    # A wider scratch CNN: its checkpoints (~0.9 MB with the optimizer state) cannot fit.
    recipe = tiny_recipe(
        colour_folder, out, model={"backbone": "headstart_cnn", "backbone_args": {"widths": [64, 128]}}
    )
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    code, _, err = cli(["train", "--recipe", tmp_path / "r.yaml", "--quiet"], capsys)
    assert code == 2 and "no space left" in err and str(out) in err
    assert not [p.name for p in out.rglob(".*")], "a temporary file was left on the full disk"


def test_a_read_only_cache_is_named(colour_folder, tmp_path, capsys, mounts, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(mounts.read_only(tmp_path / "cache")))
    recipe = tiny_recipe(colour_folder, tmp_path / "runs", stages=[{"name": "head", "epochs": 1}])
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    code, _, err = cli(["train", "--recipe", tmp_path / "r.yaml", "--quiet"], capsys)
    assert code == 2 and f"cannot write {tmp_path / 'cache'}" in err and "HEADSTART_CACHE" in err


def test_a_full_cache_is_named_and_left_empty(colour_folder, tmp_path, capsys, mounts, monkeypatch):
    from headstart.data import images as data_module

    cache = mounts.full(tmp_path / "cache", "256k")
    monkeypatch.setenv("HEADSTART_CACHE", str(cache))
    monkeypatch.setattr(data_module, "DECODED_CACHE_BUDGET", 0)  # decode to the memory-mapped file in the cache
    recipe = tiny_recipe(colour_folder, tmp_path / "runs", data={"image_size": 128})  # 36 x 128 x 128 x 3 > 256 KiB
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    code, _, err = cli(["train", "--recipe", tmp_path / "r.yaml", "--quiet"], capsys)
    assert code == 2 and "no space left" in err and str(cache) in err
    assert not [p for p in cache.rglob("*") if p.is_file()], "a failed build kept the disk full"


def test_evaluate_prints_its_accuracy_before_failing_to_write_the_picture(trained, tmp_path, capsys, mounts):
    run = mounts.read_only(tmp_path / "ro", contents=trained[0])
    code, out, err = cli(["evaluate", run, trained[1]], capsys)
    # The figures come first (after the line saying which split was scored), then the one-line error.
    assert code == 2 and "\naccuracy " in f"\n{out}" and f"cannot write {run / 'confusion-val.png'}" in err


@pytest.mark.parametrize("command", ["predict --csv", "export", "report", "compare", "sweep", "lr-find"])
def test_every_writing_command_names_the_read_only_path(trained, tmp_path, capsys, mounts, command):
    ro = mounts.read_only(tmp_path / "ro", contents=trained[0])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((trained[0] / "recipe.yaml").read_text())
    args = {
        "predict --csv": ["predict", ro, trained[1], "--csv", ro / "out.csv"],
        "export": ["export", ro, "--format", "export"],
        "report": ["report", ro],
        "compare": ["compare", ro, "--out", ro],
        "sweep": ["sweep", recipe, "--vary", "head.lr=0.01", "--out", ro],
        "lr-find": ["lr-find", recipe, "--steps", "5", "--out", ro],
    }[command]
    before = snapshot(tmp_path, skip=(cache_dir(),))
    code, _, err = cli(args, capsys)
    assert code == 2 and f"cannot write {ro}" in err and "read-only" in err
    assert snapshot(tmp_path, skip=(cache_dir(),)) == before
