"""Images in: decoding once (into memory, or a memory-mapped file past the budget), and timm's transforms.

Listing is headstart.data.layouts' (split folders, class folders, CSV) and splitting
headstart.data.splits'; the sources besides those layouts:
    cifar-10-batches-py/, cifar-100-python/      CIFAR python batch files (test set as val); or cifar10,
                                                 cifar100 to download them (headstart.data.datasets)
    (nothing)                                    the embedded default: scikit-learn's digits
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps
from timm.data import create_transform
from torch.utils.data import Dataset

from headstart.config.recipe import DataConfig
from headstart.core import cache
from headstart.core.errors import HeadstartError
from headstart.core.progress import progress
from headstart.data.layouts import list_images
from headstart.data.splits import MULTI, SINGLE, DataSplit, Label, Sample, label_counts, label_tensor

log = logging.getLogger(__name__)

# Decoded images above this many bytes go to a memory-mapped file instead of memory.
DECODED_CACHE_BUDGET = int(os.environ.get("HEADSTART_DECODED_CACHE_BYTES", 4 << 30))


# ----------------------------------------------------------------------------- decoding


EXIF_ORIENTATION = 0x0112


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image as 8-bit RGB: EXIF rotation applied, 16-bit scaled down, alpha composited on white."""
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:  # exif_transpose copies even an upright image
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # One RGBA copy at most and only its alpha band: this is the peak of a decode (the server's memory bound).
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


class RefusedImage(ValueError):
    """A file that is not decoded at all, with the reason."""


class TooManyPixels(RefusedImage):
    """An image over the pixel limit given, refused before its pixels are decoded."""


# Wider than this (either way) is skipped: resizing the short side of a 40000x1 strip to 224 would
# allocate gigabytes from a 200-byte file, which Pillow's decompression-bomb limit does not catch.
MAX_ASPECT_RATIO = 25


def check_size(width: int, height: int, max_pixels: int | None = None) -> None:
    """RefusedImage for an extreme aspect ratio, TooManyPixels past `max_pixels`: both known from the header."""
    if max_pixels is not None and width * height > max_pixels:
        raise TooManyPixels(f"{width}x{height} pixels is over the {max_pixels:,}-pixel limit (decompression bomb?)")
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        raise RefusedImage(f"extreme aspect ratio {width}x{height}")


def open_image(file, max_pixels: int | None = None) -> Image.Image:
    """The one decode for prediction (predict, the Python API, evaluate of files, serve): 8-bit RGB as to_rgb gives.

    `file` is a path or a binary file object. Size checks run on the header, before any pixel is
    decoded; Pillow's decompression-bomb warning is an error here too.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(file) as opened:
            check_size(*opened.size, max_pixels)
            opened.load()
            return to_rgb(opened)


def decode(path: Path, short_side: int, interpolation: str) -> np.ndarray:
    """Decode one image to RGB uint8 with its shorter side resized to `short_side`.

    Raises RefusedImage for anything but a regular file (a FIFO would block forever) and for an
    aspect ratio beyond MAX_ASPECT_RATIO; callers skip such files with a warning.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise RefusedImage("not a regular file")
    with Image.open(path) as image:
        check_size(*image.size)
        # JPEG can decode straight to a reduced size (DCT scaling): much faster for big photos.
        image.draft("RGB", (short_side * 2, short_side * 2))
        rgb = to_rgb(image)
        width, height = rgb.size
        scale = short_side / min(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if size != rgb.size:
            rgb = rgb.resize(size, _PIL_INTERPOLATION[interpolation])
        return np.asarray(rgb, dtype=np.uint8)


_PIL_INTERPOLATION = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def _try_decode(path: Path, short_side: int, interpolation: str) -> np.ndarray | str:
    # Truncated files must fail, not come back half grey.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        return decode(path, short_side, interpolation)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return f"{path.name} ({err if isinstance(err, RefusedImage) else type(err).__name__})"


def decode_all(
    samples: Sequence[Sample], short_side: int, interpolation: str, threads: int
) -> tuple[list[np.ndarray], list[Sample], list[str]]:
    """Decode every sample once (threads: Pillow releases the GIL while decoding); bad files are returned by name."""
    pool = ThreadPoolExecutor(max_workers=max(1, threads))
    try:
        decoded = pool.map(lambda s: _try_decode(s[0], short_side, interpolation), samples)
        results = list(progress(decoded, "decoding images", total=len(samples), unit="img"))
    except BaseException:
        # Ctrl-C: drop the queued decodes instead of waiting for all of them (`with` would wait).
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    arrays, kept, bad = [], [], []
    for sample, result in zip(samples, results):
        if isinstance(result, str):
            bad.append(result)
        else:
            arrays.append(result)
            kept.append(sample)
    return arrays, kept, bad


class DiskImages:
    """Decoded images in one uint8 file read through a memory map: for data sets larger than the memory budget.

    Images differ in size, so the file is ragged: `index.npy` holds each image's (offset, height,
    width). Stored under $HEADSTART_CACHE/images/<key>/, keyed by the files (paths, sizes,
    modification times) and the decode size, so a later run over the same folder reuses it.
    """

    def __init__(self, folder: Path):
        self.index = np.load(folder / "index.npy")
        self.data = (
            np.memmap(folder / "pixels.bin", dtype=np.uint8, mode="r") if self.index.size else np.zeros(0, np.uint8)
        )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, position: int) -> np.ndarray:
        offset, height, width = (int(v) for v in self.index[position])
        return np.asarray(self.data[offset : offset + height * width * 3]).reshape(height, width, 3)

    @classmethod
    def build(
        cls, samples: list[Sample], short_side: int, interpolation: str, threads: int
    ) -> tuple[DiskImages, list[Sample], list[str]]:
        from headstart.data.datasets import cache_root

        index_digest = cache.content_key(
            {"short_side": short_side, "interpolation": interpolation}, files=samples, length=64
        )

        def build(staging: Path) -> None:
            index, kept, bad, offset = [], [], [], 0
            with open(staging / "pixels.bin", "wb") as pixels:
                # Chunks keep at most a few hundred decoded images in memory at once.
                for start in range(0, len(samples), 256):
                    arrays, chunk_kept, chunk_bad = decode_all(
                        samples[start : start + 256], short_side, interpolation, threads
                    )
                    for array in arrays:
                        pixels.write(array.tobytes())
                        index.append((offset, array.shape[0], array.shape[1]))
                        offset += array.size
                    kept += chunk_kept
                    bad += chunk_bad
            np.save(staging / "index.npy", np.array(index, dtype=np.int64).reshape(-1, 3))
            (staging / "kept.json").write_text(json.dumps({"kept": [[str(p), y] for p, y in kept], "bad": bad}))

        folder = cache.ensure(
            cache_root() / "images" / index_digest[:24],
            build,
            {"index": index_digest, "samples": len(samples)},
            "decoded-image",
            check=_disk_images_problem,
        )
        stored = json.loads((folder / "kept.json").read_text())
        # JSON keeps a multi-label tuple of tags as a list: back to the tuple the listing made.
        kept = [(Path(p), y if isinstance(y, int) else tuple(y)) for p, y in stored["kept"]]
        return cls(folder), kept, stored["bad"]


