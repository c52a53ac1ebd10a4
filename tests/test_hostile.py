"""Hostile input: names that climb out of their folder, special files, files a sweep did not write.

Each probe asserts a one-line error (exit 2) or correct handling, and that nothing outside the
run or cache folder is touched. Probes that could hang run in a subprocess under a timeout.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import headstart
from headstart.cli import main
from headstart.config.recipe import DataConfig
from headstart.core.errors import HeadstartError
from headstart.core.paths import safe_component
from headstart.data.images import prepare_data
from headstart.data.layouts import list_images
from headstart.deploy.pt2_safety import check_pt2_archive
from headstart.deploy.writing import sidecar_path
from tests.conftest import CLASS_COLOURS, tiny_recipe, write_images
from tests.probes import HANG_PROBE, cli, run_cli, within

CLIMBING = ["../victim", "../../victim", "/tmp/victim", "a/b", "..", ".", "", "~root", "x\\y", "bad\x00name"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("headstart: error:") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("name", CLIMBING)
def test_unsafe_names_are_refused(name):
    with pytest.raises(HeadstartError, match="not a safe folder name|is empty"):
        safe_component(name, "class name")
    assert safe_component("golden retriever", "class name") == "golden retriever"


# ----------------------------------------------------------------------------- 1: sweep deletes only its own files


@pytest.fixture
def victim(tmp_path):
    folder = tmp_path / "victim" / "seed0"
    folder.mkdir(parents=True)
    (folder / "important.txt").write_text("keep me")
    return folder / "important.txt"


def test_sweep_variant_that_climbs_out_is_refused_before_anything_runs(colour_folder, tmp_path, victim, capsys):
    recipe = tiny_recipe(colour_folder, tmp_path / "runs" / "sub")
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"recipe": recipe, "variants": {"../../../victim": {}}}))
    assert main(["sweep", str(sweep_file), "--quiet"]) == 2
    assert "not a safe folder name" in one_line_error(capsys)
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize("name", ["../escaped", "/tmp/escaped-sweep-abs"])
def test_sweep_name_cannot_escape_out(colour_folder, tmp_path, capsys, name):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(colour_folder, tmp_path / "runs")))
    assert main(["sweep", str(recipe), "--vary", "all.lr=0.01", "--name", name, "--quiet"]) == 2
    assert "sweep folder name" in one_line_error(capsys)
    assert not (tmp_path / "escaped").exists() and not os.path.exists("/tmp/escaped-sweep-abs")


def test_sweep_leaves_a_run_with_an_unreadable_last_pt_and_the_users_files(colour_folder, tmp_path):
    recipe = tiny_recipe(colour_folder, tmp_path / "runs")
    first = headstart.sweep(recipe, vary={"all.lr": [0.01]}, name="s", quiet=True)
    run_dir = first.runs["all.lr-0.01"][0]
    (run_dir / "notes.txt").write_text("my notes")
    last = run_dir / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}

    again = headstart.sweep(recipe, vary={"all.lr": [0.01]}, name="s", quiet=True)
    assert "cannot be read" in again.failed[str(run_dir)]
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_sweep_restarts_an_unfinished_run_but_keeps_files_it_did_not_write(colour_folder, tmp_path):
    recipe = tiny_recipe(colour_folder, tmp_path / "runs")
    run_dir = tmp_path / "runs" / "s" / "all.lr-0.01" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text("left by a run killed before its first epoch")
    (run_dir / "notes.txt").write_text("my notes")
    result = headstart.sweep(recipe, vary={"all.lr": [0.01, 0.02]}, name="s", quiet=True)
    assert "notes.txt" in result.failed[str(run_dir)]
    assert (run_dir / "notes.txt").read_text() == "my notes"

    (run_dir / "notes.txt").unlink()  # once the user has moved their file, the run starts afresh
    result = headstart.sweep(recipe, vary={"all.lr": [0.01, 0.02]}, name="s", quiet=True)
    assert not result.failed and (run_dir / "best.pt").is_file()


# ----------------------------------------------------------------------------- 2 and 9: names from any source


def write_cifar(folder, names):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for batch in ("data_batch_1", "test_batch"):
        rows = rng.integers(0, 255, (4, 3072), dtype=np.uint8)
        payload = {b"labels": [0, 1, 0, 1], b"data": rows, b"filenames": [f"{i}.png".encode() for i in range(4)]}
        with open(folder / batch, "wb") as stream:
            pickle.dump(payload, stream, protocol=2)
    with open(folder / "batches.meta", "wb") as stream:
        pickle.dump({b"label_names": names}, stream, protocol=2)


@pytest.mark.parametrize("bad", [b"/tmp/victim-abs", b"../../victim", b"..", b"a/b"])
def test_cifar_class_names_cannot_write_outside_the_cache(tmp_path, bad):
    source = tmp_path / "cifar-10-batches-py"
    write_cifar(source, [b"cat", bad])
    with pytest.raises(HeadstartError, match="not a safe folder name"):
        list_images(DataConfig(path=str(source)))
    assert not (tmp_path / "victim").exists() and not os.path.exists("/tmp/victim-abs")


@pytest.mark.parametrize("label", ["../../victim", "/tmp/x", ".."])
def test_csv_labels_must_be_safe_names(colour_folder, label):
    csv = colour_folder / "list.csv"
    csv.write_text(f"path,label\nred/000.png,red\nblue/000.png,{label}\n")
    with pytest.raises(HeadstartError, match="line 3: label"):
        list_images(DataConfig(path=str(csv)))


def test_an_empty_csv_label_is_a_row_not_labelled_yet(colour_folder):
    """A label sheet filled in part way (suggest's to_label.csv): empty rows are left out, not read as a class."""
    csv = colour_folder / "list.csv"
    csv.write_text("path,label\nred/000.png,red\nred/001.png,red\nblue/000.png,\n")
    with pytest.raises(
        HeadstartError, match=r"list.csv labels 1 class\(es\) \(red\); need at least 2 \(rows with an empty"
    ):
        list_images(DataConfig(path=str(csv)))


@pytest.mark.parametrize("name", ["../escaped", "/tmp/escaped-abs"])
def test_run_name_cannot_escape_out(colour_folder, tmp_path, capsys, name):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(colour_folder, tmp_path / "runs")))
    assert main(["train", "--recipe", str(recipe), "--name", name, "--quiet"]) == 2
    assert "run name" in one_line_error(capsys)
    assert not (tmp_path / "escaped").exists() and not os.path.exists("/tmp/escaped-abs")


