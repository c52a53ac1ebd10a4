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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from headstart import cache
from headstart.data import GlobalBatches, PreparedData, files_digest, make_loader
from headstart.datasets import cache_root
from headstart.distributed import SOLO, Group
from headstart.freeze import FreezePlan
from headstart.hardware import Hardware
from headstart.model import Classifier, GaussianNoise, GlobalAvgPool
from headstart.recipe import Recipe

log = logging.getLogger(__name__)


@dataclass
class Cut:
    """The model split at a stage's cut point: `prefix` is fixed and cached, `suffix` trains on its outputs."""

    name: str
    prefix: nn.Module
    suffix: nn.Module


class _Chain(nn.Module):
    """Modules applied one after another (a view over the model's own modules, not a copy)."""

    def __init__(self, modules: list[nn.Module], to_nchw: bool = False):
        super().__init__()
        self.parts = nn.ModuleList(modules)
        self.to_nchw = to_nchw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.parts:
            x = module(x)
        return x.permute(0, 3, 1, 2) if self.to_nchw and x.ndim == 4 else x


class _Features(nn.Module):
    """Adapters + backbone features of a Classifier, holding only those two parts (not the head)."""

    def __init__(self, model: Classifier):
        super().__init__()
        self.adapter, self.backbone = model.adapter, model.backbone
        self.nhwc = model.nhwc_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.backbone.forward_features(self.adapter(x))
        return x.permute(0, 3, 1, 2) if self.nhwc and x.ndim == 4 else x


def head_split(model: Classifier) -> int:
    """How many leading head modules are parameter-free and deterministic (pooling, flatten): they join the cached prefix."""
    count = 0
    for module in model.head:
        if not isinstance(module, (GlobalAvgPool, nn.Flatten)):
            break
        count += 1
    return count


@torch.no_grad()
def backbone_chain(model: Classifier, image_size: int) -> list[tuple[str, nn.Module]] | None:
    """The backbone's forward_features as a chain of its own top-level children, or None where it is more than that.

    The children forward_features calls are recorded with hooks, then chaining them is checked to
    give exactly forward_features' output (a ViT adds position embeddings between them: no chain).
    """
    backbone = model.backbone
    children = dict(backbone.named_children())
    called: list[str] = []
    hooks = [
        child.register_forward_hook(lambda _m, _i, _o, name=name: called.append(name))
        for name, child in children.items()
    ]
    was_training = model.training
    model.eval()
    try:
        x = model.adapter(torch.randn(1, 3, image_size, image_size, device=next(model.parameters()).device))
        expected = backbone.forward_features(x)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if not called or len(called) != len(set(called)):
        return None
    model.eval()
    chained = x
    try:
        for name in called:
            chained = children[name](chained)
    except (RuntimeError, ValueError, TypeError, IndexError):
        return None  # the children need more between them than each other's output
    finally:
        model.train(was_training)
    if chained.shape != expected.shape or not torch.allclose(chained, expected, atol=1e-5):
        return None
    return [(f"backbone.{name}", children[name]) for name in called]


def find_cut(model: Classifier, plan: FreezePlan, image_size: int) -> Cut | None:
    """Where a stage's fixed prefix ends: after the head's pooling when only the head trains, else at the
    first trainable module of the backbone's chain (None when the backbone is no plain chain there)."""
    if plan.start == "head":
        split = head_split(model)
        return Cut("head", nn.Sequential(_Features(model), *model.head[:split]), model.head[split:])
    if plan.start is None or not plan.start.startswith("backbone."):
        return None
    chain = backbone_chain(model, image_size)
    if chain is None:
        return None
    # Open nn.Sequential elements until the freeze point is an element boundary.
    while True:
        holder = next(
            (i for i, (name, _) in enumerate(chain) if plan.start == name or plan.start.startswith(name + ".")), None
        )
        if holder is None:
            return None
        name, module = chain[holder]
        if name == plan.start or not isinstance(module, nn.Sequential):
            break
        chain[holder : holder + 1] = [(f"{name}.{child}", sub) for child, sub in module.named_children()]
    frozen = plan.frozen_params
    before = {f"{n}.{p}" for n, m in chain[:holder] for p, _ in m.named_parameters()}
    after = {f"{n}.{p}" for n, m in chain[holder:] for p, _ in m.named_parameters()}
    if not before <= frozen or after & frozen:
        return None  # the freeze point falls inside an element that cannot be opened
    to_nchw = model.nhwc_features
    prefix = _Chain([model.adapter, *(m for _, m in chain[:holder])])
    suffix = nn.Sequential(_Chain([m for _, m in chain[holder:]], to_nchw), model.head)
    return Cut(chain[holder][0], prefix, suffix)


def cache_decision(
    model: Classifier, plan: FreezePlan, augment: str, image_size: int, views: int = 0, enabled: bool = True
) -> tuple[Cut | None, str]:
    """(the cut to cache at, or None; why) for a stage whose freeze plan is `plan`; the reason is logged for the user."""
    if not enabled:
        return None, "feature cache switched off"
    if plan.start is None:
        return None, "nothing is frozen in this stage"
    cut = find_cut(model, plan, image_size)
    if cut is None:
        return None, f"the backbone's forward is not a plain chain of modules at '{plan.start}'"
    prefix_modules = list(cut.prefix.modules())
    if any(p.requires_grad for p in cut.prefix.parameters()):
        return None, f"BatchNorm gamma/beta in the frozen part train (bn={plan.bn_mode})"
    if plan.bn_mode == "train" and any(isinstance(m, _BatchNorm) for m in prefix_modules):
        return None, "frozen BatchNorm updates its running statistics (bn=train)"
    if any(isinstance(m, GaussianNoise) and m.sigma > 0 for m in prefix_modules):
        return None, "the noise adapter draws new noise every step"
    if augment != "none" and views < 1:
        return None, "train augmentation is on; set data.feature_views to cache augmented views"
    where = f"cut before {cut.name.removeprefix('backbone.')}"
    if augment != "none":
        return cut, f"frozen prefix is deterministic, {where}: {views} augmented view(s) per image cached"
    return cut, f"frozen prefix is deterministic, {where}: outputs computed once"


