"""The frozen-prefix feature cache: when nothing before the head can change, run it once per image.

A head-only stage over a frozen backbone repeats the same backbone forward pass every epoch.
When that prefix is a fixed function of the image (frozen weights, BatchNorm not updating,
no noise adapter, no random augmentation), its outputs are computed once and only the head
trains on them: exact within the autocast dtype, and many times faster. The outputs are stored
under a key of everything that changes them, so a rerun or another head reuses them and a
changed recipe never does.

With augmentation on, `data.feature_views: K` caches K augmented views of every training image
and cycles through them epoch by epoch. That trades the endless variety of fresh augmentation
for speed: the head sees K fixed variants per image instead of a new one each epoch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from headstart.config.recipe import Recipe
from headstart.core import cache
from headstart.core.distributed import SOLO, Group
from headstart.core.hardware import Hardware
from headstart.core.progress import progress
from headstart.data.batches import GlobalBatches, make_loader
from headstart.data.datasets import cache_root
from headstart.data.images import PreparedData, train_view
from headstart.model.build import Classifier
from headstart.model.cut import Cut, head_split

log = logging.getLogger(__name__)


def prefix_fingerprint(prefix: nn.Module) -> str:
    """A checksum of every weight and buffer of the cached prefix: it changes if any stage trained them."""
    with torch.no_grad():
        blobs = (
            name.encode() + tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            for name, tensor in prefix.state_dict().items()
        )
        return cache.content_key(blobs=blobs, length=64)


def _row_problem(folder: Path, rows: dict[str, int]) -> str | None:
    """Why stored feature arrays cannot serve this data set (a row count that differs), or None."""
    for name, count in rows.items():
        try:
            stored = np.load(folder / name, mmap_mode="r").shape[0]
        except (OSError, ValueError, IndexError) as err:
            return f"{name} unreadable ({type(err).__name__})"
        if stored != count:
            return f"{name} holds {stored} rows for {count} images"
    return None


# numpy has no bfloat16: such features are stored as their raw 16-bit patterns.
_STORAGE = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}


@dataclass(frozen=True)
class CacheSettings:
    """What the cache takes from a recipe: batching, seed, memory budget and the model's identity for the key."""

    batch_size: int
    seed: int
    memory_mb: int
    identity: dict
    # The data's augmentation and cached views, for stages that set no augmentation of their own.
    augment: str = "none"
    views: int = 0

    @classmethod
    def of(cls, recipe: Recipe) -> CacheSettings:
        model = recipe.model
        identity = {
            "backbone": model.backbone,
            "weights": model.weights,
            "backbone_args": model.backbone_args,
            "adapters": [adapter.model_dump() for adapter in model.adapters],
        }
        data = recipe.data
        return cls(
            data.batch_size,
            recipe.run.seed,
            recipe.run.feature_cache_memory_mb,
            identity,
            data.augment,
            data.feature_views,
        )


def tensor_versions(module: nn.Module) -> tuple[int, ...]:
    """Torch's in-place write counters of every weight and buffer: a cheap test that none changed since."""
    return tuple(t._version for t in module.state_dict(keep_vars=True).values())


