"""Plant known faults in real image folders, run `headstart inspect`, and score what it finds.

    python benchmarks/planted_faults.py hymenoptera cat_breeds textures --work /tmp/planted

For each set under ../shared/data (not the tests' data) it writes WORK/<set>/train/<class>/ and
val/<class>/ (a set without its own split is split 80/20 per class, seeded) with, drawn from
disjoint images:
    flipped labels    5 % of the images filed under another class
    exact duplicates  3 %: a byte copy, or every other one a PNG re-saved from the decoded pixels
    near duplicates   3 %: re-encoded at JPEG quality 30-60, resized 0.8x, or cropped 3 %, in turn
    leaks             2 % of train images copied into val/: every other one resized 0.8x
Exact duplicates already in the source are left out first (pixel digest). Near duplicates the
source itself holds (DTD textures has re-cropped copies, for one) cannot be told from false
positives by script: pairs of two unmodified source images are counted apart (`in_source`), drawn
on WORK/<set>-source-near-pairs.png to be judged by eye, and precision is over the other pairs. Prints per-kind precision and recall, flipped labels found among the
top 2x as many label suspects as were planted, and seconds per 1,000 images (cold caches).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from headstart.data.duplicates import Finding

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
RATES = {"flip": 0.05, "exact": 0.03, "near": 0.03, "leak": 0.02}


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


def near_copy(image: Image.Image, turn: int, rng: np.random.Generator) -> Image.Image:
    image = image.convert("RGB")
    width, height = image.size
    if turn % 3 == 0:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(30, 61)))
        return Image.open(io.BytesIO(buffer.getvalue()))
    if turn % 3 == 1:
        return image.resize((round(width * 0.8), round(height * 0.8)), Image.Resampling.BICUBIC)
    dx, dy = round(width * 0.015), round(height * 0.015)
    return image.crop((dx, dy, width - dx, height - dy))


def plant(name: str, work: Path, seed: int) -> dict:
    """Write the planted folder; returns the truth (relative paths)."""
    rng = np.random.default_rng(seed)
    items = source_items(DATA / name, rng)
    classes = sorted({c for _, c, _ in items})
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    train = [i for i, item in enumerate(items) if item[0] == "train"]
    counts = {kind: round(len(items) * rate) for kind, rate in RATES.items()}
    drawn = rng.permutation(train)[: sum(counts.values())].tolist()
    chosen, start = {}, 0
    for kind, count in counts.items():
        chosen[kind], start = set(drawn[start : start + count]), start + count
    truth = {"images": 0, "flipped": [], "exact": [], "near": [], "leak_exact": [], "leak_near": []}
    for index, (split, label, path) in enumerate(items):
        if index in chosen["flip"]:
            label = str(rng.choice([c for c in classes if c != label]))
        relative = f"{split}/{label}/{path.name}"
        (out / split / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / relative)
        truth["images"] += 1
        if index in chosen["flip"]:
            truth["flipped"].append(relative)
        stem = f"{split}/{label}/{path.stem}"
        with Image.open(path) as image:
            extra = None
            if index in chosen["exact"]:
                if len(truth["exact"]) % 2:
                    from headstart.data.images import to_rgb

                    extra = ("exact", f"{stem}_dup.png", to_rgb(image))
                else:
                    shutil.copyfile(path, out / f"{stem}_dup{path.suffix}")
                    truth["exact"].append([f"{stem}_dup{path.suffix}", relative])
            elif index in chosen["near"]:
                extra = ("near", f"{stem}_near.jpg", near_copy(image, len(truth["near"]), rng))
            elif index in chosen["leak"]:
                (out / "val" / label).mkdir(parents=True, exist_ok=True)
                leaked = f"val/{label}/{path.stem}_leak"
                if len(truth["leak_exact"]) <= len(truth["leak_near"]):
                    shutil.copyfile(path, out / f"{leaked}{path.suffix}")
                    truth["leak_exact"].append([f"{leaked}{path.suffix}", relative])
                else:
                    extra = ("leak_near", f"{leaked}.jpg", near_copy(image, 1, rng))
            if extra is not None:
                kind, target, picture = extra
                picture.convert("RGB").save(out / target, quality=90) if target.endswith(".jpg") else picture.save(
                    out / target
                )
                truth[kind].append([target, relative])
        truth["images"] += extra is not None or index in chosen["exact"] or index in chosen["leak"]
    return truth


PLANTED_NAMES = ("_dup", "_near", "_leak")


def pairs(findings, kind: str) -> set[frozenset]:
    return {frozenset((f.path, f.other)) for f in findings if f.kind == kind}


def from_source(pair: frozenset) -> bool:
    """Both files are unmodified source images: a duplicate the source set itself holds, not a planted one."""
    return not any(mark in path for path in pair for mark in PLANTED_NAMES)


def through_source(pair: frozenset, found: set, originals: dict[str, str]) -> bool:
    """A planted copy paired with a source image that is itself found as a copy of the planted copy's original."""
    for path in pair:
        other = next(iter(pair - {path}), path)
        if path in originals and frozenset((originals[path], other)) in found:
            return True
    return False


