"""Standard data sets as image folders, written once under the user's cache.

- The embedded default: scikit-learn's 1797 handwritten digits (8x8), so the main job runs
  offline with nothing downloaded.
- CIFAR-10 / CIFAR-100 from their python batch files (`cifar-10-batches-py`, `cifar-100-python`),
  given as a folder, or as `cifar10` / `cifar100` to download through torchvision.

The cache is $HEADSTART_CACHE, else $XDG_CACHE_HOME/headstart, else ~/.cache/headstart; the
feature and decoded-image caches live there too.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from headstart.config.recipe import DataConfig
from headstart.core import cache
from headstart.core.errors import HeadstartError
from headstart.core.paths import safe_component, user_path
from headstart.data.folder_layout import list_folder
from headstart.data.splits import DataSplit


def cache_root() -> Path:
    if os.environ.get("HEADSTART_CACHE"):
        return user_path(os.environ["HEADSTART_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "headstart"


def digits_folder() -> Path:
    """DIGITS/<0..9>/<index>.png, written on first use (rebuilt with a warning if a file went missing)."""

    def build(staging: Path) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        for index, (image, label) in enumerate(zip(digits.images, digits.target)):
            class_dir = staging / str(label)
            class_dir.mkdir(exist_ok=True)
            # Pixel values are 0..16 ink levels.
            pixels = np.round(image * (255.0 / 16.0)).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(class_dir / f"{index:04d}.png")

    return cache.ensure(cache_root() / "digits", build, {"source": "sklearn.datasets.load_digits"}, "digits")


# ----------------------------------------------------------------------------- CIFAR

# name -> (folder inside the archive, train files, val files, meta file, label key, names key)
CIFAR = {
    "cifar10": ("cifar-10-batches-py", "data_batch_*", "test_batch", "batches.meta", b"labels", b"label_names"),
    "cifar100": ("cifar-100-python", "train", "test", "meta", b"fine_labels", b"fine_label_names"),
}


def cifar_kind(folder: Path) -> str | None:
    """'cifar10' or 'cifar100' if the folder holds that set's python batch files."""
    for kind, (_, train, val, meta, _, _) in CIFAR.items():
        if (folder / meta).is_file() and (folder / val).is_file() and any(folder.glob(train)):
            return kind
    return None


class _ArraysOnly(pickle.Unpickler):
    """The CIFAR files are pickles; only what they need (dicts, lists, bytes, numpy arrays) may be built from them."""

    ALLOWED = {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    }
    # _codecs.encode: how Python 3 writes bytes at pickle protocol 2 (copies of the files re-saved by Python 3).
    ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def __init__(self, stream: BinaryIO, path: Path):
        super().__init__(stream, encoding="bytes")
        self.path = path  # named in the refusal

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise HeadstartError(
                f"{self.path}: refusing to load {module}.{name} from a CIFAR batch file (a pickle that could run code)"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as stream:
        return _ArraysOnly(stream, path).load()


def _text(value: object) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise HeadstartError(f"a CIFAR class name is not UTF-8 text: {value[:40]!r}") from None
    return str(value)


def cifar_folder(source: Path) -> Path:
    """CIFAR/train/<class>/*.png and CIFAR/val/<class>/*.png (the official test set as val), written once per source."""
    kind = cifar_kind(source)
    if kind is None:
        raise HeadstartError(
            f"{source} holds no CIFAR python batch files (data_batch_1..5 + test_batch + batches.meta, or train + test + meta)"
        )
    _, train_glob, val_name, meta_name, label_key, names_key = CIFAR[kind]
    files = sorted(source.glob(train_glob)) + [source / val_name, source / meta_name]
    identity = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    # .../<source digest>/cifar10: the folder's name is what runs are named after.
    folder = cache_root() / "cifar" / cache.content_key({"source": identity}, length=16) / kind
    listed = _read_batch(source / meta_name).get(names_key)
    if not isinstance(listed, list) or not listed:
        raise HeadstartError(f"{source / meta_name}: no list of class names under {names_key.decode()!r}")
    names = [safe_component(_text(n), f"{source / meta_name}: class name") for n in listed]

    def build(staging: Path) -> None:
        for split, batch_files in (("train", files[:-2]), ("val", [source / val_name])):
            for batch_file in batch_files:
                _write_batch(batch_file, staging / split, names, label_key)

    # Sizes only (60,000 small files): a checksum of each would cost more than the listing it guards.
    return cache.ensure(folder, build, {"source": identity, "classes": names}, "CIFAR", checksums=False)


def _read_batch(path: Path) -> dict:
    """A CIFAR pickle, refused with a one-line error if it is not one (truncated, not a pickle, wrong content)."""
    try:
        batch = _unpickle(path)
    except HeadstartError:
        raise
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same: not a CIFAR batch file
        raise HeadstartError(f"{path} is not a readable CIFAR batch file ({type(err).__name__})") from None
    if not isinstance(batch, dict):
        raise HeadstartError(f"{path} is not a CIFAR batch file (holds a {type(batch).__name__}, not a dict)")
    return batch


def _write_batch(batch_file: Path, target: Path, names: list[str], label_key: bytes) -> None:
    """One batch file's images as PNGs in target/<class>/, after checking its arrays fit together."""
    batch = _read_batch(batch_file)
    try:
        # Rows are 3072 bytes: the red plane, then green, then blue, each 32x32 row-major.
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = [int(label) for label in batch[label_key]]
        filenames = [Path(bytes(name).decode()).with_suffix(".png").name for name in batch[b"filenames"]]
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as err:
        raise HeadstartError(f"{batch_file}: not a CIFAR batch ({type(err).__name__}: {str(err)[:80]})") from None
    if not len(images) == len(labels) == len(filenames) or any(not 0 <= y < len(names) for y in labels):
        raise HeadstartError(
            f"{batch_file}: {len(images)} images, {len(labels)} labels (0..{len(names) - 1} expected) and {len(filenames)} names do not match"
        )
    for image, label, filename in zip(images, labels, filenames):
        folder = target / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / safe_component(filename, f"{batch_file}: file name"))


def download_cifar(kind: str) -> Path:
    """The batch folder for `cifar10`/`cifar100` through torchvision's download (the online path)."""
    from torchvision import datasets

    root = cache_root() / "downloads"
    folder = root / CIFAR[kind][0]
    if cifar_kind(folder) == kind:
        return folder
    loader = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[kind]
    try:
        loader(root=str(root), train=True, download=True)
    except Exception as err:  # noqa: BLE001 - any network failure is the same message to the user
        archive = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}[kind]
        raise HeadstartError(
            f"{kind} is not in {root} and could not be downloaded ({type(err).__name__}; offline?): get {archive} from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html, unpack it, and give the {CIFAR[kind][0]} folder as the data path"
        ) from None
    return folder


# ----------------------------------------------------------------------------- as a data source


def is_cifar_folder(path: Path) -> bool:
    return path.is_dir() and cifar_kind(path) is not None


def list_cifar(path: Path, cfg: DataConfig) -> DataSplit:
    """The batch files' images as class folders (written once to the cache), listed as any split folders are."""
    return list_folder(cifar_folder(path), cfg)
