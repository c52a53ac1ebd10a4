"""headstart inspect: every kind of fault planted in generated images is found; clean folders and user files stay clean."""

from __future__ import annotations

import csv
import hashlib
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import headstart
from headstart.cli import main
from headstart.data.duplicates import Item, exact_findings, nearest, train_check
from headstart.inspection.label_issues import confident_suspects
from tests.conftest import tiny_recipe

COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 60, 200)}


def scene(colour: tuple[int, int, int], seed: int, size: int = 64) -> Image.Image:
    """A class-coloured background with a few random shapes: distinct pictures, alike within a class."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), colour)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = rng.integers(0, size - 16, 2)
        w, h = rng.integers(8, 28, 2)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((int(x), int(y), int(x + w), int(y + h)), fill=fill)
    return image


def write_scenes(folder: Path, per_class: int, seed: int) -> Path:
    for number, (name, colour) in enumerate(COLOURS.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            scene(colour, seed * 1000 + number * 100 + index).save(folder / name / f"{index:03d}.png")
    return folder


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """DATA/train + DATA/val with one of each fault; inspected once, shared by the tests below."""
    root = tmp_path_factory.mktemp("planted")
    data = root / "data"
    write_scenes(data / "train", per_class=14, seed=1)
    write_scenes(data / "val", per_class=4, seed=2)
    train = data / "train"
    Image.open(train / "red/001.png").convert("RGB").save(train / "red/001_copy.bmp")  # same pixels, other format
    shutil.copyfile(train / "blue/002.png", data / "val/blue/leaked.png")
    shutil.copyfile(train / "red/003.png", train / "green/conflict.png")
    near = Image.open(train / "green/004.png").convert("RGB").resize((51, 51), Image.Resampling.BILINEAR)
    near.save(train / "green/004_small.jpg", quality=60)
    scene(COLOURS["red"], 999).save(train / "blue/flipped.png")  # a red picture filed under blue
    checker = np.indices((64, 64)).sum(axis=0) // 8 % 2 * 255
    Image.fromarray(np.stack([checker] * 3, axis=-1).astype(np.uint8)).save(train / "red/checker.png")
    (train / "red/notes.png").write_text("not an image")
    Image.new("RGB", (200, 12), COLOURS["red"]).save(train / "red/strip.png")
    before = snapshot(data)
    result = headstart.inspect(data, root / "out", image_size=64, label_margin=0.3, quiet=True)
    return data, result, before


def rows_of(result, kind: str) -> list[tuple[str, str]]:
    return [(f.path, f.other) for f in result.of(kind)]


def test_exact_duplicates_leaks_and_conflicts_are_found(planted):
    _, result, _ = planted
    exact = {frozenset(pair) for pair in rows_of(result, "exact_duplicate")}
    assert frozenset(("train/red/001.png", "train/red/001_copy.bmp")) in exact
    assert frozenset(("train/red/003.png", "train/green/conflict.png")) in exact
    # The held-out copy is named in `path`; the leak also has its duplicate row.
    assert rows_of(result, "leak") == [("val/blue/leaked.png", "train/blue/002.png")]
    assert frozenset(("val/blue/leaked.png", "train/blue/002.png")) in exact
    assert {frozenset(p) for p in rows_of(result, "conflicting_label")} == {
        frozenset(("train/red/003.png", "train/green/conflict.png"))
    }
    assert len(exact) == 3


def test_near_duplicate_is_found_with_its_threshold(planted):
    _, result, _ = planted
    near = {frozenset(pair) for pair in rows_of(result, "near_duplicate")}
    assert frozenset(("train/green/004.png", "train/green/004_small.jpg")) in near
    assert result.thresholds.match == 0.88 and 0.9 <= result.thresholds.copies <= 1
    assert all(f.score >= result.thresholds.match for f in result.of("near_duplicate"))


def test_flipped_label_outlier_unreadable_and_odd_image_are_found(planted):
    _, result, _ = planted
    suspects = result.of("label_issue")
    assert suspects and suspects[0].path == "train/blue/flipped.png"
    assert suspects[0].extra["label"] == "blue" and suspects[0].extra["suggested"] == "red"
    assert [f.path for f in result.of("outlier")][:1] == ["train/red/checker.png"]
    assert [f.path for f in result.of("unreadable")] == ["train/red/notes.png"]
    assert [f.path for f in result.of("odd_image")] == ["train/red/strip.png"]
    assert result.inventory["per_split"]["val"] == {"blue": 5, "green": 4, "red": 4}


def test_outputs_and_user_files(planted):
    data, result, before = planted
    assert snapshot(data) == before  # nothing of the user's changed, nothing written into DATA
    with open(result.out / "findings.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:4] == ["kind", "path", "other", "score"]
    assert {row[0] for row in rows[1:]} == {
        "exact_duplicate",
        "leak",
        "conflicting_label",
        "near_duplicate",
        "label_issue",
        "outlier",
        "unreadable",
        "odd_image",
    }
    with open(result.out / "clean.csv", newline="") as handle:
        clean = list(csv.DictReader(handle))
    assert not any(Path(row["path"]).is_absolute() for row in clean)  # relative to clean.csv's folder
    kept = {str((result.out / row["path"]).resolve().relative_to(data.resolve())) for row in clean}
    for dropped in ("val/blue/leaked.png", "train/red/notes.png", "train/green/conflict.png", "train/red/003.png"):
        assert dropped not in kept
    assert "train/blue/002.png" in kept and "train/blue/flipped.png" not in kept
    for suspect in result.of("label_issue"):  # left out exactly when p(suggested) - p(given) >= label_margin
        conflicting = suspect.path in ("train/green/conflict.png", "train/red/003.png")  # left out as conflicting
        assert (suspect.path in kept) == (suspect.extra["margin"] < 0.3 and not conflicting)
    assert {row["split"] for row in clean} == {"train", "val"}
    assert len(clean) == result.kept


def test_inspect_page_loads_in_a_browser(planted, tmp_path):
    from tests.test_report import load_in_browser

    _, result, _ = planted
    page = result.out / "inspect.html"
    text = page.read_text()
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched: every picture is inlined
    check = load_in_browser(page, tmp_path)
    assert check["errors"] == [] and check["broken"] == []
    # Pairs show two pictures; the unreadable file shows none.
    assert check["images"] >= 2 * 3 + 1


def test_clean_folder_has_no_duplicates_or_leaks(tmp_path):
    data = tmp_path / "clean"
    write_scenes(data / "train", per_class=8, seed=5)
    write_scenes(data / "val", per_class=3, seed=6)
    result = headstart.inspect(data, tmp_path / "out", image_size=64, quiet=True)
    for kind in ("exact_duplicate", "near_duplicate", "leak", "conflicting_label", "unreadable"):
        assert result.count(kind) == 0, kind
    assert result.kept == 3 * 11


def test_plain_folder_is_one_split_and_clean_csv_trains(tmp_path, capsys):
    data = write_scenes(tmp_path / "plain", per_class=8, seed=7)
    shutil.copyfile(data / "red/000.png", data / "red/000_again.png")
    assert main(["inspect", str(data), "--out", str(tmp_path / "out"), "--image-size", "64", "--quiet"]) == 0
    with open(tmp_path / "out/findings.csv", newline="") as handle:
        kinds = [row["kind"] for row in csv.DictReader(handle)]
    assert kinds.count("exact_duplicate") == 1 and "leak" not in kinds  # one split: a copy is no leak
    moved = tmp_path / "moved"  # the data and the report move together: clean.csv's relative paths still hold
    moved.mkdir()
    shutil.move(data, moved / "plain")
    shutil.move(tmp_path / "out", moved / "out")
    result = headstart.train(tiny_recipe(moved / "out/clean.csv", tmp_path / "runs"), quiet=True)
    assert result.history and result.classes == ["blue", "green", "red"]


def test_train_warns_about_copies_and_leaks(split_folder, tmp_path, caplog):
    shutil.copyfile(split_folder / "train/red/000.png", split_folder / "val/red/copy.png")
    shutil.copyfile(split_folder / "train/blue/001.png", split_folder / "train/blue/copy.png")
    recipe = tiny_recipe(split_folder, tmp_path / "runs", stages=[{"name": "head", "epochs": 1, "freeze": "none"}])
    with caplog.at_level(logging.WARNING, logger="headstart"):
        headstart.train(recipe, quiet=True)
    warning = [r.getMessage() for r in caplog.records if "exact duplicate" in r.getMessage()]
    assert len(warning) == 1
    assert warning[0].startswith("2 exact duplicate file(s) in the data, 1 of them across splits")
    assert "headstart inspect" in warning[0]


def test_bad_threshold_is_a_one_line_error(colour_folder, capsys):
    assert main(["inspect", str(colour_folder), "--near-threshold", "1.5"]) == 2
    assert capsys.readouterr().err.startswith(
        "headstart: error: near threshold 1.5: give a pixel match in (0, 1], or none for 0.88"
    )


def test_blocked_neighbour_search_equals_brute_force(monkeypatch):
    import headstart.data.duplicates as duplicates

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors[7] = vectors[3] + 0.01
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    monkeypatch.setattr(duplicates, "ROW_BLOCK", 7)
    monkeypatch.setattr(duplicates, "COLUMN_BLOCK", 5)
    found = nearest(vectors, 4)
    full = vectors @ vectors.T
    np.fill_diagonal(full, -np.inf)
    expected = np.argsort(-full, axis=1)[:, :4]
    assert [set(row) for row in found.tolist()] == [set(row) for row in expected.tolist()]
    assert 7 in found[3] and 3 in found[7]
    assert nearest(vectors[:1], 4).shape == (1, 0)  # one picture has no neighbour


def test_exact_findings_keep_the_train_copy():
    items = [
        Item("val", Path("v.png"), "val/a/v.png", "a"),
        Item("train", Path("t.png"), "train/a/t.png", "a"),
        Item("train", Path("u.png"), "train/b/u.png", "b"),
    ]
    found = exact_findings(items, ["d", "d", "d"])
    assert [(f.kind, f.path, f.other) for f in found] == [
        ("exact_duplicate", "train/b/u.png", "train/a/t.png"),
        ("conflicting_label", "train/b/u.png", "train/a/t.png"),
        ("exact_duplicate", "val/a/v.png", "train/a/t.png"),
        ("leak", "val/a/v.png", "train/a/t.png"),
    ]


def test_confident_learning_flags_only_confident_disagreement():
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.85, 0.15], [0.45, 0.55]])
    labels = np.array([0, 0, 1, 1, 1, 0])
    # Row 4 is labelled 1 but confidently 0; row 5 leans to 1 below class 1's threshold (mean 0.62).
    assert [(row, suggested) for row, suggested, _ in confident_suspects(probabilities, labels)] == [(4, 0)]


def test_train_check_counts_byte_copies(tmp_path):
    for name, content in {"a": b"1", "b": b"1", "c": b"2", "d": b"2", "e": b"3", "f": b"33", "g": b"3"}.items():
        (tmp_path / name).write_bytes(content)
    train = [(tmp_path / "a", 0), (tmp_path / "b", 0), (tmp_path / "c", 1)]
    val = [(tmp_path / "d", 1), (tmp_path / "e", 0)]
    assert train_check({"train": train, "val": val}) == (2, 1)
    test = [(tmp_path / "f", 0), (tmp_path / "g", 0)]  # g copies val's e: a leak between held-out splits too
    assert train_check({"train": train, "val": val, "test": test}) == (3, 2)


def test_too_many_near_pairs_warn(caplog):
    from headstart.data.duplicates import Thresholds
    from headstart.inspection.inspect_data import warn_if_inseparable

    with caplog.at_level(logging.WARNING, logger="headstart"):
        warn_if_inseparable(10, 10, Thresholds(0.9, 0.95))
        assert not caplog.records
        warn_if_inseparable(11, 10, Thresholds(0.9, 0.95))
    assert "11 near-duplicate pairs among 10 images" in caplog.records[0].getMessage()


def test_the_page_ranks_caps_says_what_clean_csv_drops_and_ends_with_the_next_command(tmp_path):
    """The page's words, not its pixels: label issues most sure first, capped with a count of the rest, each saying
    in plain words what is wrong and whether clean.csv keeps it; the page ends with the command to train on clean.csv."""
    from headstart.data.duplicates import Finding, Thresholds
    from headstart.inspection.report import SHOWN_PER_KIND, InspectResult, page, sorted_findings

    def suspect(number: int, p_given: float) -> Finding:
        p_suggested = 1 - p_given
        extra = {"label": "bees", "suggested": "ants", "p_given": p_given, "p_suggested": p_suggested,
                 "margin": round(p_suggested - p_given, 4), "confident": True}  # fmt: skip
        return Finding("label_issue", f"train/bees/{number:03d}.jpg", "", round(1 - p_given, 4), extra)

    findings = [suspect(n, p) for n, p in enumerate(np.linspace(0.5, 0.02, SHOWN_PER_KIND + 6))]
    findings.append(
        Finding("leak", "val/ants/a.jpg", "train/ants/a.jpg", 0.98, {"split": "val", "other_split": "train"})
    )
    inventory = {"images": 100, "classes": 2, "per_split": {"train": {"ants": 50, "bees": 50}}, "modes": {"RGB": 100}}
    result = InspectResult(tmp_path / "report", sorted_findings(findings), inventory, Thresholds(0.9, 0.95))
    text = re.sub(r"<[^>]+>", " ", page(result, tmp_path, label_margin=0.5))
    text = re.sub(r"\s+", " ", text)
    assert "details in" not in text and "clean.csv keeps" not in text  # the console line stays in the console
    # Most sure first: the lowest p(given) leads; the rest are counted, not shown.
    first = text.index("train/bees/029.jpg")
    assert first < text.index("train/bees/028.jpg") and "train/bees/005.jpg" not in text
    assert f"{SHOWN_PER_KIND} of 30 shown, the 6 others are in findings.csv" in text
    assert "filed as bees, looks like ants (98 % ants, 2 % bees)" in text
    shown = result.of("label_issue")[:SHOWN_PER_KIND]
    assert text.count("left out of clean.csv") == 1 + sum(f.extra["margin"] >= 0.5 for f in shown)  # the leak too
    assert "kept in clean.csv" in text
    assert text.rstrip().endswith(f"headstart train {tmp_path / 'report' / 'clean.csv'}")
