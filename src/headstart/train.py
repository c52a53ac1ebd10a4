"""Staged training: for each stage, freeze, build optimizer and schedule, run the epochs, record.

Example:
    >>> import headstart
    >>> result = headstart.train("recipes/003_two_stage_vgg16.yaml")
    >>> result.best["val_acc"], result.run_dir
"""

from __future__ import annotations

import logging
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.optim import create_optimizer_v2, param_groups_layer_decay
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from headstart.balance import choose_balance, class_weights, sample_weights
from headstart.data import GlobalBatches, PreparedData, make_loader, prepare_data
from headstart.distributed import SOLO, Group, join, leave
from headstart.duplicates import warn_duplicates
from headstart.errors import HeadstartError, Interrupted
from headstart.features import Cut, FeatureCache, cache_decision
from headstart.freeze import FreezePlan, count_parameters, plan_freeze
from headstart.hardware import Hardware, pick_hardware
from headstart.metrics import best_index, improved, score_batches
from headstart.model import Classifier, build_model, resolve_preprocessing
from headstart.paths import user_path
from headstart.plots import plot_curves
from headstart.recipe import Recipe, Stage
from headstart.resume import load_optimizer_state, optimizer_state, rng_state, set_rng_state
from headstart.runs import RUN_FILES, RunFolder, load_checkpoint, read_history, read_test
from headstart.tracking import Tracker, open_trackers
from headstart.weights import default_source

log = logging.getLogger("headstart")

# Recipe optimizer names -> timm's optimizer factory names. Our 'sgd' is plain momentum SGD, as in Keras.
TIMM_OPTIMIZERS = {"sgd": "momentum", "nesterov": "nesterov", "adam": "adam", "adamw": "adamw"}


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, Any]]
    classes: list[str]
    # The chosen model's score on the test split (loss, acc, balanced_acc, f1, images), if the data has one.
    test: dict[str, Any] | None = None
    monitor: str = "val_loss"

    @property
    def best(self) -> dict[str, Any]:
        """The best epoch by the run's monitor (the one saved as best.pt)."""
        return self.history[best_index(self.history, self.monitor)]

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1]


def as_recipe(recipe: Recipe | str | Path | dict | None) -> Recipe:
    if recipe is None:
        return Recipe()
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return Recipe.from_dict(recipe)
    return Recipe.from_yaml(recipe)


def resolve(recipe: Recipe) -> Recipe:
    """Fill what the recipe left to defaults that depend on other fields, so the saved recipe says what ran."""
    resolved = recipe.model_copy(deep=True)
    if resolved.model.weights is None:
        resolved.model.weights = default_source(resolved.model.backbone)
    return resolved


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic matmuls
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def ensure_console(quiet: bool) -> None:
    """A library user gets epoch lines on stdout unless they configured logging themselves or asked for quiet."""
    if quiet:
        log.setLevel(logging.WARNING)
        return
    log.setLevel(logging.INFO)
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)


# ----------------------------------------------------------------------------- optimizer and schedule


def param_groups(model: Classifier, stage: Stage) -> list[dict[str, Any]]:
    """Trainable parameters in groups with explicit lr and weight decay (none for biases and norms)."""
    scales: dict[str, float] = {}
    if stage.layer_decay is not None:
        # timm's helper knows each backbone's layer order; it skips frozen parameters itself.
        for group in param_groups_layer_decay(model.backbone, weight_decay=0.0, layer_decay=stage.layer_decay):
            ids = {id(p) for p in group["params"]}
            for name, param in model.backbone.named_parameters():
                if id(param) in ids:
                    scales[f"backbone.{name}"] = group["lr_scale"]
        lowest = min(scales.values(), default=1.0)
        scales.update({f"adapter.{n}": lowest for n, _ in model.adapter.named_parameters()})
    elif stage.body_lr_mult is not None:
        for part in ("adapter", "backbone"):
            scales.update({f"{part}.{n}": stage.body_lr_mult for n, _ in getattr(model, part).named_parameters()})
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = scales.get(name, 1.0)
        decays = param.ndim > 1
        group = groups.setdefault(
            (scale, decays),
            {"params": [], "lr": stage.lr * scale, "weight_decay": stage.weight_decay if decays else 0.0},
        )
        group["params"].append(param)
    return list(groups.values())


