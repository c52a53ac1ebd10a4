"""How a stage's batches reach the part it trains: stored outputs of a fixed prefix, or images through the whole model.

`StageBuilder.path` takes the cached path wherever everything before the stage's cut is a fixed
function of the image (headstart.model.cut), else the full model (compiled where the run decided so);
`StageBuilder.loop` builds the one training loop over it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from headstart.config.recipe import Stage
from headstart.data.balance import class_weights, positive_weights, sample_weights
from headstart.data.batches import GlobalBatches, make_loader
from headstart.data.images import train_view
from headstart.model.cut import Cut, cache_decision
from headstart.model.freeze import FreezePlan
from headstart.tasks.multi_label import MULTI_LABEL
from headstart.training.features import FeatureCache
from headstart.training.loop import Batches, Loop, ScheduleT, SoftTargets, StepHook
from headstart.training.session import Session

log = logging.getLogger("headstart")


# Below this many full-model training images in a run, compiling on a CPU costs more than it saves:
# measured 9.7 -> 18.1 img/s for EfficientNet-Lite0 after ~100 s of compiling, a break-even near
# 2,100 images; the margin covers a recompile per stage.
CPU_COMPILE_MIN_IMAGES = 20_000
# A cached stage that trains backbone layers (the default's top:1) saves far less per image: at
# 10,000 images its epochs took 11.6 s compiled against 13.8 s eager (0.27 ms saved per image and
# epoch) after 18 s of compiling, a break-even near 65,000 images x epochs. Counted against the
# stage's epoch budget, which early stopping often cuts to a third.
CPU_COMPILE_MIN_CACHED_IMAGES = 200_000


def should_compile(setting: str, hw, images: int, min_images: int = CPU_COMPILE_MIN_IMAGES) -> bool:
    """Whether to compile a stage that pushes `images` through training (train images x epoch budget)."""
    if setting == "off" or (setting == "auto" and (hw.device.type != "cpu" or images < min_images)):
        # Not on GPUs: on an H100, compiled EfficientNet-Lite0 trained slower than eager bf16
        # channels_last (2,872 vs 3,162 img/s at batch 128; 1,035 vs 1,235 at 32) after ~45 s of
        # compiling (BENCHMARKS.md). '--compile on' is there for backbones where it pays.
        return False
    return hw.device.type != "cpu" or cpu_compiler_found()


@functools.cache
def cpu_compiler_found() -> bool:
    """Whether inductor finds the C++ compiler it builds CPU kernels with; without one it fails at the first step."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as err:  # noqa: BLE001 - any failure to find one means: train eagerly
        log.warning(
            "torch.compile needs a C++ compiler on a CPU (%s); training eagerly", str(err).splitlines()[0][:120]
        )
        return False
    return True


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """torch.compile'd view of the model (same parameters); eager if compiling is off or unavailable."""
    if not enabled:
        return model
    try:
        # Given a Module, torch.compile returns an OptimizedModule (a Module); its annotation says only Callable.
        optimized = torch.compile(model)
        # Said now: the first steps then stand still while inductor compiles (18-100 s measured on 2 cores).
        log.info("torch.compile: this stage's first steps compile what it trains (once; can take a minute on a CPU)")
        return optimized  # type: ignore[return-value]
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


