"""Listing, splitting, decoding and the bad-input errors of the data layer."""

import logging
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from headstart.config.recipe import DataConfig
from headstart.core.errors import HeadstartError
from headstart.data.images import build_transforms, prepare_data
from headstart.data.layouts import list_images
from headstart.data.splits import stratified_split

PREP = {"image_size": 16, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}


def test_class_folders_split_stratified_and_seeded(colour_folder):
    split = list_images(DataConfig(path=str(colour_folder), val_fraction=0.25, split_seed=3))
    assert split.classes == ["blue", "green", "red"]
    assert Counter(label for _, label in split.val) == {0: 3, 1: 3, 2: 3}
    assert len(split.train) == 27
    again = list_images(DataConfig(path=str(colour_folder), val_fraction=0.25, split_seed=3))
    other = list_images(DataConfig(path=str(colour_folder), val_fraction=0.25, split_seed=4))
    assert again.val == split.val and other.val != split.val
    assert not {p for p, _ in split.train} & {p for p, _ in split.val}


def test_default_val_fraction_is_ten_percent():
    by_class = {"a": [f"a{i}" for i in range(50)], "b": [f"b{i}" for i in range(30)]}
    train, val = stratified_split(by_class, 0.1, 0)
    assert Counter(label for _, label in val) == {0: 5, 1: 3}


def test_given_train_val_layout(split_folder):
    split = list_images(DataConfig(path=str(split_folder)))
    assert split.classes == ["blue", "red"] and len(split.train) == 20 and len(split.val) == 8


def test_csv_listing(colour_folder):
    lines = ["path,label"] + [f"{p.parent.name}/{p.name},{p.parent.name}" for p in sorted(colour_folder.rglob("*.png"))]
    (colour_folder / "labels.csv").write_text("\n".join(lines))
    split = list_images(DataConfig(path=str(colour_folder / "labels.csv")))
    assert split.classes == ["blue", "green", "red"] and len(split.train) + len(split.val) == 36


def test_unreadable_files_skipped_with_one_warning(colour_folder, caplog):
    (colour_folder / "red" / "notes.txt").write_text("not an image")
    (colour_folder / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    with caplog.at_level(logging.WARNING, logger="headstart"):
        data = prepare_data(DataConfig(path=str(colour_folder)), PREP)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 2" in warnings[0]
    assert "notes.txt" in warnings[0] and "broken.jpg" in warnings[0]
    assert len(data.train) + len(data.val) == 36


def test_grayscale_rgba_and_16bit_images_become_rgb(tmp_path):
    import numpy as np
    from PIL import Image

    for name, image in {
        "gray": Image.fromarray(np.full((20, 20), 128, np.uint8)),
        "rgba": Image.fromarray(np.full((20, 20, 4), 200, np.uint8)),
        "deep": Image.fromarray(np.full((20, 20), 40000, np.uint16)),
    }.items():
        (tmp_path / "d" / name).mkdir(parents=True)
        for i in range(2):
            image.save(tmp_path / "d" / name / f"{i}.png")
    data = prepare_data(DataConfig(path=str(tmp_path / "d"), val_fraction=0.5), PREP)
    x, _ = data.train[0]
    assert x.shape == (3, 16, 16) and not data.split.skipped


@pytest.mark.parametrize(
    "layout, message",
    [
        ({"only": 3}, "1 class folder"),
        ({"a": 3, "b": 0}, "class folder 'b' has no files"),
    ],
)
def test_bad_folders_are_explained(tmp_path, layout, message):
    for name, count in layout.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(count):
            (tmp_path / "data" / name / f"{i}.png").write_bytes(b"")
    with pytest.raises(HeadstartError, match=message):
        list_images(DataConfig(path=str(tmp_path / "data")))


def test_missing_folder():
    with pytest.raises(HeadstartError, match="data folder not found"):
        list_images(DataConfig(path="/no/such/folder"))


def test_embedded_digits_written_once(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path))
    split = list_images(DataConfig(path=None))
    assert split.classes == [str(d) for d in range(10)]
    assert len(split.train) + len(split.val) == 1797
    assert (tmp_path / "digits" / "MANIFEST.json").is_file()