def build_optimizer(model: Classifier, stage: Stage) -> torch.optim.Optimizer:
    groups = param_groups(model, stage)
    if not groups:
        raise HeadstartError(
            f"stage '{stage.name}' has nothing to train: freeze '{stage.freeze}' freezes every parameter"
        )
    return create_optimizer_v2(
        groups,
        opt=TIMM_OPTIMIZERS[stage.optimizer],
        lr=stage.lr,
        momentum=stage.momentum,
        weight_decay=stage.weight_decay,
    )


class Schedule:
    """Per-step learning rate: constant, timm's cosine (with warmup), or torch's one-cycle."""

    def __init__(self, optimizer: torch.optim.Optimizer, stage: Stage, steps_per_epoch: int):
        self.kind = stage.schedule
        self.optimizer = optimizer
        total = stage.epochs * steps_per_epoch
        if self.kind == "cosine":
            self.scheduler, _ = create_scheduler_v2(
                optimizer,
                sched="cosine",
                num_epochs=stage.epochs,
                warmup_epochs=stage.warmup_epochs,
                warmup_lr=stage.lr * 0.01,
                min_lr=0.0,
                step_on_epochs=False,
                updates_per_epoch=steps_per_epoch,
            )
        elif self.kind == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(total, 1), pct_start=0.25
            )
        else:
            self.scheduler = None

    def after_step(self, step: int) -> None:
        if self.kind == "cosine":
            self.scheduler.step_update(step)
        elif self.kind == "onecycle" and step < self.scheduler.total_steps:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)

    @property
    def lr(self) -> float:
        """The largest group's current learning rate (the head's)."""
        return max(group["lr"] for group in self.optimizer.param_groups)


