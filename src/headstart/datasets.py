"""Standard data sets as image folders, written once under the user's cache.

- The embedded default: scikit-learn's 1797 handwritten digits (8x8), so the main job runs
  offline with nothing downloaded.
- CIFAR-10 / CIFAR-100 from their python batch files (`cifar-10-batches-py`, `cifar-100-python`),
  given as a folder, or as `cifar10` / `cifar100` to download through torchvision.

The cache is $HEADSTART_CACHE, else $XDG_CACHE_HOME/headstart, else ~/.cache/headstart; the
feature and decoded-image caches live there too.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.errors import HeadstartError
from headstart.paths import safe_component


def cache_root() -> Path:
    if os.environ.get("HEADSTART_CACHE"):
        return Path(os.environ["HEADSTART_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "headstart"


def _publish(staging: Path, folder: Path, note: str) -> Path:
    """Move a fully written staging folder into place (a half-written folder is never used)."""
    (staging / "COMPLETE").write_text(note + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    try:
        staging.rename(folder)
    except OSError:  # another process published the same folder first
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def digits_folder() -> Path:
    """DIGITS/<0..9>/<index>.png, written on first use."""
    folder = cache_root() / "digits"
    if (folder / "COMPLETE").is_file():
        return folder
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="digits-", dir=folder.parent))
    for index, (image, label) in enumerate(zip(digits.images, digits.target)):
        class_dir = staging / str(label)
        class_dir.mkdir(exist_ok=True)
        # Pixel values are 0..16 ink levels.
        pixels = np.round(image * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(class_dir / f"{index:04d}.png")
    return _publish(staging, folder, f"{len(digits.images)} images from sklearn.datasets.load_digits")


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

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise HeadstartError(
                f"{self.path}: refusing to load {module}.{name} from a CIFAR batch file (a pickle that could run code)"
            )
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as stream:
        unpickler = _ArraysOnly(stream, encoding="bytes")
        unpickler.path = path
        return unpickler.load()


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
    folder = cache_root() / "cifar" / hashlib.sha256(identity.encode()).hexdigest()[:16] / kind
    if (folder / "COMPLETE").is_file():
        return folder
    names = [
        safe_component(_text(n), f"{source / meta_name}: class name") for n in _unpickle(source / meta_name)[names_key]
    ]
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=folder.parent))
    count = 0
    for split, batch_files in (("train", files[:-2]), ("val", [source / val_name])):
        for batch_file in batch_files:
            batch = _unpickle(batch_file)
            # Rows are 3072 bytes: the red plane, then green, then blue, each 32x32 row-major.
            images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            for image, label, filename in zip(images, batch[label_key], batch[b"filenames"]):
                target = staging / split / names[label]
                target.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(target / Path(filename.decode()).with_suffix(".png").name)
                count += 1
    return _publish(staging, folder, f"{count} images from {kind} batch files in {source}")


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