def test_over_budget_images_go_to_a_reused_memory_map(colour_folder, monkeypatch, caplog):
    import numpy as np

    from headstart.data import images as data_module

    (colour_folder / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    in_memory = prepare_data(DataConfig(path=str(colour_folder)), PREP)
    monkeypatch.setattr(data_module, "DECODED_CACHE_BUDGET", 1000)
    with caplog.at_level(logging.INFO, logger="headstart"):
        on_disk = prepare_data(DataConfig(path=str(colour_folder)), PREP)
    assert isinstance(on_disk.train.arrays, data_module.DiskImages)
    assert "memory-mapped file" in caplog.text and "skipped 1" in caplog.text
    assert [s for s in on_disk.split.train] == [s for s in in_memory.split.train]
    for index in (0, 5, len(on_disk.train) - 1):
        assert np.array_equal(on_disk.train.arrays[index], in_memory.train.arrays[index])
    for index in range(len(on_disk.val)):  # the eval transform is deterministic
        assert torch_equal(on_disk.val[index][0], in_memory.val[index][0])
    again = prepare_data(DataConfig(path=str(colour_folder)), PREP)  # reuses the stored file
    assert again.train.arrays.data.filename == on_disk.train.arrays.data.filename and again.split.skipped == [
        "broken.png (OSError)"
    ]


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_hostile_folder_is_listed_converted_or_skipped_by_name(tmp_path, monkeypatch, caplog):
    import numpy as np
    from PIL import Image

    root = tmp_path / "hostile"
    rng = np.random.default_rng(0)
    pixels = lambda h, w: rng.integers(0, 255, (h, w, 3), dtype=np.uint8)  # noqa: E731
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(pixels(20, 20)).save(root / name / f"plain{i}.png")
    Image.fromarray(pixels(20, 20)).convert("P").save(root / "a" / "palette.png", transparency=0)
    Image.fromarray(pixels(20, 20)).convert("CMYK").save(root / "a" / "cmyk.jpg")
    rotated = Image.fromarray(pixels(10, 30))  # 30 wide, 10 tall; EXIF says "rotate 90": upright it is 10 wide
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(root / "b" / "rotated.jpg", exif=exif)
    whole = (root / "a" / "cmyk.jpg").read_bytes()
    (root / "b" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    Image.fromarray(pixels(200, 200)).save(root / "b" / "bomb.png")
    (root / "b" / "readme.md").write_text("not an image")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # a symlink loop must not hang the listing
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000 // 2)  # bomb.png (40,000 px) is over twice the limit

    with caplog.at_level(logging.WARNING, logger="headstart"):
        data = prepare_data(DataConfig(path=str(root), val_fraction=0.3), PREP)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    for bad in ("truncated.jpg (OSError)", "bomb.png (DecompressionBombError)", "readme.md"):
        assert bad in warnings[0]
    kept = {path.name for path, _ in data.split.train + data.split.val}
    assert {"palette.png", "cmyk.jpg", "rotated.jpg"} <= kept
    arrays = dict(
        zip((p.name for p, _ in data.train.samples + data.val.samples), list(data.train.arrays) + list(data.val.arrays))
    )
    height, width, channels = arrays["rotated.jpg"].shape
    assert channels == 3 and height > width  # upright after the EXIF rotation


@pytest.mark.parametrize("preset", ["randaugment", "trivialaugment"])
def test_randaugment_posterize_at_the_top_magnitude_keeps_one_bit_instead_of_raising(preset):
    # timm asks Pillow to keep 0 bits at magnitude 10; Pillow 13 raises there, mid-epoch.
    train_tf, _ = build_transforms(PREP, preset)
    ops = [op for step in train_tf.transforms for op in getattr(step, "ops", []) if op.name.startswith("Posterize")]
    assert ops, "the preset should draw from timm's posterize ops"
    image = Image.fromarray(np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3))
    for op in ops:
        op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0.0
        out = np.asarray(op(image))
        assert set(np.unique(out)) <= {0, 128} and out.max() == 128  # one bit kept: the image is not blanked