def prefix_fingerprint(prefix: nn.Module) -> str:
    """A checksum of every weight and buffer of the cached prefix: it changes if any stage trained them."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in prefix.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]


# numpy has no bfloat16: such features are stored as their raw 16-bit patterns.
_STORAGE = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}


class FeatureCache:
    """Backbone outputs for the train views and the val set, keyed by everything that changes them.

    Entries live under $HEADSTART_CACHE/features/<key>/ so another run (a rerun, a sweep variant
    with another head) reuses them; an entry is written to a staging folder and renamed into place
    once complete, and verified before every reuse (row counts, checksums of its files and of the
    sample list its rows follow: headstart.cache), so a short or reordered file is rebuilt, never
    used. Below `run.feature_cache_memory_mb` the arrays are held in RAM, above it they are read
    through memory maps, so memory stays within the budget.
    """

    def __init__(self, model: Classifier, data: PreparedData, hw: Hardware, recipe: Recipe, group: Group = SOLO):
        self.model, self.data, self.hw, self.recipe, self.group = model, data, hw, recipe, group
        self.batch_size = recipe.data.batch_size
        self.seed = recipe.run.seed
        self.views = max(1, recipe.data.feature_views) if recipe.data.augment != "none" else 1
        self.dtype = (
            torch.float32 if hw.precision == "fp32" else (torch.bfloat16 if hw.precision == "bf16" else torch.float16)
        )
        self.budget = recipe.run.feature_cache_memory_mb << 20
        self.cut: Cut | None = None
        self._key: str | None = None
        self._train: list[np.ndarray] = []
        self._val: np.ndarray | None = None
        self._train_labels = torch.tensor(data.train.labels)
        self._val_labels = torch.tensor(data.val.labels)
        # The images were decoded once when the run started; their identity is taken then, once,
        # not re-read from the file system (one stat per file) every time a batch is served.
        self._images = {"train_images": files_digest(data.train.samples), "val_images": files_digest(data.val.samples)}
        self.reused = False

    def use(self, cut: Cut) -> None:
        """Serve batches of `cut.prefix`'s outputs from now on (one stage's cut point), computing them if not stored.

        Data-parallel processes: rank 0 computes and stores; the others then find the entry.
        """
        self.cut = cut
        with self.group.main_first():
            self._ensure()

    def key_fields(self) -> dict:
        """Everything that changes the cached outputs (the prefix checksum covers backbone and weights)."""
        model = self.recipe.model
        return {
            "backbone": model.backbone,
            "weights": model.weights,
            "backbone_args": model.backbone_args,
            "adapters": [adapter.model_dump() for adapter in model.adapters],
            "cut": self.cut.name,
            "head_pooling": [type(m).__name__ for m in self.model.head[: head_split(self.model)]]
            if self.cut.name == "head"
            else [],
            "preprocessing": self.data.preprocessing,
            "augment": self.recipe.data.augment,
            "views": self.views,
            "seed": self.seed,
            "dtype": str(self.dtype),
            **self._images,
            "prefix": prefix_fingerprint(self.cut.prefix),
        }

    def key(self) -> str:
        return _digest(self.key_fields())

    @torch.no_grad()
    def _extract(self, dataset, seed: int, target: Path) -> np.ndarray:
        # A fixed generator per view: the same recipe caches the same augmented views.
        torch.manual_seed(seed)
        loader = make_loader(dataset, self.batch_size, False, 0, seed)
        self.cut.prefix.eval()
        output = None
        row = 0
        for inputs, _ in loader:
            with self.hw.autocast():
                features = self.cut.prefix(self.hw.to_input(inputs))
            chunk = features.to("cpu", self.dtype).contiguous()
            chunk = chunk.view(torch.int16).numpy().view(np.uint16) if self.dtype == torch.bfloat16 else chunk.numpy()
            if output is None:
                # Written straight into a memory-mapped .npy: RAM never holds more than a batch of it.
                output = np.lib.format.open_memmap(
                    target, mode="w+", dtype=_STORAGE[self.dtype], shape=(len(dataset), *chunk.shape[1:])
                )
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
        log.info(
            "feature cache %s: %d train view(s) + val, %s per image, %.1f MB %s",
            "reused" if self.reused else "built",
            self.views,
            self._val.shape[1:],
            size / 2**20,
            where,
        )

    def _ensure(self) -> None:
        fields = self.key_fields()
        key = _digest(fields)
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
                self._extract(self.data.train, self.seed + 1000 + view, staging / f"train{view}.npy")
            self._extract(self.data.val, self.seed, staging / "val.npy")
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
        batches = GlobalBatches(len(features), self.batch_size, self.seed, True, self.group.rank, self.group.world)
        batches.set_epoch(epoch)
        for index in batches:
            yield self._tensor(features[index]), self._train_labels[index]

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._ensure()
        for index in GlobalBatches(
            len(self._val), self.batch_size, self.seed, False, self.group.rank, self.group.world
        ):
            yield self._tensor(self._val[index]), self._val_labels[index]
