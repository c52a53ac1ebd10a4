"""Embeddings of every image from the frozen backbone: the features a head-only stage trains on.

The model is the recipe's backbone with a `linear` head; `features.find_cut` splits it after the
head's pooling, exactly where a head-only stage's feature cache is cut, and that prefix embeds
the images through the eval transform. Images are decoded and embedded in chunks, so memory holds
one chunk of decoded images plus the (N, D) embeddings, which go to a memory-mapped file under
$HEADSTART_CACHE/embeddings/<key>.npy, keyed by the files and everything that changes the output,
so inspecting the same folder again skips the backbone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from headstart.config.recipe import Recipe
from headstart.core import cache
from headstart.core.hardware import Hardware
from headstart.core.progress import progress
from headstart.data.batches import make_loader
from headstart.data.datasets import cache_root
from headstart.data.images import ImageDataset, build_transforms, decode_all, short_side_for
from headstart.model.build import build_model
from headstart.model.cut import find_cut
from headstart.model.freeze import plan_freeze
from headstart.training.features import prefix_fingerprint

log = logging.getLogger(__name__)

CHUNK = 512


class Embedder:
    """The recipe's frozen backbone + pooling, ready to embed lists of files or in-memory pictures."""

    def __init__(self, recipe: Recipe, preprocessing: dict, hw: Hardware):
        model = build_model(recipe.model, 2, preprocessing["image_size"])
        cut = find_cut(model, plan_freeze(model, "backbone", "frozen"), preprocessing["image_size"])
        assert cut is not None  # with the whole backbone frozen, the cut is the head's: always found
        self.prefix: nn.Module = cut.prefix.to(hw.device).eval()
        if hw.channels_last:
            self.prefix.to(memory_format=torch.channels_last)
        self.recipe, self.preprocessing, self.hw = recipe, preprocessing, hw
        self.short_side = short_side_for(preprocessing)
        self.transform = build_transforms(preprocessing, "none")[1]

    @torch.no_grad()
    def arrays(self, pictures: list[np.ndarray]) -> np.ndarray:
        """L2-normalised embeddings (float32) of decoded RGB pictures."""
        dataset = ImageDataset([(Path(""), 0)] * len(pictures), self.transform, pictures)
        loader = make_loader(dataset, self.recipe.data.batch_size, False, 0, 0)
        chunks = []
        for inputs, _ in loader:
            with self.hw.autocast():
                features = self.prefix(self.hw.to_input(inputs))
            chunks.append(features.float().flatten(1).cpu())
        embedded = torch.cat(chunks).numpy()
        return embedded / np.maximum(np.linalg.norm(embedded, axis=1, keepdims=True), 1e-12)

    def key(self, paths: list[Path]) -> str:
        fields = {
            "model": self.recipe.model.model_dump(),
            "preprocessing": self.preprocessing,
            "precision": self.hw.precision,
            "prefix": prefix_fingerprint(self.prefix),
        }
        return cache.content_key(fields, files=[(p, 0) for p in paths])

    def files(self, paths: list[Path], quiet: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings memory-mapped from the cache, which rows decoded); rows of files that failed are zero.

        A cache entry like every other (core.cache.ensure): built in a staging folder, published by
        one rename, verified (sizes) before reuse.
        """
        folder = cache_root() / "embeddings" / self.key(paths)
        reused = folder.is_dir()
        cache.ensure(folder, lambda staging: self.build(paths, staging, quiet), {"rows": len(paths)}, "embeddings",
                     checksums=False)  # fmt: skip
        if reused:
            log.info("embeddings reused from %s", folder)
        return np.load(folder / "embeddings.npy", mmap_mode="r"), np.load(folder / "decoded.npy")

    def build(self, paths: list[Path], staging: Path, quiet: bool) -> None:
        """Embed every image in chunks into staging/embeddings.npy (rows of failed files stay zero)."""
        output, ok = None, np.zeros(len(paths), dtype=bool)
        threads = os.cpu_count() or 1
        for start in progress(range(0, len(paths), CHUNK), "embedding images", unit="chunk"):
            samples = [(p, i) for i, p in enumerate(paths[start : start + CHUNK], start)]
            pictures, kept, _ = decode_all(samples, self.short_side, self.preprocessing["interpolation"], threads)
            if not pictures:
                continue
            embedded = self.arrays(pictures)
            if output is None:
                output = np.lib.format.open_memmap(
                    staging / "embeddings.npy", mode="w+", dtype=np.float32, shape=(len(paths), embedded.shape[1])
                )
            rows = [index for _, index in kept]
            output[rows] = embedded
            ok[rows] = True
            if not quiet:
                log.info("embedded %d / %d images", min(start + CHUNK, len(paths)), len(paths))
        if output is None:
            np.save(staging / "embeddings.npy", np.zeros((len(paths), 1), dtype=np.float32))
        else:
            output.flush()
            del output
        np.save(staging / "decoded.npy", ok)
