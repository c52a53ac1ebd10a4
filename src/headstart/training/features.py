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

import contextlib
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
from headstart.core.fileio import writing
from headstart.core.hardware import Hardware
from headstart.data.batches import GlobalBatches
from headstart.data.datasets import cache_root
from headstart.data.images import PreparedData, train_view
from headstart.model.build import Classifier
from headstart.model.cut import Cut, head_split
from headstart.training import feature_pass
from headstart.training.feature_pass import shares
from headstart.training.resume import rng_state, set_rng_state

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
    """Backbone outputs for the train views, the val set and the test set, keyed by everything that changes them.

    Entries live under $HEADSTART_CACHE/features/<key>/ so another run (a rerun, a sweep variant
    with another head) reuses them; an entry is written to a staging folder and renamed into place
    once complete, and verified before every reuse (row counts, checksums of its files and of the
    sample list its rows follow: headstart.core.cache), so a short or reordered file is rebuilt, never
    used. Below `settings.memory_mb` the arrays are held in RAM, above it they are read through
    memory maps, so memory stays within the budget. The key (a checksum of every prefix weight)
    is computed when a stage starts using a cut; before each pass the prefix's in-place write
    counters are compared, so a prefix that changed is re-keyed and never served stale.

    One pass fills two entries where the recipe allows: while the head stage's entry is built, a
    later stage's cut inside the backbone (`along`, e.g. the default's `top:1`) is filled from the
    same forward pass, its outputs taken on the way to the head's. Under data parallelism every
    process computes its share of the pass (training.feature_pass).
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
        self.along: Cut | None = None
        self.augment, self.views = "none", 1
        self._key: str | None = None
        self._versions: tuple[int, ...] = ()
        self._arrays: dict[str, np.ndarray] = {}
        self._labels = {"val": data.val.targets, "test": data.test.targets if data.test is not None else None}
        self._splits = {"val": data.val} | ({"test": data.test} if data.test is not None and len(data.test) else {})
        # The images were decoded once when the run started; their identity is taken once per cache,
        # not re-read from the file system (one stat per file) every time a batch is served.
        self._images = {
            f"{name}_images": cache.content_key(files=split.samples, length=64)
            for name, split in (("train", data.train), *self._splits.items())
        }
        self.reused = False
        self._filled: set[Path] = set()  # entries this cache's passes built (one pass fills two)
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

    def use(self, cut: Cut, augment: str | None = None, views: int | None = None, along: Cut | None = None) -> None:
        """Serve batches of `cut.prefix`'s outputs from now on (one stage's cut point), computing them if not stored.

        With `augment` on, `views` augmented views of each training image are cached (at least one).
        `along`: a later stage's cut inside the backbone, with the same augmentation, whose entry the
        same pass fills when this (head) cut's entry is built.
        """
        self.cut, self.augment = cut, augment or self.settings.augment
        views = self.settings.views if views is None else views
        self.views = max(1, views) if self.augment != "none" else 1
        self.along = along if cut.name == "head" and along is not None and along.to_head is not None else None
        self._key = None
        self._ensure()

    @property
    def current_cut(self) -> Cut:
        """The cut `use` set: every key and pass needs one."""
        assert self.cut is not None, "FeatureCache.use(cut) comes first"
        return self.cut

    def key_fields(self, cut: Cut | None = None) -> dict:
        """Everything that changes the cached outputs (the prefix checksum covers backbone and weights)."""
        cut = cut or self.current_cut
        return {
            **self.settings.identity,
            "cut": cut.name,
            "head_pooling": [type(m).__name__ for m in self.model.head[: head_split(self.model)]]
            if cut.name == "head"
            else [],
            "preprocessing": self.data.preprocessing,
            "augment": self.augment,
            "views": self.views,
            "seed": self.settings.seed,
            "dtype": str(self.dtype),
            **self._images,
            "prefix": prefix_fingerprint(cut.prefix),
        }

    def key(self) -> str:
        return cache.content_key(self.key_fields())

    def serves_current_weights(self) -> bool:
        """Whether the stored entry still holds the current prefix's outputs (after weights were loaded), without a pass."""
        if self.cut is None or self._key is None:
            return False
        versions = tensor_versions(self.current_cut.prefix)
        if versions != self._versions:
            if cache.content_key(self.key_fields()) != self._key:
                return False
            self._versions = versions  # the same weights written again: the next batches need no second checksum
        return True

    def _rows(self) -> dict[str, int]:
        """Each file of an entry and its row count: what stored arrays must match before reuse."""
        train = {f"train{view}.npy": len(self.data.train) for view in range(self.views)}
        return train | {f"{name}.npy": len(split) for name, split in self._splits.items()}

    def _meta(self, key: str) -> dict:
        return {"key": key, "rows": self._rows(), **self._images}

    def _reusable(self, folder: Path, key: str) -> bool:
        rows = self._rows()
        return cache.reusable(folder, self._meta(key), "feature", check=lambda stored: _row_problem(stored, rows))

    def _ensure(self) -> None:
        if self._key is not None and tensor_versions(self.current_cut.prefix) == self._versions:
            return  # no weight or buffer of the prefix was written since the key was taken
        self._versions = tensor_versions(self.current_cut.prefix)
        fields = self.key_fields()
        key = cache.content_key(fields)
        if key == self._key:
            return
        folder = cache_root() / "features" / key
        with writing(folder, "cache"):
            # Rank 0 looks, and every process learns the answer: the pass is everyone's or no one's.
            built = not self.group.share(self.group.is_main and self._reusable(folder, key))
            if built:
                self._build([(self.current_cut, fields, folder)] + self._along_job())
            self.group.barrier()
        self.reused = not built and folder not in self._filled
        self._load(folder, "built" if built else ("filled by an earlier stage's pass" if not self.reused else "reused"))
        self._key = key

    def _along_job(self) -> list[tuple[Cut, dict, Path]]:
        """The `along` cut's entry, when it is not stored yet: filled by the pass that builds the head's."""
        if self.along is None:
            return []
        fields = self.key_fields(self.along)
        key = cache.content_key(fields)
        folder = cache_root() / "features" / key
        missing = self.group.share(self.group.is_main and not self._reusable(folder, key))
        return [(self.along, fields, folder)] if missing else []

    def _build(self, jobs: list[tuple[Cut, dict, Path]]) -> None:
        """One pass over every split fills every job's entry: rank 0 writes and publishes, the others compute their share."""
        first = jobs[-1][0]  # the shallowest cut: its prefix runs on the images, the rest on its outputs
        for cut, _, _ in jobs:
            cut.prefix.eval()
            if cut.to_head is not None:
                cut.to_head.eval()

        def forward(images: torch.Tensor) -> list[torch.Tensor]:
            if len(jobs) == 1:
                return [first.prefix(images)]
            shallow = first.prefix(images)
            assert first.to_head is not None  # `along` is only ever a cut inside the backbone
            return [first.to_head(shallow), shallow]

        generators = rng_state()
        with contextlib.ExitStack() as stack:
            stagings = None
            if self.group.is_main:
                stagings = [
                    stack.enter_context(cache.building(folder, self._meta(folder.name))) for _, _, folder in jobs
                ]
            counts = " + ".join(map(str, shares(len(self.data.train), self.group.world)))
            if self.group.active:
                log.info("feature pass split over %d processes: %s train images each", self.group.world, counts)
            names = ", ".join(cut.name for cut, _, _ in jobs)
            splits = [(f"train{view}", train_view(self.data, self.augment), 1000 + view) for view in range(self.views)]
            for name, dataset, offset in splits + [(n, d, 0) for n, d in self._splits.items()]:
                targets = [staging / f"{name}.npy" for staging in stagings] if stagings else None
                feature_pass.fill(
                    forward,
                    dataset,
                    targets,
                    seed=self.settings.seed + offset,
                    batch_size=self.settings.batch_size,
                    hw=self.hw,
                    group=self.group,
                    dtype=self.dtype,
                    label=f"features at {names} ({name})",
                )
            for staging, (_, fields, _) in zip(stagings or [], jobs, strict=False):  # no stagings but on rank 0
                (staging / "key.json").write_text(json.dumps(fields, indent=1, sort_keys=True, default=str))
        self._filled.update(folder for _, _, folder in jobs)
        set_rng_state(generators)

    def _load(self, folder: Path, how: str) -> None:
        files = {name.removesuffix(".npy"): folder / name for name in self._rows()}
        size = sum(f.stat().st_size for f in files.values())
        budget = self.settings.memory_mb << 20
        in_memory = size <= budget
        self._arrays = {name: np.load(f, mmap_mode=None if in_memory else "r") for name, f in files.items()}
        where = "in memory" if in_memory else f"memory-mapped (over the {budget >> 20} MB budget)"
        log.info(
            "feature cache at %s %s: %d train view(s) + %s, %s per image, %.1f MB %s",
            self.current_cut.name.removeprefix("backbone."),
            how,
            self.views,
            " + ".join(self._splits),
            self._arrays["val"].shape[1:],
            size / 2**20,
            where,
        )

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.dtype == torch.bfloat16:
            tensor = tensor.view(torch.bfloat16)
        return tensor.float()

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._ensure()
        features = self._arrays[f"train{(epoch - 1) % self.views}"]
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
            yield self._tensor(features[index]), self.data.train.targets[index]

    def labels(self, split: str) -> torch.Tensor:
        labels = self.data.train.targets if split == "train" else self._labels[split]
        assert labels is not None
        return labels

    def split_rows(self, split: str, rows: list[int] | None = None) -> torch.Tensor:
        """Stored outputs of `rows` (None: all) of the val or test split, or of the first (plain, unaugmented) train view."""
        self._ensure()
        array = self._arrays["train0" if split == "train" else split]
        return self._tensor(np.array(array) if rows is None else array[rows])  # a copy: stored arrays are read-only

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.split_batches("val")

    def split_batches(self, name: str, everything: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The val or test split's cached outputs: this process's share (as evaluation deals them out), or all of them."""
        self._ensure()
        features, labels = self._arrays[name], self.labels(name)
        rank, world = (0, 1) if everything else (self.group.rank, self.group.world)
        for index in GlobalBatches(len(features), self.settings.batch_size, self.settings.seed, False, rank, world):
            yield self._tensor(features[index]), labels[index]