# ----------------------------------------------------------------------------- 3: FIFOs and special files


@pytest.mark.slow
def test_fifo_in_a_class_folder_is_skipped_not_read(tmp_path):
    data = write_images(tmp_path / "data", {k: CLASS_COLOURS[k] for k in ("red", "blue")}, per_class=6)
    os.mkfifo(data / "red" / "pipe.jpg")
    os.symlink(data / "red" / "pipe.jpg", data / "blue" / "link-to-pipe.jpg")
    recipe = tiny_recipe(data, tmp_path / "runs")
    recipe["stages"] = [recipe["stages"][0]]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    done = run_cli(["train", "--recipe", str(tmp_path / "r.yaml"), "--quiet"])  # a hang fails here by timeout
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "tiny" / "best.pt").is_file()
    done = run_cli(["evaluate", str(tmp_path / "runs" / "tiny"), str(data)])
    assert done.returncode == 0, done.stderr
    done = run_cli(["predict", str(tmp_path / "runs" / "tiny"), str(data / "red" / "pipe.jpg")])
    assert done.returncode == 2 and "pipe.jpg" in done.stderr and "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- 4: decoded size is bounded


def test_extreme_aspect_image_is_skipped_not_upscaled(tmp_path, caplog):
    from headstart.data.images import prepare_data

    data = write_images(tmp_path / "data", {k: CLASS_COLOURS[k] for k in ("red", "blue")}, per_class=4)
    Image.fromarray(np.zeros((1, 40000, 3), np.uint8)).save(data / "red" / "strip.png")
    prep = {"image_size": 16, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}
    prepared = prepare_data(DataConfig(path=str(data), val_fraction=0.25), prep)
    kept = {p for p, _ in prepared.split.train + prepared.split.val}
    assert data / "red" / "strip.png" not in kept and len(kept) == 8
    assert any("strip.png" in r.getMessage() and "aspect" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- shared probe helpers


# `trained` (conftest.py): one tiny run shared by the session; probes that damage it work on copy_run's copy.


def copy_run(trained, tmp_path):
    """A private copy of the trained run, so a probe may damage it."""
    target = tmp_path / "run"
    shutil.copytree(trained[0], target)
    return target


# ----------------------------------------------------------------------------- 4 and 5: export descriptions


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exported")
    return headstart.export(trained[0], format="export", out=folder / "model.pt2")


BAD_DESCRIPTIONS = {
    "image_size 100000": (lambda d: d["preprocessing"].update(image_size=100000), "image_size"),
    "image_size 0": (lambda d: d["preprocessing"].update(image_size=0), "image_size"),
    "fewer classes than outputs": (lambda d: d.update(classes=d["classes"][:1] + ["other"][:0]), "classes"),
    "classes dropped to one": (lambda d: d.update(classes=["red"]), "classes"),
    "more classes than outputs": (lambda d: d.update(classes=d["classes"] + ["green"]), "outputs"),
    "repeated class": (lambda d: d.update(classes=["red", "red"]), "repeat"),
    "mean of two values": (lambda d: d["preprocessing"].update(mean=[0.5, 0.5]), "mean"),
    "std zero": (lambda d: d["preprocessing"].update(std=[0, 0.5, 0.5]), "std"),
    "std NaN": (lambda d: d["preprocessing"].update(std=[float("nan"), 0.5, 0.5]), "std"),
    "crop_pct 5": (lambda d: d["preprocessing"].update(crop_pct=5), "crop_pct"),
    "interpolation": (lambda d: d["preprocessing"].update(interpolation="lanczos9"), "interpolation"),
    "unknown preprocessing field": (lambda d: d["preprocessing"].update(gamma=2), "gamma"),
    "runtime": (lambda d: d.update(runtime="exe"), "runtime"),
    "format": (lambda d: d.pop("format"), "format"),
    "classes not a list": (lambda d: d.update(classes="red,blue"), "classes"),
}


@pytest.mark.parametrize("probe", BAD_DESCRIPTIONS)
def test_every_field_of_an_export_description_is_checked(exported, tmp_path, capsys, probe):
    change, named = BAD_DESCRIPTIONS[probe]
    model = tmp_path / "model.pt2"
    shutil.copy(exported, model)
    description = json.loads(Path(f"{exported}.json").read_text())
    change(description)
    Path(f"{model}.json").write_text(json.dumps(description))
    image = write_images(tmp_path / "img", {"red": CLASS_COLOURS["red"]}, per_class=1) / "red" / "000.png"
    code, out, err = cli(["predict", model, image], capsys, seconds=60)
    assert code == 2 and named in err and not out


# b"[" * 100000: nested deeper than the JSON decoder recurses (a RecursionError, not a ValueError).
@pytest.mark.parametrize("text", [b"{", b"\xff\xfe not json", b"[1, 2]", b"null", b"[" * 100000])
def test_malformed_export_json_is_a_one_line_error(exported, tmp_path, capsys, text):
    model = tmp_path / "model.pt2"
    shutil.copy(exported, model)
    Path(f"{model}.json").write_bytes(text)
    code, _, err = cli(["predict", model, tmp_path], capsys)
    assert code == 2 and "model.pt2.json" in err


def test_damaged_exported_model_is_a_one_line_error(exported, tmp_path, capsys):
    model = tmp_path / "model.pt2"
    model.write_bytes(Path(exported).read_bytes()[:200])
    shutil.copy(f"{exported}.json", f"{model}.json")
    code, _, err = cli(["predict", model, tmp_path], capsys)
    assert code == 2 and "cannot load" in err


# ----------------------------------------------------------------------------- 5 and 6: caches verify and repair themselves


def feature_cache_for(folder):
    from headstart.config.recipe import Recipe
    from headstart.core.hardware import pick_hardware
    from headstart.model.build import build_model
    from headstart.model.cut import find_cut
    from headstart.model.freeze import plan_freeze
    from headstart.training.features import FeatureCache

    recipe = Recipe.from_dict(tiny_recipe(folder, "/tmp/unused"))
    prep = {"image_size": 16, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}
    data = prepare_data(recipe.data, prep)
    torch.manual_seed(0)
    model = build_model(recipe.model, len(data.split.classes), 16).eval()
    cut = find_cut(model, plan_freeze(model, "backbone", "frozen"), 16)
    hw = pick_hardware("cpu", "fp32", channels_last=False)

    def fresh():
        cache = FeatureCache.for_recipe(model, data, hw, recipe)
        cache.use(cut)
        return cache

    return fresh


def truncate(path):
    path.write_bytes(path.read_bytes()[:-64])


def shorter(path):
    np.save(path, np.load(path)[:-1])


def reversed_rows(path):
    np.save(path, np.load(path)[::-1].copy())


TAMPERED = {"truncated": truncate, "shorter": shorter, "reversed": reversed_rows, "missing": Path.unlink}


@pytest.mark.parametrize("file", ["train0.npy", "val.npy"])
@pytest.mark.parametrize("how", TAMPERED)
def test_a_damaged_feature_cache_entry_is_rebuilt_never_reused(colour_folder, caplog, how, file):
    fresh = feature_cache_for(colour_folder)
    first = fresh()
    expected = {name: np.array(a) for name, a in first._arrays.items()}
    [entry] = list((Path(os.environ["HEADSTART_CACHE"]) / "features").iterdir())
    TAMPERED[how](entry / file)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = fresh()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert again.reused is False and len(warnings) == 1 and "rebuilding" in warnings[0], warnings
    assert again._arrays.keys() == expected.keys()
    for name, stored in again._arrays.items():
        assert np.array_equal(stored, expected[name])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert fresh().reused  # repaired: the next run reuses it without a word
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def disk_prepared(folder, monkeypatch):
    from headstart.data import images as data_module

    monkeypatch.setattr(data_module, "DECODED_CACHE_BUDGET", 0)
    prep = {"image_size": 16, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}
    return prepare_data(DataConfig(path=str(folder)), prep)


def reverse_index(path):
    np.save(path, np.load(path)[::-1].copy())


def reverse_kept(path):
    stored = json.loads(path.read_text())
    stored["kept"].reverse()
    path.write_text(json.dumps(stored))


DAMAGED_IMAGES = {
    ("pixels.bin", "truncated"): truncate,
    ("pixels.bin", "missing"): Path.unlink,
    ("index.npy", "reversed"): reverse_index,
    ("index.npy", "missing"): Path.unlink,
    ("kept.json", "reversed"): reverse_kept,
    ("kept.json", "missing"): Path.unlink,
    ("MANIFEST.json", "missing"): Path.unlink,
}


@pytest.mark.parametrize("damage", DAMAGED_IMAGES, ids=lambda d: "-".join(d))
def test_a_damaged_decoded_image_entry_is_rebuilt_with_one_warning(colour_folder, monkeypatch, caplog, damage):
    first = disk_prepared(colour_folder, monkeypatch)
    reference = [np.array(first.train.arrays[i]) for i in range(len(first.train))]
    entries = sorted((Path(os.environ["HEADSTART_CACHE"]) / "images").iterdir())
    train_entry = next(e for e in entries if len(json.loads((e / "kept.json").read_text())["kept"]) == len(reference))
    DAMAGED_IMAGES[damage](train_entry / damage[0])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = disk_prepared(colour_folder, monkeypatch)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "rebuilding" in warnings[0], warnings
    assert again.split.train == first.split.train
    assert all(np.array_equal(again.train.arrays[i], reference[i]) for i in range(len(reference)))


def test_a_digits_folder_missing_a_file_is_rebuilt(caplog):
    from headstart.data.datasets import digits_folder

    folder = digits_folder()
    victim = next((folder / "3").iterdir())
    victim.unlink()
    with caplog.at_level(logging.WARNING):
        assert digits_folder() == folder
    assert victim.is_file() and "rebuilding" in caplog.text


def test_staging_folders_of_killed_builds_are_removed(colour_folder, monkeypatch):
    images = Path(os.environ["HEADSTART_CACHE"]) / "images"
    dead = images / ".staging-4194305-abc-xyz"  # beyond Linux's largest process id: its builder is gone
    alive = images / f".staging-{os.getpid()}-abc-xyz"  # a build in progress: left alone
    legacy = images / ".images-oldbuild"
    for folder in (dead, alive, legacy):
        folder.mkdir(parents=True)
        (folder / "pixels.bin").write_bytes(b"\0" * 4096)
    os.utime(legacy, (0, 0))
    disk_prepared(colour_folder, monkeypatch)
    assert not dead.exists() and not legacy.exists() and alive.is_dir()
    assert not [p for p in images.iterdir() if p.name.startswith(".staging-") and p != alive]


def test_a_failed_build_leaves_no_staging_folder(colour_folder, monkeypatch):
    from headstart.data import images as data_module

    def fail(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data_module, "decode_all", fail)
    with pytest.raises(HeadstartError, match="cannot write .*images.*no space left"):
        disk_prepared(colour_folder, monkeypatch)
    assert not list((Path(os.environ["HEADSTART_CACHE"]) / "images").iterdir())


# ----------------------------------------------------------------------------- 8: one-line errors, not tracebacks


@pytest.mark.parametrize("spec", ["resize:abcx", "noise:abc", "conv:x", "resize:", "resize:-2x", "noise:nan", "bogus"])
def test_bad_adapter_specs_are_one_line_errors(capsys, spec):
    code, _, err = cli(["train", "--adapter", spec, "--dry-run"], capsys)
    assert code == 2 and ("--adapter" in err or "adapters" in err)


@pytest.mark.parametrize(
    "flags",
    [
        ["--seed", "-1"],
        ["--seed", str(2**70)],
        ["--head-hidden", str(10**20)],
        ["--weight-decay", "inf"],
        ["--lr", "nan"],
        ["--image-size", "100000"],
        ["--workers", "100000"],
    ],
    ids=lambda f: " ".join(f)[:24],
)
def test_out_of_range_numbers_are_refused_before_anything_runs(colour_folder, tmp_path, capsys, flags):
    code, _, err = cli(["train", colour_folder, "--out", tmp_path / "runs", *flags], capsys)
    assert code == 2 and "field" in err and not (tmp_path / "runs").exists()


def test_non_utf8_recipe_is_a_one_line_error(tmp_path, capsys):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("data: {path: café}\n".encode("latin-1"))
    code, _, err = cli(["train", "--recipe", recipe, "--dry-run"], capsys)
    assert code == 2 and "latin1.yaml" in err


def test_non_utf8_file_names_train_and_predict(tmp_path, capsys):
    data = write_images(tmp_path / "data", {k: CLASS_COLOURS[k] for k in ("red", "blue")}, per_class=5)
    latin = os.fsdecode(b"caf\xe9.png")  # what Linux hands Python for a Latin-1 name
    shutil.copy(data / "red" / "000.png", data / "red" / latin)
    recipe = tiny_recipe(data, tmp_path / "runs", stages=[{"name": "head", "epochs": 1, "freeze": "backbone"}])
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    code, _, err = cli(["train", "--recipe", tmp_path / "r.yaml", "--quiet"], capsys)
    assert code == 0, err
    assert headstart.load(tmp_path / "runs" / "tiny").predict([data / "red" / latin], top_k=1)[0][0][0] in (
        "red",
        "blue",
    )


@pytest.mark.parametrize("k", ["-1", "0"])
def test_top_k_below_one_is_refused(trained, capsys, k):
    code, out, err = cli(["predict", trained[0], trained[1] / "red" / "000.png", "--top-k", k], capsys)
    assert code == 2 and "top-k" in err and not out


def test_decompression_bomb_in_predict_is_a_one_line_error(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses beyond twice this
    Image.new("L", (100, 100)).save(tmp_path / "bomb.png")
    code, _, err = cli(["predict", trained[0], tmp_path / "bomb.png"], capsys)
    assert code == 2 and "bomb.png" in err


def truncated_pickle(folder):
    path = folder / "data_batch_1"
    path.write_bytes(path.read_bytes()[:50])


def wrong_shape(folder):
    with open(folder / "data_batch_1", "wb") as stream:
        pickle.dump({b"labels": [0, 1], b"data": np.zeros((2, 100), np.uint8), b"filenames": [b"a", b"b"]}, stream)


def label_out_of_range(folder):
    with open(folder / "test_batch", "wb") as stream:
        rows = np.zeros((2, 3072), np.uint8)
        pickle.dump({b"labels": [0, 7], b"data": rows, b"filenames": [b"a.png", b"b.png"]}, stream)


def not_a_dict(folder):
    with open(folder / "batches.meta", "wb") as stream:
        pickle.dump([b"cat", b"dog"], stream)


def missing_key(folder):
    with open(folder / "test_batch", "wb") as stream:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, stream)


@pytest.mark.parametrize("damage", [truncated_pickle, wrong_shape, label_out_of_range, not_a_dict, missing_key])
def test_malformed_cifar_batches_are_one_line_errors(tmp_path, capsys, damage):
    source = tmp_path / "cifar-10-batches-py"
    write_cifar(source, [b"cat", b"dog"])
    damage(source)
    code, _, err = cli(["train", source, "--out", tmp_path / "runs", "--quiet"], capsys)
    assert code == 2 and "cifar-10-batches-py" in err and not (tmp_path / "runs").exists()
    cache = Path(os.environ["HEADSTART_CACHE"]) / "cifar"
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.name.startswith(".staging-")]