# ----------------------------------------------------------------------------- the loop


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def train_one_epoch(
    module: nn.Module,
    batches: Batches,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    criterion: nn.Module,
    hw: Hardware,
    set_train_mode: Callable[[], None],
    first_step: int,
    where: str,
    group: Group = SOLO,
) -> tuple[float, float]:
    """One pass over the training batches; returns mean loss and accuracy as seen during training (over all processes)."""
    set_train_mode()
    total_loss, correct, count = 0.0, 0, 0
    scaler = torch.amp.GradScaler(hw.device.type) if hw.precision == "fp16" else None
    for step, (inputs, labels) in enumerate(batches):
        inputs, labels = hw.to_input(inputs), labels.to(hw.device, non_blocking=True)
        with hw.autocast():
            logits = module(inputs)
            loss = criterion(logits.float(), labels)
        # Every process stops together, or the others would wait for this one forever.
        if group.any(not torch.isfinite(loss).item()):
            raise HeadstartError(f"loss became {loss.item()} in {where}, step {step + 1}; {likely_cause(optimizer)}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        schedule.after_step(first_step + step + 1)
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        count += len(labels)
    total_loss, correct, count = group.sum([total_loss, correct, count])
    return total_loss / count, correct / count


def likely_cause(optimizer: torch.optim.Optimizer) -> str:
    """What most likely made the loss non-finite: a weight decay that flips the weights every step, else the LR.

    Decay is blamed only when it is itself out of the usual range (above 1): with lr 1e12 the
    product is huge too, but the learning rate is what the user set wrong.
    """
    for group in optimizer.param_groups:
        decay, lr = group.get("weight_decay", 0.0), group["lr"]
        if not math.isfinite(decay) or (decay > 1 and decay * lr >= 1):
            return (
                f"weight_decay {decay:g} at lr {lr:.3g} shrinks every weight past zero each step "
                "(weight_decay x lr must stay well below 1): lower weight_decay"
            )
    lr = max(group["lr"] for group in optimizer.param_groups)
    return f"the learning rate ({lr:.3g}) is the likely cause: lower it"


# A mean training loss this many times the chance level (ln classes) means the stage diverged.
DIVERGED_FACTOR = 20


def divergence(loss: float, classes: int) -> str | None:
    """Why `loss` shows a diverging stage (far above guessing uniformly, ln classes), or None."""
    chance = math.log(max(classes, 2))
    if math.isfinite(loss) and loss <= DIVERGED_FACTOR * chance:
        return None
    return (
        f"loss {loss:.3g} is over {DIVERGED_FACTOR}x the chance level (ln {classes} = {chance:.2f}): the stage diverged"
    )


def with_progress(batches: Batches, description: str, quiet: bool) -> Batches:
    # Bars only on a terminal: in CI logs and pipes they would be noise.
    return tqdm(batches, desc=description, leave=False, disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True)


# ----------------------------------------------------------------------------- a whole run

# Below this many full-model training images in a run, compiling on a CPU costs more than it saves:
# measured 9.7 -> 18.1 img/s for EfficientNet-Lite0 after ~100 s of compiling, a break-even near
# 2,100 images; the margin covers a recompile per stage.
CPU_COMPILE_MIN_IMAGES = 20_000


def should_compile(setting: str, hw: Hardware, full_model_images: int) -> bool:
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


def default_run_name(recipe: Recipe, data_name: str) -> str:
    return recipe.run.name or f"{data_name}-{recipe.model.backbone}"


@dataclass
class ResumePoint:
    """Where an interrupted run stopped: its folder, recipe, and the state saved after its last finished epoch."""

    run_dir: Path
    recipe: Recipe
    checkpoint: dict[str, Any]

    @property
    def state(self) -> dict[str, Any]:
        return self.checkpoint["resume"]

    @classmethod
    def read(cls, run_dir: str | Path) -> ResumePoint:
        path = user_path(run_dir)
        if not (path / "recipe.yaml").is_file():
            raise HeadstartError(f"cannot resume {path}: not a run folder (no recipe.yaml)")
        if not (path / "last.pt").is_file():
            raise HeadstartError(
                f"cannot resume {path}: no epoch finished before it stopped (no last.pt); start it again"
            )
        checkpoint = load_checkpoint(path / "last.pt")
        if "resume" not in checkpoint:
            raise HeadstartError(
                f"cannot resume {path}: its last.pt holds no optimizer state (written by an older headstart)"
            )
        return cls(path, Recipe.from_yaml(path / "recipe.yaml"), checkpoint)

    def finished(self, recipe: Recipe) -> bool:
        return self.state["stage_index"] == len(recipe.stages) - 1 and self.state["epoch"] == recipe.stages[-1].epochs


def train(
    recipe: Recipe | str | Path | dict | None = None, *, quiet: bool = False, resume: str | Path | None = None
) -> TrainResult:
    """Run every stage of `recipe` (a Recipe, a YAML path, a dict, or None for the embedded default).

    Writes the run folder described in headstart.runs and returns its history. `resume=RUN_DIR`
    continues an interrupted run from its last finished epoch, with its own saved recipe.
    Under a distributed launcher (torchrun, accelerate launch) each process trains its share.
    """
    point = None
    if resume is not None:
        if recipe is not None:
            raise HeadstartError("a resumed run uses the recipe saved in its folder; give the run folder alone")
        point = ResumePoint.read(resume)
        recipe = point.recipe
    recipe = resolve(as_recipe(recipe))
    hw = pick_hardware(recipe.run.device, recipe.run.precision, recipe.run.channels_last)
    group = join(hw.device.type)
    if group.active and hw.device.type == "cuda":
        if group.local_rank >= torch.cuda.device_count():
            leave(group)
            raise HeadstartError(
                f"{group.world} processes on this machine but {torch.cuda.device_count()} CUDA GPU(s): "
                "one process per GPU, or --device cpu for CPU processes"
            )
        hw = replace(hw, device=torch.device("cuda", group.local_rank))
        torch.cuda.set_device(hw.device)
    ensure_console(quiet or not group.is_main)
    try:
        return _train(recipe, hw, group, quiet or not group.is_main, point)
    finally:
        leave(group)


def _train(recipe: Recipe, hw: Hardware, group: Group, quiet: bool, point: ResumePoint | None) -> TrainResult:
    seed_everything(recipe.run.seed, recipe.run.deterministic)
    preprocessing = resolve_preprocessing(recipe.data, recipe.model)
    with group.main_first():
        data = prepare_data(recipe.data, preprocessing, on_disk=group.active)
    if group.is_main and point is None:
        warn_duplicates({"train": data.split.train, "val": data.split.val, "test": data.split.test}, recipe.data.path)
    classes = data.split.classes
    # Saved in recipe.yaml as the remedy that ran, so a resumed run and a reader of the recipe see it.
    recipe.data.balance = choose_balance(recipe.data.balance, data.train.labels, classes)
    model = build_model(recipe.model, len(classes), preprocessing["image_size"])
    # Every stage's freeze point is checked before anything trains or is written.
    plans = [plan_freeze(model, stage.freeze, stage.bn) for stage in recipe.stages]

    if point is None:
        run = _new_run_folder(recipe, data.split.name, group)
    else:
        run = _reopen_run_folder(point, classes, group)
        model.load_state_dict(point.checkpoint["model"])
        if point.finished(recipe):
            log.info("%s finished all its stages already; nothing to resume", run.path)
            return TrainResult(run.path, run.history, classes, read_test(run.path), recipe.run.monitor)
    log.info(
        "headstart: %s, %d classes, %d train / %d val images -> %s%s",
        data.split.name,
        len(classes),
        len(data.train),
        len(data.val),
        run.path,
        f" (resuming after {point.checkpoint['stage']} epoch {point.checkpoint['epoch']})" if point else "",
    )
    processes = f", {group.world} processes" if group.active else ""
    log.info(
        "model: %s (weights: %s), input %dpx, on %s%s",
        recipe.model.backbone,
        recipe.model.weights,
        preprocessing["image_size"],
        hw.describe(),
        processes,
    )

    model.to(hw.device)
    if hw.channels_last:
        model.to(memory_format=torch.channels_last)
    trainer = _Trainer(recipe, model, data, hw, run, quiet, group)
    trainer.trackers = open_trackers(recipe.run.log, run.path, recipe) if group.is_main else []
    started = time.perf_counter() - (point.state["elapsed"] if point else 0.0)
    first_stage, inside = 0, None
    if point is not None:
        trainer.restore(point)
        first_stage = point.state["stage_index"]
        if point.state["epoch"] < recipe.stages[first_stage].epochs:
            inside = point  # stopped inside a stage: run_stage continues it
        else:
            first_stage += 1  # stopped between stages: the next one starts as it would have
            set_rng_state(point.state["rng"])
    try:
        _run_stages(trainer, plans, first_stage, inside, started)
    except HeadstartError as err:
        raise HeadstartError(f"{err}; {kept_files(run.path)}") from None
    except KeyboardInterrupt:
        raise Interrupted(run.path, (run.path / "last.pt").is_file()) from None
    log.info(
        "best (%s): epoch %d (%s) val_loss %.4f val_acc %.4f; files in %s",
        recipe.run.monitor,
        trainer.best_epoch,
        trainer.best_row["stage"],
        trainer.best_row["val_loss"],
        trainer.best_row["val_acc"],
        run.path,
    )
    return TrainResult(run.path, run.history, classes, run.test, recipe.run.monitor)


def _run_stages(trainer: _Trainer, plans: list[FreezePlan], first: int, inside: ResumePoint | None, started: float):
    """Every stage from `first` on; the curves and summary are written whatever happens, once an epoch finished."""
    stages, run = trainer.recipe.stages, trainer.run
    try:
        for index in range(first, len(stages)):
            trainer.run_stage(index, stages[index], plans[index], started, inside if index == first else None)
        if trainer.data.test is not None and len(trainer.data.test):
            trainer.score_test()  # once, with the chosen weights; nothing is chosen by it
    finally:
        if run.history and trainer.group.is_main:
            plot_curves(run.history, run.path / "curves.png", title=run.path.name)
            run.write_text("summary.txt", trainer.summary(time.perf_counter() - started))
        for tracker in trainer.trackers:
            tracker.close()


def kept_files(run_dir: Path) -> str:
    """What a stopped run's folder holds, said as it is (after a failure in epoch 1 that is recipe.yaml alone)."""
    names = sorted(p.name for p in run_dir.glob("*") if p.name in RUN_FILES) if run_dir.is_dir() else []
    held = f"{run_dir} keeps {', '.join(names)}" if names else f"{run_dir} holds no run files"
    return held if "best.pt" in names else f"{held} (no epoch finished)"


def _new_run_folder(recipe: Recipe, data_name: str, group: Group) -> RunFolder:
    """Rank 0 makes the folder and tells the other processes its name; they write nothing."""
    path = RunFolder.create(recipe.run.out_dir, default_run_name(recipe, data_name)).path if group.is_main else None
    run = RunFolder(Path(group.share(str(path) if path else None)), writes=group.is_main)
    run.write_text("recipe.yaml", recipe.to_yaml())
    return run


def _reopen_run_folder(point: ResumePoint, classes: list[str], group: Group) -> RunFolder:
    """The interrupted run's folder with its history up to the last epoch whose checkpoint was written."""
    if point.checkpoint["classes"] != classes:
        raise HeadstartError(
            f"cannot resume {point.run_dir}: its classes {point.checkpoint['classes']} differ from the data's now {classes}"
        )
    run = RunFolder(point.run_dir, writes=group.is_main)
    if removed := run.remove_partial_writes():
        log.info("removed %d file(s) the interrupted run left half-written: %s", len(removed), ", ".join(removed))
    # history.json is written before last.pt: a kill between the two leaves one row too many.
    run.history = read_history(point.run_dir)[: point.state["epochs_done"]]
    return run


@dataclass
class StagePath:
    """How a stage's batches reach the trainable part: cached backbone outputs, or images through the whole model."""

    name: str
    reason: str
    module: nn.Module
    set_train_mode: Callable[[], Any]
    train_batches: Callable[[int], Batches]
    val_batches: Callable[[], Batches]
    steps_per_epoch: int
    compile: bool


class _Trainer:
    """State shared across stages of one run: the model, the data, the best checkpoint so far."""

    def __init__(
        self,
        recipe: Recipe,
        model: Classifier,
        data: PreparedData,
        hw: Hardware,
        run: RunFolder,
        quiet: bool,
        group: Group = SOLO,
    ):
        self.recipe, self.model, self.data, self.hw, self.run, self.quiet, self.group = (
            recipe,
            model,
            data,
            hw,
            run,
            quiet,
            group,
        )
        self.best_row: dict[str, Any] = {}
        self.best_epoch = 0
        # The best epoch's weights, kept on every process for scoring the test split once at the end.
        self.best_state: dict[str, torch.Tensor] | None = None
        labels, n_classes = data.train.labels, len(data.split.classes)
        balance = recipe.data.balance
        self.loss_weights = class_weights(labels, n_classes).to(hw.device) if balance == "weights" else None
        self.sample_weights = sample_weights(labels, n_classes) if balance == "sampler" else None
        self.stage_notes: list[str] = []
        self.trackers: list[Tracker] = []
        self.diverged: set[str] = set()  # stages already warned about
        self.feature_cache = FeatureCache(model, data, hw, recipe, group)
        self.feature_cache.sample_weights = self.sample_weights
        full_model_images = sum(stage.epochs for stage in recipe.stages if stage.freeze != "backbone") * len(data.train)
        self.compile = should_compile(recipe.run.compile, hw, full_model_images)

    def restore(self, point: ResumePoint) -> None:
        """Best-so-far bookkeeping from the history an interrupted run left."""
        if self.run.history:
            self.best_epoch = best_index(self.run.history, self.recipe.run.monitor) + 1
            self.best_row = self.run.history[self.best_epoch - 1]
            if (self.run.path / "best.pt").is_file():
                self.best_state = load_checkpoint(self.run.path / "best.pt")["model"]
        self.stage_notes = list(point.state.get("stage_notes", []))

    def checkpoint(self, stage: Stage, epoch: int, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "recipe": self.recipe.to_dict(),
            "classes": self.data.split.classes,
            "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in self.data.preprocessing.items()},
            "stage": stage.name,
            "epoch": epoch,
            "val_loss": row["val_loss"],
            "val_acc": row["val_acc"],
        }

    def _cached_path(self, cut: Cut, reason: str) -> StagePath:
        """Train the part after the cut alone, on stored outputs of the fixed part before it."""
        self.feature_cache.use(cut)
        world = self.group.world
        return StagePath(
            name="cached-features",
            reason=reason,
            module=cut.suffix,
            set_train_mode=cut.suffix.train,
            train_batches=self.feature_cache.train_batches,
            val_batches=self.feature_cache.val_batches,
            steps_per_epoch=len(GlobalBatches(len(self.data.train), self.recipe.data.batch_size, 0, True, 0, world)),
            compile=False,
        )

    def _full_path(self, index: int, plan: FreezePlan, reason: str) -> StagePath:
        """Run images through the whole model every step (compiled if the run decided so)."""
        seed = self.recipe.run.seed + index
        pin = self.hw.device.type == "cuda"  # pinned host memory only pays for copies to a GPU
        batch, workers, rank, world = (
            self.recipe.data.batch_size,
            self.recipe.data.workers,
            self.group.rank,
            self.group.world,
        )
        train_loader = make_loader(self.data.train, batch, True, workers, seed, pin, rank, world, self.sample_weights)
        val_loader = make_loader(self.data.val, batch, False, workers, seed, pin, rank, world)

        def train_batches(epoch: int) -> Batches:
            train_loader.batch_sampler.set_epoch(epoch)
            return train_loader

        return StagePath(
            name="full-model+compiled" if self.compile else "full-model",
            reason=reason,
            module=self.model,
            set_train_mode=lambda: plan.set_mode(self.model, True),
            train_batches=train_batches,
            val_batches=lambda: val_loader,
            steps_per_epoch=len(train_loader),
            compile=self.compile,
        )

    def stage_path(self, index: int, plan: FreezePlan) -> StagePath:
        """The cached path where everything before the stage's cut is a fixed function, else the full model."""
        cut, reason = cache_decision(
            self.model,
            plan,
            self.recipe.data.augment,
            self.data.preprocessing["image_size"],
            self.recipe.data.feature_views,
            self.recipe.run.feature_cache,
        )
        return self._cached_path(cut, reason) if cut is not None else self._full_path(index, plan, reason)

    def training_module(self, path: StagePath) -> nn.Module:
        """What the optimizer steps through: DDP across processes, then torch.compile, as torch recommends."""
        module = path.module
        if self.group.active:
            device_ids = [self.hw.device.index] if self.hw.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=device_ids)
        return compiled(module, path.compile)

    def run_stage(
        self, index: int, stage: Stage, plan: FreezePlan, started: float, point: ResumePoint | None = None
    ) -> None:
        plan.apply(self.model)
        trainable, frozen = count_parameters(self.model)
        path = self.stage_path(index, plan)
        note = (
            f"stage '{stage.name}': freeze {stage.freeze!r} (bn {stage.bn}), {trainable:,} trainable / {frozen:,} frozen params, "
            f"{stage.optimizer} lr {stage.lr:g} {stage.schedule}, path {path.name} ({path.reason})"
        )
        optimizer = build_optimizer(self.model, stage)
        schedule = Schedule(optimizer, stage, path.steps_per_epoch)
        first_epoch = 1
        if point is not None:
            # Continue inside this stage: same optimizer moments, schedule position and random streams.
            first_epoch = point.state["epoch"] + 1
            load_optimizer_state(optimizer, self.model, point.state["optimizer"])
            schedule.load_state_dict(point.state["schedule"])
            set_rng_state(point.state["rng"])
        else:
            self.stage_notes.append(note)
        log.info(note)
        module = self.training_module(path)
        criterion = nn.CrossEntropyLoss(weight=self.loss_weights, label_smoothing=stage.label_smoothing)
        eval_criterion = nn.CrossEntropyLoss()
        for epoch in range(first_epoch, stage.epochs + 1):
            where = f"stage '{stage.name}', epoch {epoch}"
            tic = time.perf_counter()
            lr = schedule.lr
            batches = with_progress(path.train_batches(epoch), f"{stage.name} {epoch}/{stage.epochs}", self.quiet)
            train_loss, train_acc = train_one_epoch(
                module,
                batches,
                optimizer,
                schedule,
                criterion,
                self.hw,
                path.set_train_mode,
                (epoch - 1) * path.steps_per_epoch,
                where,
                self.group,
            )
            # Evaluation runs eagerly on the plain module: a compiled eval graph would cost a second compile for one pass.
            val, _ = score_batches(
                path.module, path.val_batches(), eval_criterion, self.hw, self.group, len(self.data.split.classes)
            )
            val_loss, val_acc = val["loss"], val["acc"]
            row = {
                "stage": stage.name,
                "epoch": epoch,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "val_balanced_acc": val["balanced_acc"],
                "val_f1": val["f1"],
                "lr": lr,
                "seconds": time.perf_counter() - tic,
                "path": path.name,
                "trainable_params": trainable,
            }
            self.run.add_epoch(row)
            for tracker in self.trackers:
                tracker.log_epoch(len(self.run.history), row)
            log.info(
                "[%s] epoch %d/%d - %.1fs - loss: %.4f - acc: %.4f - val_loss: %.4f - val_acc: %.4f"
                " - val_bal_acc: %.4f - val_f1: %.4f - lr: %.3g",
                stage.name,
                epoch,
                stage.epochs,
                row["seconds"],
                train_loss,
                train_acc,
                val_loss,
                val_acc,
                val["balanced_acc"],
                val["f1"],
                lr,
            )
            self.check_divergence(stage, epoch, max(train_loss, val_loss), lr)
            payload = self.checkpoint(stage, epoch, row)
            if improved(row, self.best_row, self.recipe.run.monitor):
                self.best_row, self.best_epoch = row, len(self.run.history)
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                self.run.save_checkpoint("best.pt", payload)
            payload["resume"] = {
                "stage_index": index,
                "epoch": epoch,
                "epochs_done": len(self.run.history),
                "optimizer": optimizer_state(optimizer, self.model),
                "schedule": schedule.state_dict(),
                "rng": rng_state(),
                "elapsed": time.perf_counter() - started,
                "stage_notes": self.stage_notes,
            }
            self.run.save_checkpoint("last.pt", payload)

    def score_test(self) -> None:
        """Score the chosen model (best.pt's weights) on the test split, once; nothing is chosen by it."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        pin = self.hw.device.type == "cuda"
        batch, workers, seed = self.recipe.data.batch_size, self.recipe.data.workers, self.recipe.run.seed
        loader = make_loader(self.data.test, batch, False, workers, seed, pin, self.group.rank, self.group.world)
        test, _ = score_batches(
            self.model, loader, nn.CrossEntropyLoss(), self.hw, self.group, len(self.data.split.classes)
        )
        chosen = f"{self.best_row['stage']} epoch {self.best_row['epoch']}"
        self.run.set_test({"images": len(self.data.test), "model": chosen, **test})
        log.info(
            "test (%d images, %s): loss %.4f acc %.4f balanced_acc %.4f f1 %.4f",
            len(self.data.test),
            chosen,
            test["loss"],
            test["acc"],
            test["balanced_acc"],
            test["f1"],
        )

    def check_divergence(self, stage: Stage, epoch: int, loss: float, lr: float) -> None:
        """Warn (once per stage: later epochs would say the same) when the loss shows the stage diverged; noted in summary.txt."""
        why = divergence(loss, len(self.data.split.classes))
        if why is None or stage.name in self.diverged:
            return
        self.diverged.add(stage.name)
        note = f"warning: stage '{stage.name}', epoch {epoch}: {why}; lower the learning rate ({lr:.3g})"
        log.warning("%s", note)
        self.stage_notes.append(note)

    def summary(self, seconds: float) -> str:
        split, recipe = self.data.split, self.recipe
        trainable, frozen = count_parameters(self.model)
        final = self.run.history[-1]
        lines = [
            f"run: {self.run.path}",
            f"data: {recipe.data.path or 'embedded digits'} ({split.name}): {len(split.classes)} classes, "
            f"{len(split.train)} train / {len(split.val)} val / {len(split.test)} test images, {len(split.skipped)} skipped",
            split.describe(),
            f"balance: {recipe.data.balance}, monitor: {recipe.run.monitor}",
            f"classes: {', '.join(split.classes)}",
            f"model: {' -> '.join([a.kind for a in recipe.model.adapters] + [recipe.model.backbone, recipe.model.head.kind])}, "
            f"weights {recipe.model.weights}, {trainable + frozen:,} parameters",
            f"preprocessing: {self.data.preprocessing}",
            f"hardware: {self.hw.describe()}, torch {torch.__version__}, {platform.processor() or platform.machine()}",
            *self.stage_notes,
            f"best: epoch {self.best_epoch} ({self.best_row['stage']} {self.best_row['epoch']}) "
            f"val_loss {self.best_row['val_loss']:.4f} val_acc {self.best_row['val_acc']:.4f}",
            f"final: val_loss {final['val_loss']:.4f} val_acc {final['val_acc']:.4f}",
            *self.score_lines(),
            f"epochs: {len(self.run.history)}, wall time {seconds:.1f}s",
        ]
        return "\n".join(lines) + "\n"

    def score_lines(self) -> list[str]:
        """Balanced accuracy and macro-F1 of the best epoch, and the test split's scores when there is one."""
        best = self.best_row
        lines = [
            f"best balanced: val_balanced_acc {best.get('val_balanced_acc', float('nan')):.4f} "
            f"val_f1 {best.get('val_f1', float('nan')):.4f}"
        ]
        test = self.run.test
        if test:
            lines.append(
                f"test ({test['images']} images, {test['model']}): loss {test['loss']:.4f} acc {test['acc']:.4f} "
                f"balanced_acc {test['balanced_acc']:.4f} f1 {test['f1']:.4f}"
            )
        return lines
