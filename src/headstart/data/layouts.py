"""Which images are train, val and test: the data sources a recipe's data path may name, read into a DataSplit.

SOURCES is consulted in order; the first whose `detect(path)` holds lists the path:
    cifar     cifar-10-batches-py/, cifar-100-python/: CIFAR python batch files (datasets.py)
    csv       FILE.csv: columns path,label[,split] (csv_layout.py)
    hf        a Hugging Face data set: a save_to_disk folder or a folder of parquet files (hf_source.py)
    folder    DATA/<split>/<class>/* or DATA/<class>/* (folder_layout.py)
Before that, a missing path is the embedded digits, `cifar10` / `cifar100` are downloaded (datasets.py) and
so is hf://datasets/NAME (hf_source.py).
A new layout is one module with `detect` and `list` functions plus one `Source(...)` line in SOURCES.
The listing is the public API other commands build on: list_images(cfg) -> DataSplit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from headstart.config.hf_path import HF_PREFIX
from headstart.config.recipe import DataConfig
from headstart.core.errors import HeadstartError
from headstart.core.paths import user_path
from headstart.data import csv_layout, datasets, folder_layout, hf_source
from headstart.data.splits import DataSplit


@dataclass(frozen=True)
class Source:
    """One way a data path can hold a labelled image set."""

    name: str
    detect: Callable[[Path], bool]  # does this path hold this layout? (cheap: no file is read beyond a listing)
    list: Callable[[Path, DataConfig], DataSplit]


# Order matters: a CIFAR batch folder is also a folder, so the more specific sources come first.
SOURCES: tuple[Source, ...] = (
    Source("cifar", datasets.is_cifar_folder, datasets.list_cifar),
    Source("csv", csv_layout.is_csv, csv_layout.list_csv),
    Source("hf", hf_source.is_hf_dataset, hf_source.list_hf),
    Source("folder", folder_layout.is_folder, folder_layout.list_folder),
)


def data_root(cfg: DataConfig) -> Path:
    """The path a recipe's data names: the digits written to the cache when none, a downloaded CIFAR by its name."""
    if cfg.path is None:
        return datasets.digits_folder()
    if cfg.path in datasets.CIFAR:
        return datasets.download_cifar(cfg.path)
    if cfg.path.startswith(HF_PREFIX):
        return hf_source.download(cfg.path)
    return user_path(cfg.path)


def list_images(cfg: DataConfig) -> DataSplit:
    """List and split the images named by the recipe with the first source that recognises the path."""
    root = data_root(cfg)
    for source in SOURCES:
        if source.detect(root):
            split = source.list(root, cfg)
            if cfg.task not in ("auto", split.task):
                raise HeadstartError(
                    f"data.task is {cfg.task} but {root} holds {split.task} data ({split.layout}); "
                    "multi-label data comes as a CSV: path,labels with tags separated by data.label_delim, "
                    "or one 0/1 column per label"
                )
            return csv_layout.with_added_labels(split, cfg.add_labeled)
    if root.is_file():  # `headstart train recipe.yaml`, say: there, but no data source reads it
        raise HeadstartError(
            f"{root} is a file, not image data: give an image folder or a CSV of images (a recipe goes in --recipe)"
        )
    raise HeadstartError(f"data folder not found: {root}")