HISTORY_DAMAGE = {
    "not json": b"[{",
    "not utf-8": b"\xff\xfe\x00",
    "nested too deep": b"[" * 100000,
    "a mapping": b'{"epoch": 1}',
    "row without val_loss": b'[{"stage": "head", "epoch": 1}]',
    "string loss": b'[{"stage": "h", "epoch": 1, "train_loss": "x", "train_acc": 1, "val_loss": 1, "val_acc": 1, "lr": 1, "seconds": 1}]',
}


@pytest.mark.parametrize("command", ["compare", "report", "resume"])
@pytest.mark.parametrize("damage", HISTORY_DAMAGE)
def test_damaged_history_is_a_one_line_error(trained, tmp_path, capsys, command, damage):
    run = copy_run(trained, tmp_path)
    (run / "history.json").write_bytes(HISTORY_DAMAGE[damage])
    args = {"compare": ["compare", run], "report": ["report", run], "resume": ["train", "--resume", run]}[command]
    code, _, err = cli(args, capsys)
    assert code == 2 and "history.json" in err


RECIPE_DAMAGE = {
    "not yaml": b"data: [",
    "not utf-8": b"\xff\xfe\x00\x00",
    "a list": b"- 1\n",
    "bad field": b"run: {seed: x}",
}


@pytest.mark.parametrize("command", ["compare", "resume"])
@pytest.mark.parametrize("damage", RECIPE_DAMAGE)
def test_damaged_recipe_yaml_is_a_one_line_error(trained, tmp_path, capsys, command, damage):
    run = copy_run(trained, tmp_path)
    (run / "recipe.yaml").write_bytes(RECIPE_DAMAGE[damage])
    args = {"compare": ["compare", run], "resume": ["train", "--resume", run]}[command]
    code, _, err = cli(args, capsys)
    assert code == 2 and "recipe.yaml" in err


