"""Listing and splitting a large folder: 100,000 files in 10 class folders, plus the file-identity digest.

The files are empty (listing never opens them); the digest stats each one, as the image and
feature caches do once per run. Peak Python memory is measured with tracemalloc.

Usage: python benchmarks/listing.py [--files 100000] [--classes 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

from headstart.config.recipe import DataConfig
from headstart.core.cache import content_key
from headstart.data.layouts import list_images


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="listing-"))
    tic = time.perf_counter()
    for index in range(args.files):
        folder = root / f"class{index % args.classes:02d}"
        if index < args.classes:
            folder.mkdir()
        (folder / f"img{index:07d}.jpg").touch()
    print(f"created {args.files:,} files in {args.classes} folders: {time.perf_counter() - tic:.1f}s")

    for attempt in (1, 2):
        tic = time.perf_counter()
        split = list_images(DataConfig(path=str(root), val_fraction=0.1))
        listed = time.perf_counter() - tic
        tic = time.perf_counter()
        content_key(files=split.train + split.val)
        digested = time.perf_counter() - tic
        print(
            f"run {attempt}: list + stratified split {listed:.2f}s ({len(split.train):,} train / {len(split.val):,} val), "
            f"stat digest {digested:.2f}s"
        )
    # Memory in a separate pass: tracemalloc slows the code it watches about threefold.
    tracemalloc.start()
    split = list_images(DataConfig(path=str(root), val_fraction=0.1))
    print(
        f"peak Python memory while listing: {tracemalloc.get_traced_memory()[1] / 2**20:.0f} MB "
        f"(the listing itself: {len(split.train) + len(split.val):,} paths)"
    )
    tracemalloc.stop()


if __name__ == "__main__":
    main()
