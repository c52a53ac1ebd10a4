"""How cost grows with the data: wall time and peak memory for 250, 500, 1000, 2000 images.

Builds class folders of N images from cat_breeds (beyond its 995 images, mirrored copies), then
runs the default backbone with two stages in a fresh process per N: a 2-epoch head stage on the
cached features and a 1-epoch `top:3` fine-tuning stage. Peak memory is the child's max RSS.

Usage: python benchmarks/scaling.py [SOURCE] [--sizes 250,500,1000,2000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps


def make_folder(source: Path, target: Path, count: int) -> None:
    originals = sorted(p for p in source.rglob("*") if p.is_file())
    for index in range(count):
        path = originals[index % len(originals)]
        folder = target / path.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        if index < len(originals):
            (folder / path.name).symlink_to(path.resolve())
        else:  # a mirrored copy is a new image for the decoder and the cache
            with Image.open(path) as image:
                ImageOps.mirror(image.convert("RGB")).save(folder / f"mirror{index}_{path.stem}.jpg", quality=90)


def child(data: str, cache: str) -> None:
    import os

    os.environ["HEADSTART_CACHE"] = cache
    import headstart

    recipe = {
        "data": {"path": data, "augment": "none"},
        "stages": [
            {"name": "head", "epochs": 2, "freeze": "backbone", "lr": 0.002},
            {"name": "finetune", "epochs": 1, "freeze": "top:3", "lr": 0.001, "body_lr_mult": 0.3},
        ],
        "run": {"out_dir": str(Path(cache) / "runs"), "name": "scale"},
    }
    result = headstart.train(recipe, quiet=True)
    print(json.dumps({"rows": result.history}))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("source", nargs="?", default=str(Path(__file__).parents[2] / "shared/data/cat_breeds"))
    parser.add_argument("--sizes", default="250,500,1000,2000")
    args = parser.parse_args()
    print(f"{'images':>7}{'wall s':>9}{'head ep2 s':>12}{'finetune s':>12}{'peak RSS MB':>13}{'s / 1000 img':>14}")
    for size in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            make_folder(Path(args.source), Path(tmp) / "data", size)
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            tic = time.perf_counter()
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(Path(tmp) / "data"), str(Path(tmp) / "cache")],
                capture_output=True,
                text=True,
                check=True,
            )
            wall = time.perf_counter() - tic
            # ru_maxrss of children is the largest so far; each size is larger than the last.
            peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
            rows = json.loads(done.stdout.strip().splitlines()[-1])["rows"]
            print(
                f"{size:>7}{wall:>9.1f}{rows[1]['seconds']:>12.2f}{rows[2]['seconds']:>12.1f}{peak:>13.0f}{wall / size * 1000:>14.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