# ----------------------------------------------------------------------------- 10: messages that say what happened


def test_a_diverging_stage_is_warned_about_not_silent(colour_folder, tmp_path, capsys):
    # AdamW at lr 1e9 takes steps of ~1e9 whatever the gradient: the loss reaches ~1e18 and stays finite.
    stage = {"name": "wild", "epochs": 2, "freeze": "none", "lr": 1e9, "weight_decay": 0}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe(colour_folder, tmp_path / "runs", stages=[stage])))
    code, out, err = cli(["train", "--recipe", tmp_path / "r.yaml"], capsys)
    assert code == 0 and out.count("the stage diverged; lower the learning rate (1e+09)") == 1, out + err
    assert "diverged" in (tmp_path / "runs" / "tiny" / "summary.txt").read_text()


def test_infinite_weight_decay_is_refused_and_a_huge_one_is_named(colour_folder, tmp_path, capsys):
    code, _, err = cli(["train", colour_folder, "--weight-decay", "inf", "--dry-run"], capsys)
    assert code == 2 and "weight_decay" in err and "finite" in err
    recipe = tiny_recipe(
        colour_folder, tmp_path / "runs", stages=[{"name": "s", "epochs": 1, "freeze": "none", "weight_decay": 1e30}]
    )
    with pytest.raises(HeadstartError) as caught:
        headstart.train(recipe, quiet=True)
    assert "weight_decay" in str(caught.value) and "learning rate" not in str(caught.value)