def score(found: set, truth: set, originals: dict[str, str]) -> dict:
    """Precision counts planted hits among the pairs that involve a planted file; pairs of two source
    images are reported apart (`in_source`) and judged by eye from the contact sheet, and so are
    pairs of a planted copy with a source copy of its original (`through_source`)."""
    hits = len(found & truth)
    in_source = {pair for pair in found - truth if from_source(pair)}
    through = {pair for pair in found - truth - in_source if through_source(pair, found, originals)}
    judged = len(found) - len(in_source) - len(through)
    return {
        "planted": len(truth),
        "found": len(found),
        "in_source": len(in_source),
        "through_source": len(through),
        "precision": round(hits / judged, 3) if judged else 1.0,
        "recall": round(hits / len(truth), 3) if truth else 1.0,
    }


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


def evaluate(name: str, work: Path, seed: int, score_only: bool = False) -> dict:
    import headstart

    truth = plant(name, work, seed)
    seconds, thresholds = float("nan"), []
    if score_only:  # rescore the findings.csv of an earlier run over the same (re-planted, identical) folder
        findings = read_findings(work / f"{name}-inspect" / "findings.csv")
    else:
        os.environ["HEADSTART_CACHE"] = tempfile.mkdtemp(prefix="planted-cache-")  # cold: embeddings computed
        started = time.perf_counter()
        result = headstart.inspect(work / name, work / f"{name}-inspect", quiet=True, seed=seed)
        seconds = time.perf_counter() - started
        shutil.rmtree(os.environ["HEADSTART_CACHE"], ignore_errors=True)
        findings, thresholds = result.findings, [round(v, 4) for v in vars(result.thresholds).values()]
    as_set = {k: {frozenset(p) for p in v} for k, v in truth.items() if k not in ("images", "flipped")}
    originals = {copy: original for k in as_set for copy, original in truth[k]}
    suspects = [f.path for f in findings if f.kind == "label_issue"]
    top = suspects[: 2 * len(truth["flipped"])]
    flipped = set(truth["flipped"])
    near = pairs(findings, "near_duplicate")
    contact_sheet(work / name, near, work / f"{name}-source-near-pairs.png")
    return {
        "set": name,
        "images": truth["images"],
        "seconds": round(seconds, 1),
        "seconds_per_1000": round(seconds / truth["images"] * 1000, 1),
        "near_thresholds": thresholds,
        "exact_duplicate": score(pairs(findings, "exact_duplicate"), as_set["exact"] | as_set["leak_exact"], originals),
        "leak": score(pairs(findings, "leak"), as_set["leak_exact"] | as_set["leak_near"], originals),
        "near_duplicate": score(near, as_set["near"] | as_set["leak_near"], originals),
        "flipped_in_top_2x": round(len(flipped & set(top)) / max(1, len(flipped)), 3),
        "flipped_planted": len(flipped),
        "label_suspects": len(suspects),
        "label_suspect_precision": round(len(flipped & set(suspects)) / max(1, len(suspects)), 3),
        "outliers": sum(f.kind == "outlier" for f in findings),
        "conflicting_label": sum(f.kind == "conflicting_label" for f in findings),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", help="names under ../shared/data")
    parser.add_argument("--work", default="/tmp/planted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score-only", action="store_true", help="rescore WORK/<set>-inspect/findings.csv")
    args = parser.parse_args()
    for name in args.sets:
        print(json.dumps(evaluate(name, Path(args.work), args.seed, args.score_only)), flush=True)


if __name__ == "__main__":
    main()
