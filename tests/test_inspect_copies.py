"""headstart inspect finds the copies real folders hold (squashed, cropped, re-encoded, recoloured), across splits,
and a look-alike set (every picture sharing one layout and lighting) does not flood the report with pairs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance

import headstart

COLOURS = {"red": (190, 60, 50), "green": (60, 160, 70), "blue": (50, 70, 190)}


def photo(colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A class-tinted gradient with random shapes and grain: distinct pictures, alike within a class."""
    rng = np.random.default_rng(seed)
    width, height = size
    ramp = np.linspace(0.7, 1.1, width)[None, :, None] * np.array(colour)[None, None, :]
    pixels = np.clip(ramp + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(7):
        x, y = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        w, h = (int(v) for v in rng.integers(10, 45, 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + w, y + h), fill=fill)
    return image


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def cropped(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = image.size
    return image.crop((round(left * w), round(top * h), w - round(right * w), h - round(bottom * h)))


COPIES = {  # test/<class>/<name>: how it was made from train/<class>/<index>.png
    "squashed.png": lambda image: image.resize((96, 96), Image.Resampling.BILINEAR),
    "cropped.png": lambda image: cropped(image, 0.08, 0.05, 0.03, 0.09),
    "combo.jpg": lambda image: jpeg(cropped(image, 0.03, 0.03, 0.03, 0.03).resize((123, 91)), 70),
    "recoloured.png": lambda image: ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(1.12)).enhance(0.9),
    "reencoded.jpg": lambda image: jpeg(image, 70),
}


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """train/ and test/ of distinct photos; test/ also holds one copy of a train photo per way of copying."""
    data = tmp_path_factory.mktemp("copies") / "data"
    for split, per_class, offset in (("train", 10, 0), ("test", 3, 500)):
        for number, (name, colour) in enumerate(COLOURS.items()):
            (data / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                photo(colour, offset + number * 50 + index).save(data / split / name / f"{index:03d}.png")
    originals = {}
    for index, (target, make) in enumerate(COPIES.items()):
        label = list(COLOURS)[index % 3]
        # The re-encoded leak is filed under another class too: it must be a leak, not only a label issue.
        filed = "blue" if target == "reencoded.jpg" else label
        make(Image.open(data / f"train/{label}/{index:03d}.png")).save(data / f"test/{filed}/{target}")
        originals[f"test/{filed}/{target}"] = f"train/{label}/{index:03d}.png"
    result = headstart.inspect(data, data.parent / "out", image_size=64, quiet=True)
    return result, originals


def test_copies_across_splits_are_leaks_whatever_the_resize_crop_or_encoding(copies):
    result, originals = copies
    leaks = {f.path: f.other for f in result.of("leak")}
    assert leaks == originals
    near = {frozenset((f.path, f.other)) for f in result.of("near_duplicate")}
    assert near == {frozenset(pair) for pair in originals.items()}


def test_a_relabelled_reencoded_leak_is_a_leak_and_a_conflict(copies):
    result, _ = copies
    conflicts = [(f.path, f.other) for f in result.of("conflicting_label")]
    assert conflicts == [("test/blue/reencoded.jpg", "train/green/004.png")]


def tile(seed: int, size: tuple[int, int] = (120, 160)) -> Image.Image:
    """A grey 'magnetic tile': the same lighting and edges in every picture, its own faint grain and scratches."""
    rng = np.random.default_rng(seed)
    width, height = size
    x = np.linspace(-1, 1, width)[None, :]
    y = np.linspace(-1, 1, height)[:, None]
    light = 150 - 60 * x**2 - 20 * y  # one lighting layout for the whole set
    light[:, :6] = light[:, -6:] = 40  # dark edges
    grain = rng.normal(0, 5, (height, width))
    streaks = np.repeat(rng.normal(0, 4, (1, width)), height, axis=0)
    pixels = np.clip(light + grain + streaks, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = int(rng.integers(10, width - 10)), int(rng.integers(10, height - 10))
        x1, y1 = x0 + int(rng.integers(-30, 30)), y0 + int(rng.integers(-30, 30))
        draw.line((x0, y0, x1, y1), fill=(90, 90, 90), width=1)
    return image


def test_look_alike_set_reports_its_one_copy_and_no_other_pair(tmp_path):
    data = tmp_path / "tiles"
    for number, name in enumerate(("crack", "free")):
        (data / name).mkdir(parents=True)
        for index in range(16):
            tile(number * 100 + index).save(data / name / f"{index:03d}.png")
    original = Image.open(data / "free/003.png")
    jpeg(cropped(original, 0.05, 0.04, 0.02, 0.06), 75).save(data / "free/003_copy.jpg")
    result = headstart.inspect(data, tmp_path / "out", image_size=64, quiet=True)
    assert [(f.path, f.other) for f in result.of("near_duplicate")] == [("free/003_copy.jpg", "free/003.png")]


def stripes(period: int, colours: tuple, seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """Vertical stripes of two colours, a little grain: a texture set's look-alikes."""
    rng = np.random.default_rng(seed)
    width, height = size
    band = (np.arange(width) // period) % 2
    pixels = np.array(colours, dtype=np.float64)[band][None, :, :].repeat(height, axis=0)
    pixels += rng.normal(0, 4, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def test_the_same_stripes_in_other_colours_are_not_copies(tmp_path):
    """Periodic textures match in detail once aligned; a mean colour far apart says they are other pictures."""
    rng = np.random.default_rng(7)
    schemes: list[np.ndarray] = []
    while len(schemes) < 12:  # colour pairs whose means lie at least 50 levels apart in some channel
        scheme = rng.integers(0, 256, (2, 3))
        if all(np.abs(scheme.mean(0) - other.mean(0)).max() >= 50 for other in schemes):
            schemes.append(scheme)
    data = tmp_path / "textures"
    for number, (name, period) in enumerate((("banded", 9), ("striped", 11))):
        (data / name).mkdir(parents=True)
        for index in range(6):
            scheme = tuple(tuple(int(v) for v in colour) for colour in schemes[number * 6 + index])
            stripes(period, scheme, seed=index).save(data / name / f"{index:03d}.png")
    copy = ImageEnhance.Brightness(Image.open(data / "banded/002.png")).enhance(1.1)
    jpeg(copy, 80).save(data / "banded/002_copy.jpg")
    result = headstart.inspect(data, tmp_path / "out", image_size=64, quiet=True)
    assert [(f.path, f.other) for f in result.of("near_duplicate")] == [("banded/002_copy.jpg", "banded/002.png")]
