"""Hugging Face data sets as a data source: a `save_to_disk` folder, a folder of parquet files, or hf://datasets/NAME.

A saved DatasetDict keeps its splits (train / validation / test, named as split folders may be:
headstart.data.splits.SPLIT_NAMES); a single saved Dataset, or parquet files without split names,
are split here as class folders are. Parquet files are grouped into splits by `datasets`' own
rules (train-*.parquet, data/validation-*.parquet, test/….parquet). The image column is the one
with an `Image` feature and the label column the one with a `ClassLabel` feature (its names are
the classes), unless data.image_column / data.label_column name them.

As CIFAR's batch files are (datasets.py), the images are written once to class folders under the
cache, as the encoded bytes the data set holds (nothing is decoded or re-encoded here), and listed
as any split folders are: decoding, the decoded-image cache and splitting are the folder's.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from headstart.config.hf_path import HF_PREFIX
from headstart.config.recipe import DataConfig
from headstart.core import cache
from headstart.core.errors import HeadstartError
from headstart.core.install import install_hint
from headstart.core.paths import safe_component
from headstart.core.progress import progress, shown
from headstart.data.datasets import cache_root
from headstart.data.folder_layout import list_folder
from headstart.data.splits import SPLIT_NAMES, DataSplit

log = logging.getLogger(__name__)


def _datasets():
    try:
        import datasets
    except ImportError:
        raise HeadstartError(f"Hugging Face data sets need the datasets package: {install_hint('hf')}") from None
    return datasets


@contextmanager
def quiet_bars() -> Iterator[None]:
    """`datasets`' own progress bars only where headstart's are drawn (a terminal, not --quiet)."""
    datasets = _datasets()
    was_off = datasets.are_progress_bars_disabled()
    if not shown():
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            datasets.enable_progress_bars()


def saved_kind(path: Path) -> str | None:
    """'dict' or 'dataset' for a `save_to_disk` folder, None for anything else (a listing, no file read)."""
    if (path / "dataset_dict.json").is_file():
        return "dict"
    return "dataset" if (path / "state.json").is_file() and (path / "dataset_info.json").is_file() else None


def parquet_files(path: Path) -> list[Path]:
    """Parquet files up to two levels down (train-*.parquet, data/train-*.parquet, train/0000.parquet)."""
    return sorted([*path.glob("*.parquet"), *path.glob("*/*.parquet")])


def is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and (saved_kind(path) is not None or bool(parquet_files(path)))


def load_splits(path: Path, scratch: Path) -> dict[str | None, Any]:
    """Split name (None: a single Dataset to split here) -> Dataset; parquet is read into `scratch` (then dropped)."""
    datasets = _datasets()
    with quiet_bars():
        try:
            if saved_kind(path) is None:
                loaded = datasets.load_dataset("parquet", data_dir=str(path), cache_dir=str(scratch))
            else:
                loaded = datasets.load_from_disk(str(path))
        except (OSError, ValueError, TypeError) as err:  # a damaged folder: what datasets said, in one line
            raise HeadstartError(f"{path}: not a readable Hugging Face data set ({str(err).strip()[:200]})") from None
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {None: loaded}


def the_column(features: dict[str, Any], given: str | None, kind: type, field: str, where: str) -> str:
    """The column `given` (checked), else the one whose feature is a `kind`; a one-line error otherwise."""
    flag = "--" + field.replace("_", "-")
    if given is not None:
        if given not in features:
            raise HeadstartError(f"{where} has no column '{given}' (data.{field}); its columns: {', '.join(features)}")
        return given
    found = [name for name, feature in features.items() if isinstance(feature, kind)]
    if len(found) != 1:
        held = f"{len(found)} {kind.__name__} columns ({', '.join(found)})" if found else f"no {kind.__name__} column"
        raise HeadstartError(
            f"{where} has {held}; name the one to use with data.{field} ({flag}); its columns: {', '.join(features)}"
        )
    return found[0]


def split_folders(splits: dict[str | None, Any], where: str) -> dict[str | None, str | None]:
    """Data set split -> the split folder it is written to (train / val / test; None: class folders at the top)."""
    folders: dict[str | None, str | None] = {}
    for name in splits:
        folder = None if name is None else SPLIT_NAMES.get(name.lower())
        if name is not None and folder is None:
            raise HeadstartError(
                f"{where} has a split '{name}' headstart does not know; splits are named train, validation (val, "
                "valid, dev) or test (eval): save the data set with those"
            )
        if folder is not None and folder in folders.values():
            raise HeadstartError(f"{where} has two {folder} splits ({', '.join(n for n in splits if n)}); keep one")
        folders[name] = folder
    if None not in folders and "train" not in folders.values():
        raise HeadstartError(f"{where} has splits {', '.join(n for n in splits if n)} but no train split")
    return folders


def image_bytes(cell: dict[str, Any], where: str) -> bytes:
    """The encoded image a row holds (an Image cell: its bytes, or the file its path names)."""
    if cell.get("bytes"):
        return cell["bytes"]
    if cell.get("path") and Path(cell["path"]).is_file():
        return Path(cell["path"]).read_bytes()
    raise HeadstartError(f"{where}: an image holds no bytes and its path {cell.get('path')!r} is not a file")


def suffix_of(data: bytes) -> str:
    """'.png', '.jpeg', …: the format Pillow reads from the header; '.bin' for what it cannot (skipped when decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return f".{(image.format or 'bin').lower()}"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return ".bin"


def write_split(dataset, image: str, label: str, target: Path, where: str) -> int:
    """Each labelled row's image as target/<class>/<row>.<format>; returns how many rows had no label."""
    datasets = _datasets()
    feature = dataset.features[label]
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None
    try:
        rows = dataset.select_columns([image, label]).cast_column(image, datasets.Image(decode=False))
    except (ValueError, TypeError) as err:
        raise HeadstartError(f"{where}: column '{image}' cannot be read as images ({str(err).strip()[:120]})") from None
    unlabelled = 0
    for index, row in enumerate(progress(rows, "writing images", total=len(rows), unit="img")):
        value = row[label]
        if value is None or (names is not None and value == -1):  # ClassLabel's -1: no label
            unlabelled += 1
            continue
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise HeadstartError(
                f"{where}: label column '{label}' holds {type(value).__name__} values; one class per image is read"
            )
        name = safe_component(names[value] if names is not None else str(value), f"{where}: class name")
        data = image_bytes(row[image], where)
        (target / name).mkdir(parents=True, exist_ok=True)
        (target / name / f"{index:06d}{suffix_of(data)}").write_bytes(data)
    return unlabelled


def build_folders(path: Path, cfg: DataConfig, staging: Path) -> None:
    """The data set's images as split folders (or class folders) under `staging`."""
    with tempfile.TemporaryDirectory(dir=cache_root()) as scratch:
        splits = load_splits(path, Path(scratch))
        folders = split_folders(splits, str(path))
        features = next(iter(splits.values())).features
        image = the_column(features, cfg.image_column, _datasets().Image, "image_column", str(path))
        label = the_column(features, cfg.label_column, _datasets().ClassLabel, "label_column", str(path))
        for name, dataset in splits.items():
            where = f"{path} split {name}" if name else str(path)
            folder = folders[name]
            unlabelled = write_split(dataset, image, label, staging / folder if folder else staging, where)
            if unlabelled:
                log.warning("%s: %d image(s) without a label left out", where, unlabelled)


def hf_folder(path: Path, cfg: DataConfig) -> Path:
    """CACHE/hf/<key>/<name>: the images as folders, written once per data set files and column choice."""
    files = [p for p in sorted(path.rglob("*")) if p.is_file()] if saved_kind(path) else parquet_files(path)
    identity = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    meta = {"source": identity, "image_column": cfg.image_column, "label_column": cfg.label_column}
    # .../<digest>/<the data set's folder name>: what runs are named after.
    folder = cache_root() / "hf" / cache.content_key(meta, length=16) / path.name
    # Sizes only, as for CIFAR: a checksum of every small file would cost more than the listing it guards.
    return cache.ensure(
        folder, lambda staging: build_folders(path, cfg, staging), meta, "Hugging Face", checksums=False
    )


def list_hf(path: Path, cfg: DataConfig) -> DataSplit:
    split = list_folder(hf_folder(path, cfg), cfg)
    split.layout = f"Hugging Face data set {path.name}: {split.layout}"
    return split


def download(path: str) -> Path:
    """hf://datasets/NAME saved (save_to_disk) under the cache on first use; offline, the one-line error."""
    name = path.removeprefix(HF_PREFIX).strip("/")
    leaf = safe_component(name.rsplit("/", 1)[-1], f"{path}: data set name")
    folder = cache_root() / "hf" / "hub" / cache.content_key({"name": name}, length=16) / leaf

    def fetch(staging: Path) -> None:
        datasets = _datasets()
        try:
            with quiet_bars():
                datasets.load_dataset(name).save_to_disk(str(staging))
        except Exception as err:  # noqa: BLE001 - offline, unknown name, no access: one message, with what to do
            raise HeadstartError(
                f"{path} is not in {folder.parent} and could not be downloaded ({type(err).__name__}; offline?): on a "
                f"machine online run python -c \"import datasets; datasets.load_dataset('{name}').save_to_disk('{leaf}')\" "
                "and give that folder as the data path"
            ) from None

    return cache.ensure(folder, fetch, {"name": name}, "Hugging Face download", checksums=False)