def _disk_images_problem(folder: Path) -> str | None:
    """Why a stored decoded-image entry is inconsistent (index rows vs kept files vs pixel bytes), or None."""
    try:
        index = np.load(folder / "index.npy")
        kept = json.loads((folder / "kept.json").read_text())["kept"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable index ({type(err).__name__})"
    if index.ndim != 2 or index.shape[1] != 3 or len(index) != len(kept):
        return f"index.npy has shape {index.shape} for {len(kept)} kept images"
    end = int((index[:, 0] + index[:, 1] * index[:, 2] * 3).max()) if len(index) else 0
    if end > (folder / "pixels.bin").stat().st_size:
        return "pixels.bin is shorter than its index"
    return None


def short_side_for(preprocessing: dict) -> int:
    """The size the eval transform resizes the shorter side to; decoding straight to it makes that resize a no-op."""
    return math.floor(preprocessing["image_size"] / preprocessing["crop_pct"])


# ----------------------------------------------------------------------------- datasets


# Train-time presets on top of timm's random resized crop + flip. trivialaugment is timm's RandAugment
# drawing one op per image at a uniformly random magnitude (TrivialAugment's rule).
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "light": dict(scale=(0.5, 1.0), hflip=0.5, color_jitter=None),
    "standard": dict(scale=(0.08, 1.0), hflip=0.5, color_jitter=0.4),
    "randaugment": dict(scale=(0.08, 1.0), hflip=0.5, auto_augment="rand-m9-mstd0.5-inc1"),
    "trivialaugment": dict(scale=(0.08, 1.0), hflip=0.5, auto_augment="rand-n1-m10-mstd101-inc1"),
}


def build_transforms(preprocessing: dict, augment: str, random_erasing: float = 0.0):
    """(train, eval) transforms from timm's factory for the resolved preprocessing and augmentation preset."""
    common: dict[str, Any] = dict(
        input_size=(3, preprocessing["image_size"], preprocessing["image_size"]),
        mean=preprocessing["mean"],
        std=preprocessing["std"],
        interpolation=preprocessing["interpolation"],
        crop_pct=preprocessing["crop_pct"],
    )
    eval_tf = create_transform(is_training=False, **common)
    if augment == "none":
        return eval_tf, eval_tf
    train_common = {k: v for k, v in common.items() if k != "crop_pct"}
    erasing: dict[str, Any] = dict(re_prob=random_erasing, re_mode="pixel") if random_erasing else {}
    train_tf = create_transform(is_training=True, **train_common, **AUGMENT_PRESETS[augment], **erasing)
    return keep_posterize_valid(train_tf), eval_tf


