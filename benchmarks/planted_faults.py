"""Plant known faults in real image folders, run `headstart inspect`, and score what it finds.

    python benchmarks/planted_faults.py hymenoptera cat_breeds textures --work /tmp/planted
    python benchmarks/planted_faults.py tiles --only 'exp1_*'     # one lighting of each tile

For each set under ../shared/data (not the tests' data) it writes WORK/<set>/train/<class>/ and
val/<class>/ (a set without its own split is split 80/20 per class, seeded) with, drawn from
disjoint images:
    flipped labels    5 % of the images filed under another class
    exact duplicates  3 %: a byte copy, or every other one a PNG re-saved from the decoded pixels
    near duplicates   7 %: each made one of the TRANSFORMS ways in turn (JPEG quality 30-70, downscale
                      0.5-0.8x, squashed to 224x224, each side cropped 1-5 % or 5-10 %, brightness,
                      contrast and saturation x0.85-1.15, or 3 % a side + 0.8x + JPEG 70)
    leaks             7 % of train images copied into val/: one in 8 a byte copy, the others made
                      each TRANSFORMS way in turn
Exact duplicates already in the source are left out first (pixel digest). Near duplicates the
source itself holds (DTD textures has re-cropped copies; tiles has each tile under several
lightings) cannot be told from false positives by script: pairs of two unmodified source images
are counted apart (`in_source`), drawn on WORK/<set>-source-near-pairs.png to be judged by eye,
and precision is over the other pairs. Prints per-kind precision and recall, both per way of
copying, flipped labels among the label suspects (all, the 24 the page shows, the first 2x as
many as were planted) and what clean.csv leaves out.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.data.duplicates import Finding

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
RATES = {"flip": 0.05, "exact": 0.03, "near": 0.07, "leak": 0.07}


def source_items(source: Path, rng: np.random.Generator) -> list[tuple[str, str, Path]]:
    """(split, class, file) of the source set: its own train/val, else a seeded 80/20 split per class."""
    from headstart.data.splits import regular_files
    from headstart.inspection.inventory import pixel_digest

    items = []
    if (source / "train").is_dir() and (source / "val").is_dir():
        for split in ("train", "val"):
            for folder in sorted(p for p in (source / split).iterdir() if p.is_dir()):
                items += [(split, folder.name, f) for f in regular_files(folder)]
    else:
        for folder in sorted(p for p in source.iterdir() if p.is_dir()):
            files = regular_files(folder)
            order = rng.permutation(len(files))
            cut = round(len(files) * 0.8)
            items += [("train" if rank < cut else "val", folder.name, files[i]) for rank, i in enumerate(order)]
    seen, unique = set(), []
    for item in items:
        with Image.open(item[2]) as image:
            digest = pixel_digest(image)
        if digest not in seen:
            seen.add(digest)
            unique.append(item)
    return unique


# The copies real folders hold, each planted in turn (near duplicates and near leaks alike).
TRANSFORMS = ("jpeg", "downscale", "squash", "crop5", "crop10", "colour", "combo")


def squashed_size(width: int, height: int, rng: np.random.Generator) -> tuple[int, int]:
    """224x224, the preprocessing many shared sets went through; a square picture is squashed to 4:3 or 3:4."""
    if abs(width / height - 1) > 0.1:
        return 224, 224
    return (256, 192) if rng.random() < 0.5 else (192, 256)


def crop(image: Image.Image, fractions: list[float]) -> Image.Image:
    """Cut the given fractions of the width or height off the left, top, right and bottom sides."""
    width, height = image.size
    left, top, right, bottom = (round(f * side) for f, side in zip(fractions, (width, height, width, height)))
    return image.crop((left, top, width - right, height - bottom))


def near_copy(image: Image.Image, transform: str, rng: np.random.Generator) -> Image.Image:
    """One copy of `image` made the way `transform` names (TRANSFORMS), parameters drawn from rng.

    jpeg: re-encoded at quality 30-70. downscale: 0.5-0.8x, aspect kept. squash: resized to 224x224
    (aspect changed). crop5 / crop10: each side cropped 1-5 % / 5-10 %, independently. colour:
    brightness, contrast and saturation each x0.85-1.15. combo: 3 % off each side, 0.8x, JPEG 70.
    """
    from PIL import ImageEnhance

    image = image.convert("RGB")
    width, height = image.size
    if transform in ("jpeg", "combo"):
        if transform == "combo":
            image = crop(image, [0.03] * 4)
            image = image.resize((round(image.width * 0.8), round(image.height * 0.8)), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=70 if transform == "combo" else int(rng.integers(30, 71)))
        return Image.open(io.BytesIO(buffer.getvalue()))
    if transform == "downscale":
        factor = float(rng.uniform(0.5, 0.8))
        return image.resize((round(width * factor), round(height * factor)), Image.Resampling.BICUBIC)
    if transform == "squash":
        return image.resize(squashed_size(width, height, rng), Image.Resampling.BILINEAR)
    if transform in ("crop5", "crop10"):
        low, high = (0.01, 0.05) if transform == "crop5" else (0.05, 0.10)
        return crop(image, rng.uniform(low, high, 4).tolist())
    assert transform == "colour", transform
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(float(rng.uniform(0.85, 1.15)))
    return image


def chosen_images(items: list, rng: np.random.Generator) -> dict[str, set[int]]:
    """Disjoint sets of train images to plant each fault on, RATES of the images each."""
    train = [i for i, item in enumerate(items) if item[0] == "train"]
    counts = {kind: round(len(items) * rate) for kind, rate in RATES.items()}
    drawn = rng.permutation(train)[: sum(counts.values())].tolist()
    chosen, start = {}, 0
    for kind, count in counts.items():
        chosen[kind], start = set(drawn[start : start + count]), start + count
    return chosen


def save(picture: Image.Image, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == ".jpg":
        picture.convert("RGB").save(target, quality=95)
    else:
        picture.save(target)


def plant_one(out: Path, kind: str, relative: str, source: Path, truth: dict, rng: np.random.Generator) -> None:
    """Write the planted copy of `relative` (its source file is `source`) for `kind` and record it in truth."""
    from headstart.data.images import to_rgb

    stem = relative.rsplit(".", 1)[0]
    split, label, name = relative.split("/")
    with Image.open(source) as image:
        if kind == "exact":
            target = f"{stem}_dup{source.suffix}" if len(truth["exact"]) % 2 == 0 else f"{stem}_dup.png"
            save(to_rgb(image), out / target) if target.endswith(".png") else shutil.copyfile(source, out / target)
            truth["exact"].append([target, relative, "exact"])
            return
        leaked = f"val/{label}/{Path(name).stem}_leak"
        turn = len(truth["leak"]) % (len(TRANSFORMS) + 1)
        if kind == "leak" and turn == 0:  # one leak in every 8 a byte copy
            target = f"{leaked}{source.suffix}"
            (out / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, out / target)
            truth["leak"].append([target, relative, "exact"])
            return
        if kind == "leak":
            transform = TRANSFORMS[turn - 1]
            target = f"{leaked}.jpg"
        else:
            transform = TRANSFORMS[len(truth["near"]) % len(TRANSFORMS)]
            target = f"{stem}_near.jpg"
        save(near_copy(to_rgb(image), transform, rng), out / target)
        truth[kind].append([target, relative, transform])


def plant(name: str, work: Path, seed: int, only: str | None = None, label: str | None = None) -> dict:
    """Write the planted folder WORK/<label>; returns the truth: relative paths, [copy, original, transform] per copy.

    `only`: a file name pattern; the source's other files are left out (tiles: one lighting of each tile).
    """
    rng = np.random.default_rng(seed)
    items = [item for item in source_items(DATA / name, rng) if only is None or fnmatch.fnmatch(item[2].name, only)]
    classes = sorted({c for _, c, _ in items})
    out = work / (label or name)
    shutil.rmtree(out, ignore_errors=True)
    chosen = chosen_images(items, rng)
    truth: dict = {"images": len(items), "flipped": [], "exact": [], "near": [], "leak": []}
    for index, (split, label, path) in enumerate(items):
        if index in chosen["flip"]:
            label = str(rng.choice([c for c in classes if c != label]))
        relative = f"{split}/{label}/{path.name}"
        (out / split / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / relative)
        if index in chosen["flip"]:
            truth["flipped"].append(relative)
        for kind in ("exact", "near", "leak"):
            if index in chosen[kind]:
                plant_one(out, kind, relative, path, truth, rng)
                truth["images"] += 1
    return truth


PLANTED_NAMES = ("_dup", "_near", "_leak")


def pairs(findings, kind: str) -> set[frozenset]:
    return {frozenset((f.path, f.other)) for f in findings if f.kind == kind}


def from_source(pair: frozenset) -> bool:
    """Both files are unmodified source images: a duplicate the source set itself holds, not a planted one."""
    return not any(mark in path for path in pair for mark in PLANTED_NAMES)


def through_source(pair: frozenset, known: set, originals: dict[str, str]) -> bool:
    """A planted copy paired with a source image that is itself found as a duplicate of the copy's original
    (the source's own copy, or another photograph of one tile): the pair is true of the pictures, not planted."""
    for path in pair:
        other = next(iter(pair - {path}), path)
        if path in originals and (originals[path] == other or frozenset((originals[path], other)) in known):
            return True
    return False


def score(found: set, truth: set, originals: dict[str, str], known: set) -> dict:
    """Precision counts planted hits among the pairs that involve a planted file; pairs of two source
    images are reported apart (`in_source`) and judged by eye from the contact sheet, and so are
    pairs of a planted copy with a source duplicate of its original (`through_source`)."""
    hits = len(found & truth)
    in_source = {pair for pair in found - truth if from_source(pair)}
    through = {pair for pair in found - truth - in_source if through_source(pair, known, originals)}
    judged = len(found) - len(in_source) - len(through)
    return {
        "planted": len(truth),
        "found": len(found),
        "in_source": len(in_source),
        "through_source": len(through),
        "precision": round(hits / judged, 3) if judged else 1.0,
        "recall": round(hits / len(truth), 3) if truth else 1.0,
    }


def per_transform(found: set, truth: dict[frozenset, str], originals: dict[str, str], known: set) -> dict:
    """Recall and precision for each way of copying: a false pair counts against the transforms of the
    planted files in it (pairs of source files and through-source pairs are left out, as in `score`)."""
    copies = {path: transform for pair, transform in truth.items() for path in pair if path in originals}
    false = [
        pair for pair in found - set(truth) if not from_source(pair) and not through_source(pair, known, originals)
    ]
    table = {}
    for transform in sorted(set(truth.values())):
        planted = {pair for pair, t in truth.items() if t == transform}
        hits = len(found & planted)
        wrong = sum(any(copies.get(path) == transform for path in pair) for pair in false)
        table[transform] = {
            "planted": len(planted),
            "recall": round(hits / len(planted), 3),
            "precision": round(hits / (hits + wrong), 3) if hits + wrong else 1.0,
        }
    return table


def contact_sheet(folder: Path, found: set, target: Path, shown: int = 40) -> None:
    """The source's own pairs side by side (up to `shown`), to judge by eye whether they are copies."""
    chosen = sorted(sorted(pair) for pair in found if from_source(pair))[:shown]
    if not chosen:
        return
    sheet = Image.new("RGB", (2 * 96 * 2 + 8, 96 * ((len(chosen) + 1) // 2)), "white")
    for number, pair in enumerate(chosen):
        for side, path in enumerate(pair):
            with Image.open(folder / path) as image:
                tile = image.convert("RGB").resize((96, 96))
            sheet.paste(tile, ((number % 2) * (2 * 96 + 8) + side * 96, (number // 2) * 96))
    sheet.save(target)


def read_findings(path: Path) -> list[Finding]:
    with open(path, newline="") as handle:
        return [Finding(r["kind"], r["path"], r["other"], float(r["score"])) for r in csv.DictReader(handle)]


def label_scores(findings: list[Finding], flipped: set[str], dropped: set[str], shown: int = 24) -> dict:
    """Planted flips among the label suspects, among the first `shown` (what inspect.html shows) and
    among the first 2x as many as were planted, and what clean.csv leaves out of them."""
    suspects = [f.path for f in findings if f.kind == "label_issue"]
    return {
        "flipped_planted": len(flipped),
        "label_suspects": len(suspects),
        "flipped_in_suspects": len(flipped & set(suspects)),
        "flipped_in_page": len(flipped & set(suspects[:shown])),
        "flipped_in_top_2x": round(len(flipped & set(suspects[: 2 * len(flipped)])) / max(1, len(flipped)), 3),
        "clean_drops_suspects": len(dropped & set(suspects)),
        "clean_drops_flipped": len(dropped & flipped),
    }


def dropped_paths(out: Path) -> set[str]:
    """Relative paths (to the planted folder) that clean.csv left out (none known from a findings.csv
    written before it had its `clean` column)."""
    with open(out / "findings.csv", newline="") as handle:
        return {row["path"] for row in csv.DictReader(handle) if row.get("clean") == "left out"}


def evaluate(name: str, work: Path, seed: int, only: str | None = None, score_only: bool = False) -> dict:
    import headstart

    label = name if only is None else f"{name}-{re.sub(r'[^A-Za-z0-9]+', '', only)}"
    truth = plant(name, work, seed, only, label)
    out = work / f"{label}-inspect"
    seconds, thresholds = float("nan"), []
    if score_only:  # rescore the findings.csv of an earlier run over the same (re-planted, identical) folder
        findings = read_findings(out / "findings.csv")
    else:
        os.environ["HEADSTART_CACHE"] = tempfile.mkdtemp(prefix="planted-cache-")  # cold: embeddings computed
        started = time.perf_counter()
        result = headstart.inspect(work / label, out, quiet=True, seed=seed)
        seconds = time.perf_counter() - started
        shutil.rmtree(os.environ["HEADSTART_CACHE"], ignore_errors=True)
        findings, thresholds = result.findings, [round(v, 4) for v in vars(result.thresholds).values()]
    kinds = {kind: {frozenset(p[:2]): p[2] for p in truth[kind]} for kind in ("exact", "near", "leak")}
    originals = {copy: original for kind in kinds for copy, original, _ in truth[kind]}
    exact = set(kinds["exact"]) | {pair for pair, t in kinds["leak"].items() if t == "exact"}
    near_truth = dict(kinds["near"]) | {pair: t for pair, t in kinds["leak"].items() if t != "exact"}
    found = {kind: pairs(findings, kind) for kind in ("exact_duplicate", "near_duplicate", "leak")}
    known = set().union(*found.values())
    contact_sheet(work / label, found["near_duplicate"], work / f"{label}-source-near-pairs.png")
    return {
        "set": label,
        "images": truth["images"],
        "seconds": round(seconds, 1),
        "near_thresholds": thresholds,
        "exact_duplicate": score(found["exact_duplicate"], exact, originals, known),
        "leak": score(found["leak"], set(kinds["leak"]), originals, known),
        "near_duplicate": score(found["near_duplicate"], set(near_truth), originals, known),
        "near_per_transform": per_transform(found["near_duplicate"], near_truth, originals, known),
        "leak_per_transform": per_transform(found["leak"], kinds["leak"], originals, known),
        **label_scores(findings, set(truth["flipped"]), dropped_paths(out)),
        "outliers": sum(f.kind == "outlier" for f in findings),
        "conflicting_label": sum(f.kind == "conflicting_label" for f in findings),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", help="names under ../shared/data")
    parser.add_argument("--work", default="/tmp/planted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", help="plant into the source files matching this name pattern only, e.g. 'exp1_*'")
    parser.add_argument("--score-only", action="store_true", help="rescore WORK/<set>-inspect/findings.csv")
    args = parser.parse_args()
    for name in args.sets:
        print(json.dumps(evaluate(name, Path(args.work), args.seed, args.only, args.score_only)), flush=True)


if __name__ == "__main__":
    main()
