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

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from headstart.data import PreparedData, files_digest, make_loader
from headstart.digits import cache_root
from headstart.freeze import FreezePlan
from headstart.hardware import Hardware
from headstart.model import Classifier, GaussianNoise, GlobalAvgPool
from headstart.recipe import Recipe

log = logging.getLogger(__name__)


def cache_decision(model: Classifier, plan: FreezePlan, augment: str, views: int = 0, enabled: bool = True) -> tuple[bool, str]:
    """(use the cache?, why) for a stage whose freeze plan is `plan`; the reason is logged for the user."""
    if not enabled:
        return False, "feature cache switched off"
    if plan.start != "head":
        return False, "the backbone trains in this stage"
    prefix = (model.adapter, model.backbone)
    if any(p.requires_grad for part in prefix for p in part.parameters()):
        return False, f"BatchNorm gamma/beta in the frozen part train (bn={plan.bn_mode})"
    if plan.bn_mode == "train" and any(isinstance(m, _BatchNorm) for part in prefix for m in part.modules()):
        return False, "frozen BatchNorm updates its running statistics (bn=train)"
    if any(isinstance(m, GaussianNoise) and m.sigma > 0 for m in model.adapter):
        return False, "the noise adapter draws new noise every step"
    if augment != "none" and views < 1:
        return False, "train augmentation is on; set data.feature_views to cache augmented views"
    if augment != "none":
        return True, f"frozen prefix is deterministic: {views} augmented view(s) per image cached"
    return True, "frozen prefix is deterministic: features computed once"


def head_split(model: Classifier) -> int:
    """How many leading head modules are parameter-free and deterministic (pooling, flatten): they join the cached prefix."""
    count = 0
    for module in model.head:
        if not isinstance(module, (GlobalAvgPool, torch.nn.Flatten)):
            break
        count += 1
    return count


def trainable_head(model: Classifier) -> torch.nn.Module:
    """The part of the head that trains on cached features."""
    return model.head[head_split(model):]


def prefix_fingerprint(model: Classifier) -> str:
    """A checksum of every weight and buffer before the head: it changes if any stage trained them."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in [*model.adapter.state_dict().items(), *model.backbone.state_dict().items()]:
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# numpy has no bfloat16: such features are stored as their raw 16-bit patterns.
_STORAGE = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}


class FeatureCache:
    """Backbone outputs for the train views and the val set, keyed by everything that changes them.

    Entries live under $HEADSTART_CACHE/features/<key>/ so another run (a rerun, a sweep variant
    with another head) reuses them; an entry is written to a staging folder and renamed into place
    once complete. Below `run.feature_cache_memory_mb` the arrays are held in RAM, above it they are
    read through memory maps, so memory stays within the budget.
    """

    def __init__(self, model: Classifier, data: PreparedData, hw: Hardware, recipe: Recipe):
        self.model, self.data, self.hw, self.recipe = model, data, hw, recipe
        self.batch_size = recipe.data.batch_size
        self.seed = recipe.run.seed
        self.views = max(1, recipe.data.feature_views) if recipe.data.augment != "none" else 1
        self.dtype = torch.float32 if hw.precision == "fp32" else (torch.bfloat16 if hw.precision == "bf16" else torch.float16)
        self.budget = recipe.run.feature_cache_memory_mb << 20
        self._key: str | None = None
        self._train: list[np.ndarray] = []
        self._val: np.ndarray | None = None
        self._train_labels = torch.tensor(data.train.labels)
        self._val_labels = torch.tensor(data.val.labels)
        self.reused = False

    def key_fields(self) -> dict:
        """Everything that changes the cached outputs (the prefix checksum covers backbone and weights)."""
        model = self.recipe.model
        return {
            "backbone": model.backbone,
            "weights": model.weights,
            "backbone_args": model.backbone_args,
            "adapters": [adapter.model_dump() for adapter in model.adapters],
            "cut": [type(m).__name__ for m in self.model.head[: head_split(self.model)]],
            "preprocessing": self.data.preprocessing,
            "augment": self.recipe.data.augment,
            "views": self.views,
            "seed": self.seed,
            "dtype": str(self.dtype),
            "train_images": files_digest(self.data.train.samples),
            "val_images": files_digest(self.data.val.samples),
            "prefix": prefix_fingerprint(self.model),
        }

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.key_fields(), sort_keys=True, default=str).encode()).hexdigest()[:24]

    @torch.no_grad()
    def _extract(self, dataset, seed: int, target: Path) -> np.ndarray:
        # A fixed generator per view: the same recipe caches the same augmented views.
        torch.manual_seed(seed)
        loader = make_loader(dataset, self.batch_size, False, 0, seed)
        self.model.eval()
        output = None
        row = 0
        for inputs, _ in loader:
            with self.hw.autocast():
                features = self.model.head[: head_split(self.model)](self.model.features(self.hw.to_input(inputs)))
            chunk = features.to("cpu", self.dtype).contiguous()
            chunk = chunk.view(torch.int16).numpy().view(np.uint16) if self.dtype == torch.bfloat16 else chunk.numpy()
            if output is None:
                # Written straight into a memory-mapped .npy: RAM never holds more than a batch of it.
                output = np.lib.format.open_memmap(target, mode="w+", dtype=_STORAGE[self.dtype], shape=(len(dataset), *chunk.shape[1:]))
            output[row : row + len(chunk)] = chunk
            row += len(chunk)
        output.flush()
        return output

    def _load(self, folder: Path) -> None:
        files = [folder / f"train{view}.npy" for view in range(self.views)] + [folder / "val.npy"]
        size = sum(f.stat().st_size for f in files)
        in_memory = size <= self.budget
        arrays = [np.load(f, mmap_mode=None if in_memory else "r") for f in files]
        self._train, self._val = arrays[:-1], arrays[-1]
        where = "in memory" if in_memory else f"memory-mapped (over the {self.budget >> 20} MB budget)"
        log.info("feature cache %s: %d train view(s) + val, %s per image, %.1f MB %s",
                 "reused" if self.reused else "built", self.views, self._val.shape[1:], size / 2**20, where)

    def _ensure(self) -> None:
        key = self.key()
        if key == self._key:
            return
        folder = cache_root() / "features" / key
        self.reused = (folder / "key.json").is_file()
        if not self.reused:
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder.parent))
            generator_state = torch.get_rng_state()
            for view in range(self.views):
                self._extract(self.data.train, self.seed + 1000 + view, staging / f"train{view}.npy")
            self._extract(self.data.val, self.seed, staging / "val.npy")
            torch.set_rng_state(generator_state)
            (staging / "key.json").write_text(json.dumps(self.key_fields(), indent=1, sort_keys=True, default=str))
            try:
                staging.rename(folder)
            except OSError:  # another process finished the same entry first: theirs is identical
                shutil.rmtree(staging, ignore_errors=True)
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
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(self.seed + epoch))
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield self._tensor(features[index.numpy()]), self._train_labels[index]

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._ensure()
        for start in range(0, len(self._val), self.batch_size):
            yield self._tensor(self._val[start : start + self.batch_size]), self._val_labels[start : start + self.batch_size]