def test_a_failure_in_epoch_one_does_not_claim_files_that_do_not_exist(colour_folder, tmp_path):
    recipe = tiny_recipe(
        colour_folder,
        tmp_path / "runs",
        stages=[{"name": "s", "epochs": 1, "freeze": "none", "optimizer": "sgd", "lr": 1e30}],
    )
    with pytest.raises(HeadstartError) as caught:
        headstart.train(recipe, quiet=True)
    message = str(caught.value)
    assert "best.pt" not in message and "keeps recipe.yaml (no epoch finished)" in message
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == ["recipe.yaml"]


@pytest.mark.parametrize("after_epochs", [0, 1])
def test_ctrl_c_names_the_run_folder(colour_folder, tmp_path, capsys, monkeypatch, after_epochs):
    from headstart.training.loop import Loop

    real, calls = Loop.epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > after_epochs:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(Loop, "epoch", interrupted)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe(colour_folder, tmp_path / "runs")))
    with within(120):
        code = main(["train", "--recipe", str(tmp_path / "r.yaml"), "--quiet"])
    err = capsys.readouterr().err
    run_dir = tmp_path / "runs" / "tiny"
    assert code == 130 and "RUN_DIR" not in err and str(run_dir) in err
    assert ("--resume" in err) == (after_epochs > 0)


