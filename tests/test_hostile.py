"""Hostile input: names that climb out of their folder, special files, files a sweep did not write.

Each probe asserts a one-line error (exit 2) or correct handling, and that nothing outside the
run or cache folder is touched. Probes that could hang run in a subprocess under a timeout.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

import headstart
from headstart.cli import main
from headstart.data import list_images
from headstart.errors import HeadstartError
from headstart.paths import safe_component
from headstart.recipe import DataConfig
from tests.conftest import CLASS_COLOURS, tiny_recipe, write_images

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


@pytest.mark.parametrize("label", ["../../victim", "/tmp/x", "", ".."])
def test_csv_labels_must_be_safe_names(colour_folder, label):
    csv = colour_folder / "list.csv"
    csv.write_text(f"path,label\nred/000.png,red\nblue/000.png,{label}\n")
    with pytest.raises(HeadstartError, match="line 3: label"):
        list_images(DataConfig(path=str(csv)))


@pytest.mark.parametrize("name", ["../escaped", "/tmp/escaped-abs"])
def test_run_name_cannot_escape_out(colour_folder, tmp_path, capsys, name):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(colour_folder, tmp_path / "runs")))
    assert main(["train", "--recipe", str(recipe), "--name", name, "--quiet"]) == 2
    assert "run name" in one_line_error(capsys)
    assert not (tmp_path / "escaped").exists() and not os.path.exists("/tmp/escaped-abs")


# ----------------------------------------------------------------------------- 3: FIFOs and special files


HANG_PROBE = """
import sys
from headstart.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_cli(args, timeout=120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run(
        [sys.executable, "-c", HANG_PROBE, *args], capture_output=True, text=True, timeout=timeout, env=env
    )


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
    from headstart.data import prepare_data

    data = write_images(tmp_path / "data", {k: CLASS_COLOURS[k] for k in ("red", "blue")}, per_class=4)
    Image.fromarray(np.zeros((1, 40000, 3), np.uint8)).save(data / "red" / "strip.png")
    prep = {"image_size": 16, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}
    prepared = prepare_data(DataConfig(path=str(data), val_fraction=0.25), prep)
    kept = {p for p, _ in prepared.split.train + prepared.split.val}
    assert data / "red" / "strip.png" not in kept and len(kept) == 8
    assert any("strip.png" in r.getMessage() and "aspect" in r.getMessage() for r in caplog.records)


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
