"""Hugging Face data sets as a data source: save_to_disk folders (splits or one Dataset), parquet folders, the Hub."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import headstart
from headstart.config.recipe import DataConfig
from headstart.core.errors import HeadstartError
from headstart.data.layouts import list_images
from tests.conftest import CLASS_COLOURS, tiny_recipe
from tests.probes import cli

datasets = pytest.importorskip("datasets")

NAMES = ["red", "blue"]


def colour_rows(count: int, seed: int) -> dict[str, list]:
    """`count` noisy images per class of NAMES (24 px, PNG-encoded as Hub data sets hold them) and their labels."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(NAMES):
        for _ in range(count):
            pixels = np.clip(np.array(CLASS_COLOURS[name]) + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            images.append(Image.fromarray(pixels))
            labels.append(label)
    return {"picture": images, "colour": labels}


FEATURES = {"picture": "Image", "colour": "ClassLabel"}


def dataset(count: int, seed: int):
    features = datasets.Features({"picture": datasets.Image(), "colour": datasets.ClassLabel(names=NAMES)})
    return datasets.Dataset.from_dict(colour_rows(count, seed), features=features)


@pytest.fixture
def saved_dict(tmp_path: Path) -> Path:
    """A DatasetDict (train 8, validation 3, test 2 per class) saved with save_to_disk."""
    splits = {"train": dataset(8, 0), "validation": dataset(3, 1), "test": dataset(2, 2)}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "colours"))
    return tmp_path / "colours"


def test_a_saved_dataset_dict_keeps_its_splits_and_its_pixels(saved_dict):
    split = list_images(DataConfig(path=str(saved_dict)))
    assert split.classes == sorted(NAMES) and split.name == "colours"
    assert (len(split.train), len(split.val), len(split.test)) == (16, 6, 4)  # train / validation / test as saved
    assert "Hugging Face data set colours" in split.layout
    # the images are the data set's own bytes, decoded by headstart as any file is
    original = datasets.load_from_disk(str(saved_dict))["validation"]
    written = sorted(path for path, _ in split.val if path.parent.name == "blue")
    expected = [np.asarray(row["picture"]) for row in original if row["colour"] == NAMES.index("blue")]
    assert len(written) == 3 and np.array_equal(
        np.stack([np.asarray(Image.open(p)) for p in written]), np.stack(expected)
    )
    assert all(path.suffix == ".png" for path, _ in split.train)


def test_training_on_a_saved_dataset_goes_through_the_decode_path(saved_dict, tmp_path, capsys):
    result = headstart.train(tiny_recipe(saved_dict, tmp_path / "runs", run={"name": None}), quiet=True)
    assert result.classes == sorted(NAMES) and result.run_dir.name.startswith("colours-")  # named after the data set
    assert max(row["val_acc"] for row in result.history) == 1.0  # red vs blue, learnt
    assert result.test is not None and result.test["images"] == 4  # the saved test split, scored once
    predictor = headstart.load(result.run_dir)
    evaluation = predictor.evaluate(saved_dict)  # the run's own source: its held-out test split
    assert evaluation.count == 4
    datasets.DatasetDict({"train": dataset(2, 5), "validation": dataset(5, 6)}).save_to_disk(str(tmp_path / "more"))
    assert predictor.evaluate(tmp_path / "more").count == 10  # another saved data set: its validation split


def test_a_single_saved_dataset_is_split_here(tmp_path):
    dataset(10, 0).save_to_disk(str(tmp_path / "one"))
    split = list_images(DataConfig(path=str(tmp_path / "one"), val_fraction=0.2, test_fraction=0.2))
    assert (len(split.train), len(split.val), len(split.test)) == (12, 4, 4)


def test_a_parquet_folder_has_its_splits_from_the_file_names(tmp_path):
    (tmp_path / "pq" / "data").mkdir(parents=True)
    dataset(8, 0).to_parquet(str(tmp_path / "pq" / "data" / "train-00000-of-00001.parquet"))
    dataset(3, 1).to_parquet(str(tmp_path / "pq" / "data" / "validation-00000-of-00001.parquet"))
    split = list_images(DataConfig(path=str(tmp_path / "pq")))
    assert split.classes == sorted(NAMES) and (len(split.train), len(split.val), len(split.test)) == (16, 6, 0)


def test_plain_parquet_columns_are_named_with_flags(tmp_path, capsys):
    """Parquet written without datasets' features: an image struct and string labels, chosen by --image-column/--label-column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = colour_rows(6, 0)
    encoded = []
    for image in rows["picture"]:
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    (tmp_path / "plain").mkdir()
    table = pa.table({"img": encoded, "name": [NAMES[k] for k in rows["colour"]], "other": list(range(12))})
    pq.write_table(table, tmp_path / "plain" / "train.parquet")
    code, out, _ = cli(
        ["train", tmp_path / "plain", "--image-column", "img", "--label-column", "name", "--dry-run"], capsys
    )
    assert code == 0 and "image_column: img\n  label_column: name\n" in out
    with pytest.raises(
        HeadstartError, match=r"no Image column; name the one to use with data.image_column \(--image-column\)"
    ):
        list_images(DataConfig(path=str(tmp_path / "plain")))
    split = list_images(DataConfig(path=str(tmp_path / "plain"), image_column="img", label_column="name"))
    assert split.classes == sorted(NAMES) and len(split.train) + len(split.val) == 12
    with pytest.raises(HeadstartError, match="has no column 'nope'.*its columns: img, name, other"):
        list_images(DataConfig(path=str(tmp_path / "plain"), image_column="img", label_column="nope"))


def test_bad_hf_input_is_one_line(tmp_path, monkeypatch, capsys):
    splits = {"train": dataset(2, 0), "unsupervised": dataset(2, 1)}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "odd"))
    capsys.readouterr()  # datasets' own progress lines
    code, _, err = cli(["train", tmp_path / "odd", "--out", tmp_path / "runs"], capsys)
    assert code == 2 and "split 'unsupervised'" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here either way: fail at once, not after timeouts
    code, _, err = cli(["train", "hf://datasets/someone/beans", "--out", tmp_path / "runs"], capsys)
    assert (
        code == 2 and "could not be downloaded" in err and "load_dataset('someone/beans').save_to_disk('beans')" in err
    )
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if the hf extra were not installed
    with pytest.raises(HeadstartError, match=r"need the datasets package: pip install .*\[hf\]"):
        list_images(DataConfig(path=str(tmp_path / "odd"), label_column="colour"))