def test_duplicated_csv_rows_are_used_once_with_a_warning(colour_folder, caplog):
    # Before the fix each repeat was a separate sample: 8 copies of one image leaked into train and val.
    csv = colour_folder / "list.csv"
    rows = [f"{c}/{i:03d}.png,{c}" for c in ("red", "blue") for i in range(6)] + ["red/000.png,red"] * 8
    csv.write_text("path,label\n" + "\n".join(rows) + "\n")
    with caplog.at_level("WARNING", logger="headstart"):
        split = list_images(DataConfig(path=str(csv)))
    paths = [p for p, _ in split.train + split.val]
    assert len(paths) == len(set(paths)) == 12
    assert "lists 8 row(s) twice" in caplog.text
    csv.write_text("path,label\nred/000.png,red\nred/000.png,blue\n")
    with pytest.raises(HeadstartError, match="line 3: 000.png is listed again with another label"):
        list_images(DataConfig(path=str(csv)))


def test_bom_csv_header_is_read_as_a_header(colour_folder):
    # Excel's "CSV UTF-8" starts with a byte-order mark; the header then read as a data row (class 'label').
    csv = colour_folder / "excel.csv"
    rows = [f"{c}/{i:03d}.png,{c}" for c in ("red", "blue") for i in range(4)]
    csv.write_bytes(("path,label\r\n" + "\r\n".join(rows) + "\r\n").encode("utf-8-sig"))
    split = list_images(DataConfig(path=str(csv)))
    assert split.classes == ["blue", "red"] and len(split.train) + len(split.val) == 8