class FeatureCache:
    """Backbone outputs for the train views and the val set, keyed by everything that changes them.

    Entries live under $HEADSTART_CACHE/features/<key>/ so another run (a rerun, a sweep variant
    with another head) reuses them; an entry is written to a staging folder and renamed into place
    once complete, and verified before every reuse (row counts, checksums of its files and of the
    sample list its rows follow: headstart.core.cache), so a short or reordered file is rebuilt, never
    used. Below `settings.memory_mb` the arrays are held in RAM, above it they are read through
    memory maps, so memory stays within the budget. The key (a checksum of every prefix weight)
    is computed when a stage starts using a cut; before each pass the prefix's in-place write
    counters are compared, so a prefix that changed is re-keyed and never served stale.
    """

    def __init__(
        self,
        model: Classifier,
        data: PreparedData,
        hw: Hardware,
        settings: CacheSettings,
        group: Group = SOLO,
        sample_weights: torch.Tensor | None = None,
    ):
        self.model, self.data, self.hw, self.settings, self.group = model, data, hw, settings, group
        self.dtype = (
            torch.float32 if hw.precision == "fp32" else (torch.bfloat16 if hw.precision == "bf16" else torch.float16)
        )
        self.cut: Cut | None = None
        self.augment, self.views = "none", 1
        self._key: str | None = None
        self._versions: tuple[int, ...] = ()
        self._train: list[np.ndarray] = []
        self._val: np.ndarray | None = None
        self._train_labels = data.train.targets
        self._val_labels = data.val.targets
        # The images were decoded once when the run started; their identity is taken once per cache,
        # not re-read from the file system (one stat per file) every time a batch is served.
        self._images = {
            name: cache.content_key(files=split.samples, length=64)
            for name, split in (("train_images", data.train), ("val_images", data.val))
        }
        self.reused = False
        # data.balance: sampler sets per-image drawing weights (headstart.data.balance.sample_weights).
        self.sample_weights = sample_weights

    @classmethod
    def for_recipe(
        cls,
        model: Classifier,
        data: PreparedData,
        hw: Hardware,
        recipe: Recipe,
        group: Group = SOLO,
        sample_weights: torch.Tensor | None = None,
    ) -> FeatureCache:
        return cls(model, data, hw, CacheSettings.of(recipe), group, sample_weights)

    def use(self, cut: Cut, augment: str | None = None, views: int | None = None) -> None:
        """Serve batches of `cut.prefix`'s outputs from now on (one stage's cut point), computing them if not stored.

        With `augment` on, `views` augmented views of each training image are cached (at least one).
        Data-parallel processes: rank 0 computes and stores; the others then find the entry.
        """
        self.cut, self.augment = cut, augment or self.settings.augment
        views = self.settings.views if views is None else views
        self.views = max(1, views) if self.augment != "none" else 1
        self._key = None
        with self.group.main_first():
            self._ensure()

    @property
    def current_cut(self) -> Cut:
        """The cut `use` set: every key and pass needs one."""
        assert self.cut is not None, "FeatureCache.use(cut) comes first"
        return self.cut

    def key_fields(self) -> dict:
        """Everything that changes the cached outputs (the prefix checksum covers backbone and weights)."""
        return {
            **self.settings.identity,
            "cut": self.current_cut.name,
            "head_pooling": [type(m).__name__ for m in self.model.head[: head_split(self.model)]]
            if self.current_cut.name == "head"
            else [],
            "preprocessing": self.data.preprocessing,
            "augment": self.augment,
            "views": self.views,
            "seed": self.settings.seed,
            "dtype": str(self.dtype),
            **self._images,
            "prefix": prefix_fingerprint(self.current_cut.prefix),
        }

    def key(self) -> str:
        return cache.content_key(self.key_fields())

    @torch.no_grad()
    def _extract(self, dataset, seed: int, target: Path) -> np.ndarray:
        # A fixed generator per view: the same recipe caches the same augmented views.
        torch.manual_seed(seed)
        loader = make_loader(dataset, self.settings.batch_size, False, 0, seed)
        self.current_cut.prefix.eval()
        output = None
        row = 0
        for inputs, _ in progress(loader, f"features at {self.current_cut.name}", total=len(loader), unit="batch"):
            with self.hw.autocast():
                features = self.current_cut.prefix(self.hw.to_input(inputs))
            chunk = features.to("cpu", self.dtype).contiguous()
            chunk = chunk.view(torch.int16).numpy().view(np.uint16) if self.dtype == torch.bfloat16 else chunk.numpy()
            if output is None:
                # Written straight into a memory-mapped .npy: RAM never holds more than a batch of it.
                output = np.lib.format.open_memmap(
                    target, mode="w+", dtype=_STORAGE[self.dtype], shape=(len(dataset), *chunk.shape[1:])
                )
            output[row : row + len(chunk)] = chunk
            row += len(chunk)
        assert output is not None  # neither split is empty (prepare_data refuses an empty one)
        output.flush()
        return output

    def _load(self, folder: Path) -> None:
        files = [folder / f"train{view}.npy" for view in range(self.views)] + [folder / "val.npy"]
        size = sum(f.stat().st_size for f in files)
        budget = self.settings.memory_mb << 20
        in_memory = size <= budget
        arrays = [np.load(f, mmap_mode=None if in_memory else "r") for f in files]
        self._train, self._val = arrays[:-1], arrays[-1]
        where = "in memory" if in_memory else f"memory-mapped (over the {budget >> 20} MB budget)"
        log.info(
            "feature cache %s: %d train view(s) + val, %s per image, %.1f MB %s",
            "reused" if self.reused else "built",
            self.views,
            self._val.shape[1:],
            size / 2**20,
            where,
        )

    def _ensure(self) -> None:
        if self._key is not None and tensor_versions(self.current_cut.prefix) == self._versions:
            return  # no weight or buffer of the prefix was written since the key was taken
        self._versions = tensor_versions(self.current_cut.prefix)
        fields = self.key_fields()
        key = cache.content_key(fields)
        if key == self._key:
            return
        # What the stored rows must match before reuse: their count and the checksum of the sample list they follow.
        rows = {f"train{view}.npy": len(self.data.train) for view in range(self.views)} | {
            "val.npy": len(self.data.val)
        }
        built = []

        def build(staging: Path) -> None:
            built.append(staging)
            generator_state = torch.get_rng_state()
            for view in range(self.views):
                self._extract(
                    train_view(self.data, self.augment), self.settings.seed + 1000 + view, staging / f"train{view}.npy"
                )
            self._extract(self.data.val, self.settings.seed, staging / "val.npy")
            torch.set_rng_state(generator_state)
            (staging / "key.json").write_text(json.dumps(fields, indent=1, sort_keys=True, default=str))

        folder = cache.ensure(
            cache_root() / "features" / key,
            build,
            {"key": key, "rows": rows, **self._images},
            "feature",
            check=lambda stored: _row_problem(stored, rows),
        )
        self.reused = not built
        self._load(folder)
        self._key = key

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.dtype == torch.bfloat16:
            tensor = tensor.view(torch.bfloat16)
        return tensor.float()

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._ensure()
        features = self._train[(epoch - 1) % self.views]
        batches = GlobalBatches(
            len(features),
            self.settings.batch_size,
            self.settings.seed,
            True,
            self.group.rank,
            self.group.world,
            self.sample_weights,
        )
        batches.set_epoch(epoch)
        for index in batches:
            yield self._tensor(features[index]), self._train_labels[index]

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._ensure()
        features = self._val
        assert features is not None  # _ensure loads the entry
        for index in GlobalBatches(
            len(features), self.settings.batch_size, self.settings.seed, False, self.group.rank, self.group.world
        ):
            yield self._tensor(features[index]), self._val_labels[index]