def keep_posterize_valid(transform):
    """RandAugment's posterize keeps at least 1 bit: at the top magnitude timm asks for 0, which Pillow 13 refuses.

    timm's PosterizeIncreasing maps magnitude 10 to "keep 0 bits" (an all-black image); Pillow
    before 13 did that, Pillow 13 raises ValueError, which ended a RandAugment run at a random
    batch (m9 with mstd 0.5 reaches 10 on about 2 % of posterize draws).
    """
    for step in getattr(transform, "transforms", []):
        for op in getattr(step, "ops", []):  # timm's RandAugment holds its AugmentOps here
            if op.name.startswith("Posterize"):
                op.aug_fn = posterize_at_least_one_bit
    return transform


def posterize_at_least_one_bit(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    return img if bits_to_keep >= 8 else ImageOps.posterize(img, max(1, bits_to_keep))


def train_view(data: PreparedData, augment: str, random_erasing: float = 0.0) -> ImageDataset:
    """The training images under another augmentation preset (a stage's own), sharing the decoded arrays."""
    transform = build_transforms(data.preprocessing, augment, random_erasing)[0]
    return ImageDataset(data.train.samples, transform, data.train.arrays, data.split.task, len(data.split.classes))


class ImageDataset(Dataset):
    """Samples as (tensor, target) from decoded images: a list in memory, or DiskImages past the budget.

    The target is the class index, or for multi-label data a row of 0/1 per class (`targets`).
    """

    def __init__(self, samples: list[Sample], transform, arrays, task: str = SINGLE, n_classes: int = 0):
        self.samples = samples
        self.transform = transform
        self.arrays = arrays
        self.targets = label_tensor(self.labels, n_classes, task)

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.arrays[index])

    def __getitem__(self, index: int):
        return self.transform(self.image(index)), self.targets[index]

    @property
    def labels(self) -> list[Label]:
        return [label for _, label in self.samples]


@dataclass
class PreparedData:
    split: DataSplit
    train: ImageDataset
    val: ImageDataset
    preprocessing: dict
    # The test split (empty without one): scored once after training, never used for choosing.
    test: ImageDataset | None = None


def warn_skipped(bad: list[str]) -> None:
    """The one warning for skipped files (train's and inspect's): how many, and the first ten with why."""
    if bad:
        shown = ", ".join(bad[:10]) + (f", ... ({len(bad) - 10} more)" if len(bad) > 10 else "")
        log.warning("skipped %d unreadable or non-image file(s): %s", len(bad), shown)


def prepare_data(
    cfg: DataConfig,
    preprocessing: dict,
    threads: int | None = None,
    on_disk: bool = False,
    split: DataSplit | None = None,
) -> PreparedData:
    """List, split, decode once (unreadable files skipped with one warning) and wrap in datasets.

    on_disk: decode to the shared memory-mapped file whatever the size (data-parallel processes read one copy).
    split: the listing, where the caller made it already (pseudo-labels joined its train split).
    """
    split = split or list_images(cfg)
    log.info(split.describe())
    short_side = short_side_for(preprocessing)
    interpolation = preprocessing["interpolation"]
    threads = threads or (os.cpu_count() or 1)
    # Bytes of the decoded images, allowing for a 4:3 aspect ratio.
    estimate = (len(split.train) + len(split.val) + len(split.test)) * short_side * short_side * 3 * 4 // 3
    in_memory = estimate <= DECODED_CACHE_BUDGET and not on_disk
    if not in_memory:
        why = (
            "shared by data-parallel processes"
            if on_disk
            else f"over the {DECODED_CACHE_BUDGET >> 20} MB memory budget"
        )
        log.info("decoded images (~%d MB, %s): decoding once to a memory-mapped file", estimate >> 20, why)
    arrays: dict[str, list[np.ndarray] | DiskImages] = {}
    bad: list[str] = []
    for name in ("train", "val", "test"):
        samples = getattr(split, name)
        if name == "test" and not samples:
            arrays[name] = []
            continue
        build = decode_all if in_memory else DiskImages.build
        arrays[name], kept, bad_here = build(samples, short_side, interpolation, threads)
        setattr(split, name, kept)
        bad += bad_here
    warn_skipped(bad)
    split.skipped = bad
    counts = label_counts([label for _, label in split.train], len(split.classes))
    if (counts == 0).any():
        empty = split.classes[int(np.argmin(counts))]
        raise HeadstartError(f"{'tag' if split.task == MULTI else 'class'} '{empty}' has no readable training images")
    if not split.val:
        raise HeadstartError("no readable validation images")
    train_tf, eval_tf = build_transforms(preprocessing, cfg.augment, cfg.random_erasing)
    task, n = split.task, len(split.classes)
    return PreparedData(
        split,
        ImageDataset(split.train, train_tf, arrays["train"], task, n),
        ImageDataset(split.val, eval_tf, arrays["val"], task, n),
        preprocessing,
        ImageDataset(split.test, eval_tf, arrays["test"], task, n),
    )