def test_non_utf8_csv_is_a_one_line_error(colour_folder, tmp_path, capsys):
    csv = colour_folder / "latin1.csv"
    csv.write_bytes("path,label\nred/000.png,caf\u00e9\nblue/000.png,blue\n".encode("latin-1"))
    code = main(["train", str(csv), "--out", str(tmp_path / "runs")])
    assert code == 2
    assert "is not UTF-8 text" in one_line_error(capsys)


# ----------------------------------------------------------------------------- code-execution payloads: all refused


class Payload:
    """Pickled, it asks the loader to run a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pickle_payload(marker: Path, path: Path) -> None:
    torch.save({"model": Payload(marker), "format": "headstart-checkpoint-1"}, path)


YAML_PAYLOAD = "!!python/object/apply:os.system ['touch {marker}']\n"


def payload_probe(where: str, run: Path, data: Path, tmp_path: Path, marker: Path) -> list:
    """Plant the payload in one place a command reads; return that command's arguments."""
    if where in ("best.pt", "last.pt"):
        pickle_payload(marker, run / where)
        return {"best.pt": ["predict", run, data / "red" / "000.png"], "last.pt": ["train", "--resume", run]}[where]
    if where == "weights file":
        pickle_payload(marker, tmp_path / "weights.pt")
        return [
            "train",
            data,
            "--backbone",
            "headstart_cnn",
            "--weights",
            f"file:{tmp_path / 'weights.pt'}",
            "--out",
            tmp_path,
        ]
    if where == "lr-find --from":
        pickle_payload(marker, run / "best.pt")
        return ["lr-find", run / "recipe.yaml", "--from", run, "--steps", "5", "--out", tmp_path]
    if where in ("cifar meta", "cifar batch"):
        source = tmp_path / "cifar-10-batches-py"
        write_cifar(source, [b"cat", b"dog"])
        target = source / ("batches.meta" if where == "cifar meta" else "data_batch_1")
        target.write_bytes(pickle.dumps({b"label_names": Payload(marker)}, protocol=2))
        return ["train", source, "--out", tmp_path]
    text = YAML_PAYLOAD.format(marker=marker)
    if where == "recipe":
        (tmp_path / "r.yaml").write_text(text)
        return ["train", "--recipe", tmp_path / "r.yaml", "--dry-run"]
    if where == "sweep file":
        (tmp_path / "s.yaml").write_text("vary: " + text)
        return ["sweep", tmp_path / "s.yaml"]
    if where == "run recipe.yaml":
        (run / "recipe.yaml").write_text(text)
        return ["compare", run, "--out", tmp_path]
    if where == "resume recipe.yaml":
        (run / "recipe.yaml").write_text(text)
        return ["train", "--resume", run]
    (run.parent / "sweep.yaml").write_text(text)  # a sweep folder's own file
    return ["compare", run.parent, "--out", tmp_path]


PAYLOAD_PLACES = [
    "best.pt",
    "last.pt",
    "weights file",
    "lr-find --from",
    "cifar meta",
    "cifar batch",
    "recipe",
    "sweep file",
    "run recipe.yaml",
    "resume recipe.yaml",
    "sweep.yaml",
]


