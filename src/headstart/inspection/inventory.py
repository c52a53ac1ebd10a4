"""What a data set holds: images per class and split, odd images, and a digest of every decoded picture.

Each file is opened once at full resolution: its size and mode are read, its pixels decoded to
RGB (EXIF rotation applied, as training sees them) and digested, so a PNG re-saved from a
JPEG's pixels has the same digest as the JPEG, and reduced to a 64x64 grayscale thumbnail and a
mean colour (headstart.data.pixel_match.looks) that near duplicates are matched on. Files that fail are `unreadable` findings.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, ImageFile

from headstart.data.duplicates import Finding, Item
from headstart.data.images import MAX_ASPECT_RATIO, to_rgb
from headstart.data.pixel_match import looks
from headstart.inspection.evidence import Evidence, Facts

# Shorter side below this is `tiny` (a model upsamples it into blur); above HUGE_PIXELS is `huge`.
TINY_SIDE = 16
HUGE_PIXELS = 40_000_000
# Wider than this either way is an `extreme aspect` image (training skips beyond data.MAX_ASPECT_RATIO).
ODD_ASPECT = 5
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "F"}


def pixel_digest(image: Image.Image) -> str:
    return digest_rgb(to_rgb(image))


def digest_rgb(rgb: Image.Image) -> str:
    digest = hashlib.blake2b(f"{rgb.size}".encode(), digest_size=16)
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def examine(item: Item) -> Facts:
    # Truncated files must fail, not come back half grey.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(item.path) as image:
            facts = Facts(image.size[0], image.size[1], image.mode)
            if max(image.size) > MAX_ASPECT_RATIO * max(1, min(image.size)):
                facts.error = (
                    f"aspect ratio {image.size[0]}x{image.size[1]} beyond {MAX_ASPECT_RATIO}:1 (training skips it)"
                )
                return facts
            rgb = to_rgb(image)
            facts.digest = digest_rgb(rgb)
            facts.thumbnail, facts.colour = looks(rgb)
            return facts
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return Facts(error=f"{type(err).__name__}: {err}"[:200])


def examine_all(items: list[Item], threads: int | None = None) -> list[Facts]:
    """Facts for every item, in order (threads: Pillow releases the GIL while decoding)."""
    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        return list(pool.map(examine, items, chunksize=64))


def oddities(facts: Facts) -> list[str]:
    if facts.error:
        return []
    short, long = min(facts.width, facts.height), max(facts.width, facts.height)
    found = []
    if short < TINY_SIDE:
        found.append(f"tiny ({facts.width}x{facts.height})")
    if facts.width * facts.height > HUGE_PIXELS:
        found.append(f"huge ({facts.width}x{facts.height})")
    if long > ODD_ASPECT * short:
        found.append(f"extreme aspect ({facts.width}x{facts.height})")
    return found


def unreadable(evidence: Evidence) -> list[Finding]:
    return [
        Finding("unreadable", item.relative, "", 1.0, {"label": item.label, "reason": fact.error})
        for item, fact in zip(evidence.items, evidence.facts)
        if fact.error
    ]


def odd_images(evidence: Evidence) -> list[Finding]:
    return [
        Finding("odd_image", item.relative, "", 1.0, {"label": item.label, "reason": "; ".join(reasons)})
        for item, fact in zip(evidence.items, evidence.facts)
        if (reasons := oddities(fact))
    ]


def inventory(items: list[Item], facts: list[Facts]) -> dict:
    """Counts per split and class, imbalance (largest / smallest class, readable images), unreadable and mode counts."""
    per_split: dict[str, Counter] = {}
    for item in items:
        per_split.setdefault(item.split, Counter())[item.label] += 1
    # Imbalance is what training will see: a class padded with unreadable files is not a big class.
    per_class = Counter(item.label for item, fact in zip(items, facts) if not fact.error)
    modes = Counter(fact.mode for fact in facts if not fact.error)
    return {
        "images": len(items),
        "classes": len({item.label for item in items}),
        "per_split": {split: dict(sorted(counts.items())) for split, counts in sorted(per_split.items())},
        "imbalance": round(max(per_class.values()) / max(1, min(per_class.values())), 2) if per_class else 0.0,
        "unreadable": sum(1 for fact in facts if fact.error),
        "grayscale": sum(n for mode, n in modes.items() if mode in GRAYSCALE_MODES),
        "cmyk": modes.get("CMYK", 0),
        "sixteen_bit": sum(n for mode, n in modes.items() if mode in SIXTEEN_BIT_MODES),
        "modes": dict(sorted(modes.items())),
    }
