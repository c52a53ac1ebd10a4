"""The embedded default data set: scikit-learn's 1797 handwritten digits (8x8) as an image folder.

Written once under the user's cache ($HEADSTART_CACHE, else $XDG_CACHE_HOME/headstart, else
~/.cache/headstart), so the main job runs offline with nothing downloaded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def cache_root() -> Path:
    if os.environ.get("HEADSTART_CACHE"):
        return Path(os.environ["HEADSTART_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "headstart"


def digits_folder() -> Path:
    """DIGITS/<0..9>/<index>.png, written on first use (atomically: a half-written folder is never used)."""
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
    (staging / "COMPLETE").write_text(f"{len(digits.images)} images from sklearn.datasets.load_digits\n")
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder
