"""How a stage's batches reach the part it trains: stored outputs of a fixed prefix, or images through the whole model.

`choose_path` takes the cached path wherever everything before the stage's cut is a fixed
function of the image (headstart.model.cut), else the full model (compiled where the run decided so).
Functions take the stages.Trainer whose model, data, feature cache and sampler weights they use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from headstart.config.recipe import Stage
from headstart.data.batches import GlobalBatches, make_loader
from headstart.data.images import train_view
from headstart.model.cut import Cut, cache_decision
from headstart.model.freeze import FreezePlan
from headstart.training.loop import Batches
from headstart.training.session import Session

log = logging.getLogger("headstart")


# Below this many full-model training images in a run, compiling on a CPU costs more than it saves:
# measured 9.7 -> 18.1 img/s for EfficientNet-Lite0 after ~100 s of compiling, a break-even near
# 2,100 images; the margin covers a recompile per stage.
CPU_COMPILE_MIN_IMAGES = 20_000


def should_compile(setting: str, hw, full_model_images: int) -> bool:
    if setting != "auto":
        return setting == "on"
    # Not on GPUs: on an H100, compiled EfficientNet-Lite0 trained slower than eager bf16
    # channels_last (2,872 vs 3,162 img/s at batch 128; 1,035 vs 1,235 at 32) after ~45 s of
    # compiling (BENCHMARKS.md). '--compile on' is there for backbones where it pays.
    return hw.device.type == "cpu" and full_model_images >= CPU_COMPILE_MIN_IMAGES


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """torch.compile'd view of the model (same parameters); eager if compiling is off or unavailable."""
    if not enabled:
        return model
    try:
        return torch.compile(model)
    except Exception as err:  # noqa: BLE001 - a missing compiler toolchain only costs speed, not results
        log.warning("torch.compile unavailable (%s); training eagerly", str(err).splitlines()[0][:120])
        return model


def stage_augment(session: Session, stage: Stage) -> str:
    return stage.augment or session.recipe.data.augment


@dataclass
class StagePath:
    """How a stage's batches reach the trainable part: cached backbone outputs, or images through the whole model."""

    name: str
    reason: str
    module: nn.Module
    set_train_mode: Callable[[], Any]
    train_batches: Callable[[int], Batches]
    val_batches: Callable[[], Batches]
    batches_per_epoch: int
    compile: bool


def cached_path(trainer, cut: Cut, stage: Stage, reason: str) -> StagePath:
    """Train the part after the cut alone, on stored outputs of the fixed part before it."""
    cache = trainer.feature_cache
    cache.use(cut, stage_augment(trainer.session, stage), trainer.recipe.data.feature_views)
    world = trainer.group.world
    batch = trainer.recipe.data.batch_size
    return StagePath(
        name="cached-features",
        reason=reason,
        module=cut.suffix,
        set_train_mode=cut.suffix.train,
        train_batches=cache.train_batches,
        val_batches=cache.val_batches,
        batches_per_epoch=len(GlobalBatches(len(trainer.data.train), batch, 0, True, 0, world)),
        compile=False,
    )


def full_path(trainer, index: int, plan: FreezePlan, reason: str) -> StagePath:
    """Run images through the whole model every step (compiled if the run decided so)."""
    stage, data = trainer.recipe.stages[index], trainer.recipe.data
    seed, pin = trainer.recipe.run.seed + index, trainer.hw.device.type == "cuda"  # pinned memory pays only for GPUs
    rank, world = trainer.group.rank, trainer.group.world
    train_set = trainer.data.train
    if stage.augment is not None and stage.augment != data.augment:
        train_set = train_view(trainer.data, stage.augment, data.random_erasing)
    train_loader = make_loader(
        train_set, data.batch_size, True, data.workers, seed, pin, rank, world, trainer.sample_weights
    )
    val_loader = make_loader(trainer.data.val, data.batch_size, False, data.workers, seed, pin, rank, world)

    def train_batches(epoch: int) -> Batches:
        train_loader.batch_sampler.set_epoch(epoch)
        return train_loader

    return StagePath(
        name="full-model+compiled" if trainer.compile else "full-model",
        reason=reason,
        module=trainer.model,
        set_train_mode=lambda: plan.set_mode(trainer.model, True),
        train_batches=train_batches,
        val_batches=lambda: val_loader,
        batches_per_epoch=len(train_loader),
        compile=trainer.compile,
    )


def choose_path(trainer, index: int, plan: FreezePlan) -> StagePath:
    """The cached path where everything before the stage's cut is a fixed function, else the full model."""
    stage = trainer.recipe.stages[index]
    augment = stage_augment(trainer.session, stage)
    cut, reason = cache_decision(
        trainer.model,
        plan,
        augment,
        trainer.data.preprocessing["image_size"],
        trainer.recipe.data.feature_views,
        trainer.recipe.run.feature_cache,
    )
    if cut is not None and stage.cutmix > 0:
        cut, reason = None, "CutMix mixes image regions, which cached features no longer have"
    if cut is not None and augment != "none" and trainer.recipe.data.random_erasing > 0:
        cut, reason = None, "random erasing draws new regions every step"
    return cached_path(trainer, cut, stage, reason) if cut is not None else full_path(trainer, index, plan, reason)