def rewrite_pt2(source: Path, target: Path, change) -> None:
    """A copy of a .pt2 archive with `change(name, data) -> [(name, data), ...]` applied to every entry."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            for name, data in change(info.filename, old.read(info)):
                new.writestr(name, data)
    shutil.copy(sidecar_path(source), sidecar_path(target))


def pickled_weight(marker: Path):
    """Mark the first weight `use_pickle` and store the payload in its place, as torch's loader would read it."""

    def change(name: str, data: bytes):
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return [(name, json.dumps(config))]
        if name.endswith("/data/weights/weight_0"):
            buffer = io.BytesIO()
            torch.save(Payload(marker), buffer)
            return [(name, buffer.getvalue())]
        return [(name, data)]

    return change


def unsafe_sample_inputs(marker: Path):
    def change(name: str, data: bytes):
        if "/data/sample_inputs/" in name:
            buffer = io.BytesIO()
            torch.save(Payload(marker), buffer)
            return [(name, buffer.getvalue())]
        return [(name, data)]

    return change


def extra_entry(entry: str):
    def change(name: str, data: bytes):
        root = name.split("/")[0]
        return [(name, data)] + ([(f"{root}/{entry}", b"\0" * 16)] if name.endswith("archive_format") else [])

    return change


PT2_PAYLOADS = {
    "pickled weight": pickled_weight,
    "sample inputs needing the unsafe unpickler": unsafe_sample_inputs,
    "opaque object constant": lambda marker: extra_entry("data/constants/opaque_obj_0"),
    "compiled library": lambda marker: extra_entry("data/aotinductor/model/model.so"),
    "legacy pickled weights": lambda marker: extra_entry("data/weights/model.pt"),
}


@pytest.mark.parametrize("payload", PT2_PAYLOADS)
@pytest.mark.parametrize("command", ["predict", "evaluate", "serve"])
def test_pt2_archives_that_would_unpickle_are_refused(exported, trained, tmp_path, capsys, payload, command):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil" / "model.pt2"
    evil.parent.mkdir()
    rewrite_pt2(exported, evil, PT2_PAYLOADS[payload](marker))
    args = {
        "predict": ["predict", evil, trained[1] / "red" / "000.png"],
        "evaluate": ["evaluate", evil, trained[1]],
        "serve": ["serve", evil, "--port", "0"],
    }[command]
    code, _, err = cli(args, capsys)
    assert code == 2 and not marker.exists()
    assert "refusing to load" in err and "could run code" in err


def test_a_compressed_pt2_archive_is_refused_not_inflated(exported, tmp_path, capsys):
    """torch.export.save stores entries uncompressed; a deflated one could expand to gigabytes from a small file."""
    squeezed = tmp_path / "squeezed" / "model.pt2"
    squeezed.parent.mkdir()
    with zipfile.ZipFile(exported) as old, zipfile.ZipFile(squeezed, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info))
    shutil.copy(sidecar_path(exported), sidecar_path(squeezed))
    code, _, err = cli(["predict", squeezed, exported.parent / "x.png"], capsys)
    assert code == 2 and "is compressed" in err


def test_a_headstart_pt2_export_passes_the_archive_check(exported):
    check_pt2_archive(exported)
    assert headstart.load(exported).predict([Image.new("RGB", (8, 8))])


@pytest.mark.parametrize("where", PAYLOAD_PLACES)
def test_code_execution_payloads_are_refused(trained, tmp_path, capsys, where):
    run = copy_run(trained, tmp_path)
    marker = tmp_path / "pwned"
    args = payload_probe(where, run, trained[1], tmp_path, marker)
    code, _, _ = cli(args, capsys)
    assert code == 2 and not marker.exists()


@pytest.mark.slow
def test_non_utf8_file_names_print_on_a_strict_utf8_console(trained, tmp_path):
    latin = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.png"))
    shutil.copy(trained[1] / "red" / "000.png", latin)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), PYTHONIOENCODING="utf-8:strict")  # as en_US.UTF-8
    done = subprocess.run(
        [sys.executable, "-c", HANG_PROBE, "predict", str(trained[0]), str(tmp_path)],
        capture_output=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
    assert b"caf\xe9.png" in done.stdout  # the name's own bytes, as ls prints them


@pytest.mark.parametrize("name", ["line\nbreak", "carriage\rreturn"])
def test_an_error_quoting_a_path_with_a_newline_stays_one_line(capsys, name):
    code, _, err = cli(["summary", name], capsys)
    assert code == 2 and ("\\n" in err or "\\r" in err)


@pytest.mark.parametrize("command", [["report"], ["compare"], ["export"], ["summary"], ["train", "--dry-run"]])
def test_a_tilde_user_that_does_not_exist_is_taken_literally(capsys, command):
    code, _, err = cli([*command, "~nosuchuser/x"], capsys)  # Path.expanduser raised RuntimeError here
    assert code in (0, 2)