class StageBuilder:
    """What each stage trains through: its data path, and the loop over it.

    Owns what the stages share: the balance remedy's weights, whether the full model is compiled,
    and the feature cache, built when a stage first takes the cached path. `train` and `lr_find`
    build stages the same way through it; `compiling=False` (lr_find: a hundred steps never repay a
    compile) keeps every stage eager whatever run.compile says.
    """

    def __init__(self, session: Session, compiling: bool = True):
        self.session, recipe = session, session.recipe
        labels, n_classes = session.data.train.labels, len(session.classes)
        balance = recipe.data.balance
        weigh = positive_weights if session.task is MULTI_LABEL else class_weights
        self.loss_weights = weigh(labels, n_classes).to(session.hw.device) if balance == "weights" else None
        self.sample_weights = sample_weights(labels, n_classes) if balance == "sampler" else None
        self.compiling = compiling
        full_epochs = sum(s.epoch_budget for s in recipe.stages if s.freeze != "backbone")
        self.compile = compiling and should_compile(
            recipe.run.compile, session.hw, self.images_per_process(full_epochs)
        )
        self._feature_cache: FeatureCache | None = None

    def images_per_process(self, epochs: int) -> int:
        """Training images this process steps through in `epochs`: what a compile has to repay.

        Each of N data-parallel processes trains on 1/N of the images and pays the whole compile.
        """
        return epochs * len(self.session.data.train) // self.session.group.world

    @property
    def feature_cache(self) -> FeatureCache:
        if self._feature_cache is None:
            s = self.session
            self._feature_cache = FeatureCache.for_recipe(s.model, s.data, s.hw, s.recipe, s.group, self.sample_weights)
        return self._feature_cache

    @property
    def cache_in_use(self) -> FeatureCache | None:
        """The feature cache if a stage used it (it then holds that stage's cut), else None."""
        return self._feature_cache

    def path(self, index: int, plan: FreezePlan) -> StagePath:
        """The cached path where everything before the stage's cut is a fixed function, else the full model."""
        cut, reason = self.decide(index, plan)
        return self.cached_path(index, cut, reason) if cut is not None else self.full_path(index, plan, reason)

    def decide(self, index: int, plan: FreezePlan) -> tuple[Cut | None, str]:
        """Stage `index`'s cut to cache at (None: the full model), and why."""
        recipe, stage = self.session.recipe, self.session.recipe.stages[index]
        augment = stage_augment(self.session, stage)
        cut, reason = cache_decision(
            self.session.model,
            plan,
            augment,
            self.session.data.preprocessing["image_size"],
            recipe.data.feature_views,
            recipe.run.feature_cache,
        )
        if cut is not None and stage.cutmix > 0:
            cut, reason = None, "CutMix mixes image regions, which cached features no longer have"
        if cut is not None and augment != "none" and recipe.data.random_erasing > 0:
            cut, reason = None, "random erasing draws new regions every step"
        return cut, reason

    def later_cut(self, index: int) -> Cut | None:
        """The first later stage's cut inside the backbone, if it caches the same views: one pass fills both entries."""
        stages, augment = self.session.recipe.stages, stage_augment(self.session, self.session.recipe.stages[index])
        for later in range(index + 1, len(stages)):
            cut, _ = self.decide(later, self.session.plans[later])
            if cut is not None and cut.to_head is not None and stage_augment(self.session, stages[later]) == augment:
                return cut
        return None

    def cached_path(self, index: int, cut: Cut, reason: str) -> StagePath:
        """Train the part after the cut alone, on stored outputs of the fixed part before it."""
        s, cache, stage = self.session, self.feature_cache, self.session.recipe.stages[index]
        cache.use(cut, stage_augment(s, stage), s.recipe.data.feature_views, along=self.later_cut(index))
        # Only where backbone layers train after the cut: a head alone is too small to repay a compile.
        images = self.images_per_process(stage.epoch_budget)
        compile = (
            self.compiling
            and cut.to_head is not None
            and should_compile(s.recipe.run.compile, s.hw, images, CPU_COMPILE_MIN_CACHED_IMAGES)
        )
        return StagePath(
            name="cached-features+compiled" if compile else "cached-features",
            reason=reason,
            module=cut.suffix,
            set_train_mode=cut.suffix.train,
            train_batches=cache.train_batches,
            val_batches=cache.val_batches,
            batches_per_epoch=len(
                GlobalBatches(len(s.data.train), s.recipe.data.batch_size, 0, True, 0, s.group.world)
            ),
            compile=compile,
        )

    def full_path(self, index: int, plan: FreezePlan, reason: str) -> StagePath:
        """Run images through the whole model every step (compiled if the run decided so)."""
        s = self.session
        stage, data = s.recipe.stages[index], s.recipe.data
        seed, pin = s.recipe.run.seed + index, s.hw.device.type == "cuda"  # pinned memory pays only for GPUs
        rank, world = s.group.rank, s.group.world
        train_set = s.data.train
        if stage.augment is not None and stage.augment != data.augment:
            train_set = train_view(s.data, stage.augment, data.random_erasing)
        train_loader = make_loader(
            train_set, data.batch_size, True, data.workers, seed, pin, rank, world, self.sample_weights
        )
        val_loader = make_loader(s.data.val, data.batch_size, False, data.workers, seed, pin, rank, world)
        order = train_loader.batch_sampler
        assert isinstance(order, GlobalBatches)  # make_loader always batches with GlobalBatches

        def train_batches(epoch: int) -> Batches:
            order.set_epoch(epoch)
            return train_loader

        return StagePath(
            name="full-model+compiled" if self.compile else "full-model",
            reason=reason,
            module=s.model,
            set_train_mode=lambda: plan.set_mode(s.model, True),
            train_batches=train_batches,
            val_batches=lambda: val_loader,
            batches_per_epoch=len(train_loader),
            compile=self.compile,
        )

    def loop(
        self,
        stage: Stage,
        path: StagePath,
        optimizer,
        schedule: ScheduleT,
        average: ModelEmaV3 | None = None,
        accumulate: int | None = None,
        on_step: StepHook | None = None,
    ) -> Loop[ScheduleT]:
        """The one loop for this stage: the task's loss, DDP then torch.compile around the trained module.

        `accumulate` defaults to the recipe's run.accumulate; `on_step` sees every batch's loss.
        """
        s = self.session
        mixing = stage.mixup > 0 or stage.cutmix > 0
        multi = s.task is MULTI_LABEL
        soft = SoftTargets(stage.mixup, stage.cutmix, stage.label_smoothing, len(s.classes), multi) if mixing else None
        # With soft targets the smoothing is already in them; the loss takes them as they are.
        smoothing = 0.0 if mixing else stage.label_smoothing
        module = path.module
        if s.group.active:
            device_ids = [s.hw.device.index] if s.hw.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=device_ids)
        return Loop(
            compiled(module, path.compile),
            optimizer,
            schedule,
            s.task.loss(weight=self.loss_weights, label_smoothing=smoothing, kind=s.recipe.run.multi_label_loss),
            s.hw,
            group=s.group,
            task=s.task,
            accumulate=accumulate or s.recipe.run.accumulate,
            soft_targets=soft,
            ema=average,
            ema_of=s.model,
            on_step=on_step,
        )

    def steps_per_epoch(self, path: StagePath) -> int:
        return -(-path.batches_per_epoch // self.session.recipe.run.accumulate)
