"""`headstart inspect` on a large synthetic folder of small images: wall time and peak memory.

    python benchmarks/inspect_scale.py --images 100000 --folder /tmp/inspect-100k

Writes N 32x32 PNGs in 10 class folders (a class colour, a per-image shape and noise), with 0.1 %
planted byte copies so the exact-duplicate path is checked at scale, then runs `headstart.inspect`
at the images' own size (32 px, EfficientNet-Lite0 packaged weights) and prints seconds, peak
resident memory (ru_maxrss) and whether every planted copy was found. Run it nice'd: it is long.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image


def build(folder: Path, images: int, seed: int) -> list[tuple[str, str]]:
    """Write the folder once (kept between runs); returns the planted (copy, original) pairs."""
    truth = folder.parent / f"{folder.name}-truth.json"
    if truth.is_file():
        return [tuple(p) for p in json.loads(truth.read_text())]
    rng = np.random.default_rng(seed)
    classes = 10
    colours = rng.integers(30, 226, (classes, 3))
    for c in range(classes):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
    for index in range(images):
        c = index % classes
        pixels = np.clip(colours[c] + rng.normal(0, 30, (32, 32, 3)), 0, 255)
        x, y, w = (int(v) for v in rng.integers(0, 24, 3))
        pixels[y : y + 8, x : x + 8] = rng.integers(0, 256, 3)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"class{c}" / f"{index:06d}.png")
    planted = []
    for index in rng.choice(images, size=images // 1000, replace=False).tolist():
        c = index % classes
        original = f"class{c}/{index:06d}.png"
        copy = f"class{c}/{index:06d}_copy.png"
        shutil.copyfile(folder / original, folder / copy)
        planted.append((copy, original))
    truth.write_text(json.dumps(planted))
    return planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--folder", default="/tmp/inspect-100k")
    parser.add_argument("--out", default="/tmp/inspect-100k-out")
    args = parser.parse_args()
    folder = Path(args.folder)
    started = time.perf_counter()
    planted = build(folder, args.images, seed=0)
    print(f"folder ready in {time.perf_counter() - started:.0f} s: {args.images} images + {len(planted)} copies")

    import headstart

    started = time.perf_counter()
    result = headstart.inspect(folder, args.out, image_size=32, batch_size=256, quiet=True)
    seconds = time.perf_counter() - started
    found = {frozenset((f.path, f.other)) for f in result.of("exact_duplicate")}
    missed = [p for p in planted if frozenset(p) not in found]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total = args.images + len(planted)
    print(
        json.dumps(
            {
                "images": total,
                "seconds": round(seconds, 1),
                "seconds_per_1000": round(seconds / total * 1000, 2),
                "peak_rss_mb": round(peak_mb),
                "exact_duplicate_rows": result.count("exact_duplicate"),
                "planted_copies_missed": len(missed),
                "near_duplicate_rows": result.count("near_duplicate"),
                "label_issue_rows": result.count("label_issue"),
                "outlier_rows": result.count("outlier"),
                "near_thresholds": [round(v, 4) for v in vars(result.thresholds).values()],
            }
        )
    )


if __name__ == "__main__":
    main()
