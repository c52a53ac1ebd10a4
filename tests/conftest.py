"""Shared fixtures: tiny generated image folders and tiny recipes, so every test runs offline in seconds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Colour-coded classes: an easy task any working pipeline learns within a few epochs.
CLASS_COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def write_images(
    folder: Path, classes: dict[str, tuple[int, int, int]], per_class: int, size: int = 24, seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            noise = rng.normal(0, 25, (size, size, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{index:03d}.png")
    return folder


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    """DATA/<class>/*.png with three colour classes, 12 images each."""
    return write_images(tmp_path / "colours", CLASS_COLOURS, per_class=12)


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    """DATA/train/<class>/ and DATA/val/<class>/ with two classes."""
    two = {k: CLASS_COLOURS[k] for k in ("red", "blue")}
    write_images(tmp_path / "split" / "train", two, per_class=10, seed=1)
    write_images(tmp_path / "split" / "val", two, per_class=4, seed=2)
    return tmp_path / "split"


def browser() -> str:
    """Debian's headless chromium for the page tests: a failure under CI (which installs it), a skip elsewhere."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; the test set-up in README.md installs it")
        pytest.skip("chromium not installed")
    return found


def tiny_recipe(folder: Path, out: Path, **overrides) -> dict:
    """A scratch-CNN recipe at 16 px that trains in about a second."""
    recipe = {
        "data": {"path": str(folder), "image_size": 16, "augment": "none", "batch_size": 8, "workers": 0},
        "model": {
            "backbone": "headstart_cnn",
            "backbone_args": {"widths": [8, 16], "convs_per_block": 1, "dropout": 0.0},
        },
        "stages": [
            {"name": "head", "epochs": 2, "freeze": "backbone", "lr": 0.05},
            {"name": "all", "epochs": 3, "freeze": "none", "lr": 0.01},
        ],
        "run": {"out_dir": str(out), "name": "tiny", "precision": "fp32"},
    }
    for section, values in overrides.items():
        recipe[section] = values if section == "stages" else {**recipe[section], **values}
    return recipe


def train_lite0_head(root: Path) -> tuple[Path, Path]:
    """(run folder, data) of the packaged default backbone after a one-epoch head stage: real weights and ops (TF 'same' padding)."""
    import headstart

    folder = write_images(root / "data", CLASS_COLOURS, per_class=8, size=40)
    recipe = tiny_recipe(
        folder,
        root / "runs",
        data={"image_size": 64},
        model={"backbone": "tf_efficientnet_lite0", "weights": "package", "backbone_args": {}},
        stages=[{"name": "head", "epochs": 1, "freeze": "backbone", "lr": 0.01}],
    )
    return headstart.train(recipe, quiet=True).run_dir, folder


def with_temperature(run_dir: Path, temperature: float = 1.7) -> Path:
    """`run_dir` as if cross-validation had applied a temperature (a tiny run's few val images keep T at 1)."""
    from headstart.core.checkpoint import load_checkpoint

    best = load_checkpoint(run_dir / "best.pt")
    best.temperature = temperature
    best.save(run_dir / "best.pt")
    return run_dir


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Feature caches and the digits folder go to a per-test folder, never the user's ~/.cache."""
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(run folder, data folder) of one tiny trained run, shared by every test of the session: read it, never change it.

    A test that damages the run works on a copy (test_hostile.copy_run, or Mounts.read_only(contents=...)).
    At the end of the session the run must be as it was trained, so a test that wrote into it is found.
    """
    from tests.probes import snapshot, train_tiny_run  # probes imports this module

    run_dir, data = train_tiny_run(tmp_path_factory.mktemp("trained"))
    before = snapshot(run_dir.parent.parent)
    yield run_dir, data
    changed = sorted(set(snapshot(run_dir.parent.parent).items()) ^ set(before.items()))
    assert not changed, f"a test changed the shared trained run (work on a copy): {changed[:5]}"


def write_tag_images(folder: Path, count: int = 48, size: int = 24, seed: int = 0) -> list[tuple[str, tuple[str, ...]]]:
    """Images of four quadrants, each one of the CLASS_COLOURS or grey: an image's tags are the colours it shows.

    Returns (file name, tags) per image; every tag appears alone, with others, and some images show none.
    """
    rng = np.random.default_rng(seed)
    names = list(CLASS_COLOURS)
    folder.mkdir(parents=True, exist_ok=True)
    listed = []
    half = size // 2
    for index in range(count):
        shown = [names[i] for i in range(len(names)) if rng.random() < 0.45]
        quadrants = [CLASS_COLOURS[n] for n in shown] + [(128, 128, 128)] * (4 - len(shown))
        pixels = np.zeros((size, size, 3))
        for q, colour in enumerate(rng.permutation(quadrants)):
            pixels[(q // 2) * half : (q // 2 + 1) * half, (q % 2) * half : (q % 2 + 1) * half] = colour
        pixels = np.clip(pixels + rng.normal(0, 12, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")
        listed.append((f"{folder.name}/{index:03d}.png", tuple(sorted(shown))))
    return listed


@pytest.fixture
def tag_csv(tmp_path: Path) -> Path:
    """A multi-label CSV (path,labels with space-separated colour tags) beside its images."""
    rows = write_tag_images(tmp_path / "tags" / "images", count=60)
    csv_path = tmp_path / "tags" / "tags.csv"
    csv_path.write_text("path,labels\n" + "".join(f"{path},{' '.join(tags)}\n" for path, tags in rows))
    return csv_path
