"""The frozen-prefix feature cache: when nothing before the head can change, run it once per image.

A head-only stage over a frozen backbone repeats the same backbone forward pass every epoch.
When that prefix is a fixed function of the image (frozen weights, BatchNorm not updating,
no noise adapter, no random augmentation), its outputs are computed once, kept in memory, and
only the head trains on them: exact, and many times faster.

With augmentation on, `data.feature_views: K` caches K augmented views of every training image
and cycles through them epoch by epoch. That trades the endless variety of fresh augmentation
for speed: the head sees K fixed variants per image instead of a new one each epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from headstart.data import PreparedData, make_loader
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


def prefix_fingerprint(model: Classifier) -> tuple[float, ...]:
    """A cheap checksum of every weight and buffer before the head: it changes if any stage trained them."""
    with torch.no_grad():
        tensors = [*model.adapter.state_dict().values(), *model.backbone.state_dict().values()]
        return tuple(float(t.double().sum()) for t in tensors if t.is_floating_point())


class FeatureCache:
    """Backbone outputs for the train views and the val set of one run, recomputed only when the prefix changed."""

    def __init__(self, model: Classifier, data: PreparedData, hw: Hardware, recipe: Recipe):
        self.model, self.data, self.hw = model, data, hw
        self.batch_size = recipe.data.batch_size
        self.seed = recipe.run.seed
        self.views = max(1, recipe.data.feature_views) if recipe.data.augment != "none" else 1
        self.dtype = torch.float32 if hw.precision == "fp32" else (torch.bfloat16 if hw.precision == "bf16" else torch.float16)
        self._key: tuple | None = None
        self._train: list[torch.Tensor] = []
        self._val: torch.Tensor | None = None
        self._train_labels = torch.tensor(data.train.labels)
        self._val_labels = torch.tensor(data.val.labels)

    @torch.no_grad()
    def _extract(self, dataset, seed: int) -> torch.Tensor:
        # A fixed generator per view: the same recipe caches the same augmented views.
        torch.manual_seed(seed)
        loader = make_loader(dataset, self.batch_size, False, 0, seed)
        self.model.eval()
        chunks = []
        for inputs, _ in loader:
            with self.hw.autocast():
                features = self.model.head[: head_split(self.model)](self.model.features(self.hw.to_input(inputs)))
                chunks.append(features.to("cpu", self.dtype))
        return torch.cat(chunks)

    def _ensure(self) -> None:
        key = prefix_fingerprint(self.model)
        if key == self._key:
            return
        generator_state = torch.get_rng_state()
        self._train = [self._extract(self.data.train, self.seed + 1000 + view) for view in range(self.views)]
        self._val = self._extract(self.data.val, self.seed)
        torch.set_rng_state(generator_state)
        self._key = key
        size = sum(t.numel() * t.element_size() for t in [*self._train, self._val])
        log.info("feature cache: %d train view(s) + val, %s per image, %.1f MB", self.views, tuple(self._val.shape[1:]), size / 2**20)

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._ensure()
        features = self._train[(epoch - 1) % self.views]
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(self.seed + epoch))
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield features[index].float(), self._train_labels[index]

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._ensure()
        for start in range(0, len(self._val), self.batch_size):
            yield self._val[start : start + self.batch_size].float(), self._val_labels[start : start + self.batch_size]
