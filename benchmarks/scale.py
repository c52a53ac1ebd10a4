"""The default recipe at 1k, 10k, ... images: wall time per 1,000 images, peak memory, and where the time goes.

Images are generated from the dev sets' class folders (SOURCE: one folder of class folders, or
several): each new image is a random crop (60-100 % of each side) of a source image, mirrored at
random, resized to a random 256-512 px long side and saved as a JPEG at quality 85, so every file
is a distinct image at a realistic size for the decoder, and its class is its source's. Each N
runs in a fresh process with an empty $HEADSTART_CACHE; phases are read from the run's own log
(timestamps of its lines): listing, decoding, the feature pass, the epochs, and what follows.

    python benchmarks/scale.py --sizes 1000,10000 --work /tmp/scale SOURCE [SOURCE ...]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp"}


def originals(sources: list[Path]) -> list[tuple[Path, str]]:
    found = []
    for source in sources:
        for path in sorted(source.rglob("*")):
            if path.suffix.lower() in EXTENSIONS:
                found.append((path, f"{source.name}-{path.parent.name}"))
    return found


def make_one(job: tuple[int, Path, str, Path, int]) -> None:
    """One generated image; its own seeded RNG, so images are the same whatever the number of workers."""
    index, path, label, target, seed = job
    rng = random.Random(seed * 1_000_003 + index)
    folder = target / label
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        w, h = int(width * rng.uniform(0.6, 1.0)), int(height * rng.uniform(0.6, 1.0))
        left, top = rng.randint(0, width - w), rng.randint(0, height - h)
        image = image.crop((left, top, left + w, top + h))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        side = rng.randint(256, 512)
        scale = side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        image.save(folder / f"g{index:06d}.jpg", quality=85)


def generate(sources: list[Path], target: Path, count: int, seed: int = 0) -> None:
    """`count` distinct JPEGs in class folders under `target` (made once; a rerun reuses them)."""
    done = target / ".complete"
    if done.is_file() and int(done.read_text()) == count:
        return
    pool = originals(sources)
    jobs = [(index, *pool[index % len(pool)], target, seed) for index in range(count)]
    with multiprocessing.Pool(os.cpu_count()) as workers:  # generating is not timed: use every core
        workers.map(make_one, jobs, chunksize=256)
    done.write_text(str(count))


CHILD = """
import json, logging, resource, sys, time
import headstart
events = []
class Clock(logging.Handler):
    def emit(self, record):
        events.append((time.perf_counter(), record.getMessage()[:90]))
logging.getLogger("headstart").addHandler(Clock())
logging.getLogger("headstart").setLevel(logging.INFO)
tic = time.perf_counter()
result = headstart.train({"data": {"path": sys.argv[1], "test_fraction": 0.1}, "run": {"out_dir": sys.argv[2]}}, quiet=False)
wall = time.perf_counter() - tic
def at(prefix):
    return next((t - tic for t, m in events if m.startswith(prefix)), None)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
epochs = {}
for row in result.history:
    epochs[row["stage"]] = epochs.get(row["stage"], 0.0) + row["seconds"]
print(json.dumps({"wall_s": wall, "peak_rss_mb": peak, "listed_s": at("layout:"), "decoded_s": at("weights:"),
                  "pass_done_s": at("feature cache at head"), "stage_epoch_s": epochs,
                  "epochs": len(result.history), "test_acc": (result.test or {}).get("acc")}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "headstart-scale")
    args = parser.parse_args()
    for count in map(int, args.sizes.split(",")):
        data = args.work / f"images-{count}"
        generate(args.sources, data, count)
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as runs:
            env = {**os.environ, "HEADSTART_CACHE": cache}
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(data), runs], env=env, capture_output=True, text=True, check=False
            )
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        row = {"images": count, **json.loads(done.stdout.strip().splitlines()[-1])}
        row["s_per_1000"] = row["wall_s"] / count * 1000
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
