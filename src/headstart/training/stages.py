"""Stages over the one loop: for each stage, its freeze plan, data path, optimizer, schedule and epochs.

The Trainer owns what lasts across a run's stages: the model, the best epoch and its weights,
the weight EMA, the feature cache and the notes for summary.txt. Per epoch it trains through
`loop.Loop`, scores the val split (with the EMA's weights when there is one), writes the history
row and the checkpoints, and decides about early stopping; a stage that stops (or, with
early_stop set, ends) leaves the model at the best weights so far, which the next stage starts from.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from headstart.config.recipe import Stage
from headstart.core.plots import plot_reliability
from headstart.core.runs import BEST_FILE, LAST_FILE, RELIABILITY_FILE, RunFolder, load_checkpoint
from headstart.data.balance import class_weights, sample_weights
from headstart.data.batches import make_loader
from headstart.model.freeze import FreezePlan, count_parameters
from headstart.tasks.calibration import Calibration, calibrate
from headstart.tasks.metrics import best_index, improved, score_batches
from headstart.tasks.single_label import SINGLE_LABEL
from headstart.training.features import FeatureCache
from headstart.training.loop import Loop, SoftTargets, divergence, weight_average, with_progress
from headstart.training.optim import Schedule, build_optimizer
from headstart.training.resume import load_optimizer_state, optimizer_state, rng_state, set_rng_state
from headstart.training.session import Session
from headstart.training.stagepath import StagePath, choose_path, compiled, should_compile
from headstart.training.tracking import Tracker

log = logging.getLogger("headstart")


@dataclass
class EarlyStopState:
    """The stage's best monitored value so far and how many epochs have passed without beating it by min_delta."""

    best: float | None = None
    stale: int = 0

    def update(self, value: float, lower_is_better: bool, min_delta: float) -> None:
        better = self.best is None or (
            value < self.best - min_delta if lower_is_better else value > self.best + min_delta
        )
        self.best, self.stale = (value, 0) if better else (self.best, self.stale + 1)


class Trainer:
    """State shared across the stages of one run: the model, the data, the best checkpoint so far."""

    def __init__(self, session: Session, run: RunFolder, quiet: bool):
        self.session, self.run, self.quiet = session, run, quiet
        self.recipe, self.model, self.data, self.hw, self.group = (
            session.recipe,
            session.model,
            session.data,
            session.hw,
            session.group,
        )
        self.best_row: dict[str, Any] = {}
        self.best_epoch = 0
        # The best epoch's weights, kept on every process for restoring and for scoring the test split.
        self.best_state: dict[str, torch.Tensor] | None = None
        labels, n_classes = self.data.train.labels, len(session.classes)
        balance = self.recipe.data.balance
        self.loss_weights = class_weights(labels, n_classes).to(self.hw.device) if balance == "weights" else None
        self.sample_weights = sample_weights(labels, n_classes) if balance == "sampler" else None
        self.stage_notes: list[str] = []
        self.trackers: list[Tracker] = []
        self.diverged: set[str] = set()  # stages already warned about
        self._feature_cache: FeatureCache | None = None  # built when a stage first takes the cached path
        self.ema = weight_average(self.model, self.recipe.run.ema_decay)
        stages = self.recipe.stages
        full_images = sum(s.epoch_budget for s in stages if s.freeze != "backbone") * len(self.data.train)
        self.compile = should_compile(self.recipe.run.compile, self.hw, full_images)

    # ------------------------------------------------------------------ weights

    def scored_state(self) -> dict[str, torch.Tensor]:
        """The weights validation scores and best.pt holds: the EMA's when there is one, else the model's."""
        source = self.ema.module if self.ema is not None else self.model
        return {k: v.detach().clone() for k, v in source.state_dict().items()}

    @contextlib.contextmanager
    def scoring_weights(self) -> Iterator[None]:
        """The model holds the EMA's weights inside the block (so cached and full paths score them alike)."""
        if self.ema is None:
            yield
            return
        raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.ema.module.state_dict())
        try:
            yield
        finally:
            self.model.load_state_dict(raw)

    def restore_best(self) -> None:
        """Model (and EMA) back to the best weights so far: what an early-stopped stage ends at."""
        if self.best_state is None:
            return
        self.model.load_state_dict(self.best_state)
        if self.ema is not None:
            self.ema.module.load_state_dict(self.best_state)

    def restore(self, point) -> None:
        """Best-so-far bookkeeping from the history an interrupted run left (point: train.ResumePoint)."""
        if self.run.history:
            self.best_epoch = best_index(self.run.history, self.recipe.run.monitor) + 1
            self.best_row = self.run.history[self.best_epoch - 1]
            if (self.run.path / BEST_FILE).is_file():
                self.best_state = load_checkpoint(self.run.path / BEST_FILE)["model"]
        if self.ema is not None:
            self.ema.module.load_state_dict(point.checkpoint["model"])
        self.stage_notes = list(point.state.get("stage_notes", []))

    def checkpoint(self, stage: Stage, epoch: int, row: dict[str, Any]) -> dict[str, Any]:
        payload = {
            "model": self.scored_state(),
            "recipe": self.recipe.to_dict(),
            "classes": self.data.split.classes,
            "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in self.data.preprocessing.items()},
            "stage": stage.name,
            "epoch": epoch,
            "val_loss": row["val_loss"],
            "val_acc": row["val_acc"],
        }
        if self.ema is not None:
            payload["raw_model"] = self.model.state_dict()  # what training continues from; "model" is the EMA
        return payload

    # ------------------------------------------------------------------ data paths

    @property
    def feature_cache(self) -> FeatureCache:
        if self._feature_cache is None:
            self._feature_cache = FeatureCache.for_recipe(self.model, self.data, self.hw, self.recipe, self.group)
            self._feature_cache.sample_weights = self.sample_weights
        return self._feature_cache

    def stage_path(self, index: int, plan: FreezePlan) -> StagePath:
        """The cached path where everything before the stage's cut is a fixed function, else the full model."""
        return choose_path(self, index, plan)

    def training_module(self, path: StagePath) -> nn.Module:
        """What the optimizer steps through: DDP across processes, then torch.compile, as torch recommends."""
        module = path.module
        if self.group.active:
            device_ids = [self.hw.device.index] if self.hw.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=device_ids)
        return compiled(module, path.compile)

    def make_loop(self, stage: Stage, path: StagePath, optimizer, schedule) -> Loop:
        mixing = stage.mixup > 0 or stage.cutmix > 0
        soft = (
            SoftTargets(stage.mixup, stage.cutmix, stage.label_smoothing, len(self.session.classes)) if mixing else None
        )
        # With soft targets the smoothing is already in them; torch's cross entropy takes them as they are.
        smoothing = 0.0 if mixing else stage.label_smoothing
        criterion = SINGLE_LABEL.loss(weight=self.loss_weights, label_smoothing=smoothing)
        return Loop(
            self.training_module(path),
            optimizer,
            schedule,
            criterion,
            self.hw,
            self.group,
            accumulate=self.recipe.run.accumulate,
            soft_targets=soft,
            ema=self.ema,
            ema_of=self.model,
        )

    def steps_per_epoch(self, path: StagePath) -> int:
        return -(-path.batches_per_epoch // self.recipe.run.accumulate)

    # ------------------------------------------------------------------ one stage

    def run_stage(self, index: int, started: float, point=None) -> None:
        stage, plan = self.recipe.stages[index], self.session.plans[index]
        plan.apply(self.model)
        path = self.stage_path(index, plan)
        optimizer = build_optimizer(self.model, stage)
        schedule = Schedule(optimizer, stage, self.steps_per_epoch(path))
        first_epoch, stop = 1, EarlyStopState()
        if point is not None:
            # Continue inside this stage: same optimizer moments, schedule position, random streams, patience.
            first_epoch = point.state["epoch"] + 1
            load_optimizer_state(optimizer, self.model, point.state["optimizer"])
            schedule.load_state_dict(point.state["schedule"])
            set_rng_state(point.state["rng"])
            stop = EarlyStopState(**point.state.get("early_stop", {}))
        else:
            self.stage_notes.append(self.stage_note(stage, plan, path))
        log.info(self.stage_notes[-1] if point is None else self.stage_note(stage, plan, path))
        loop = self.make_loop(stage, path, optimizer, schedule)
        for epoch in range(first_epoch, stage.epoch_budget + 1):
            row = self.run_epoch(stage, epoch, path, loop)
            stop.update(row[self.recipe.run.monitor], self.recipe.run.monitor == "val_loss", self.min_delta(stage))
            ends = self.stop_reason(stage, epoch, stop)
            if ends:
                row["stop"] = ends
            self.record_epoch(index, stage, epoch, row, optimizer, schedule, stop, started)
            if ends:
                break

    def stage_note(self, stage: Stage, plan: FreezePlan, path: StagePath) -> str:
        trainable, frozen = count_parameters(self.model)
        epochs = f"up to {stage.max_epochs} epochs (auto)" if stage.epochs == "auto" else f"{stage.epochs} epoch(s)"
        early = f", early stop patience {stage.early_stop.patience}" if stage.early_stop else ""
        return (
            f"stage '{stage.name}': freeze {stage.freeze!r} (bn {stage.bn}), {trainable:,} trainable / {frozen:,} "
            f"frozen params, {stage.optimizer} lr {stage.lr:g} {stage.schedule}, {epochs}{early}, "
            f"path {path.name} ({path.reason})"
        )

    @staticmethod
    def min_delta(stage: Stage) -> float:
        return stage.early_stop.min_delta if stage.early_stop else 0.0

    def stop_reason(self, stage: Stage, epoch: int, stop: EarlyStopState) -> str | None:
        """Why the stage ends after this epoch (None when it goes on)."""
        monitor = self.recipe.run.monitor
        if stage.early_stop and stop.stale >= stage.early_stop.patience:
            return f"early stop: {monitor} did not improve for {stop.stale} epochs"
        if epoch == stage.epoch_budget:
            return "reached the cap of max_epochs" if stage.epochs == "auto" else f"ran its {epoch} epochs"
        return None

    def run_epoch(self, stage: Stage, epoch: int, path: StagePath, loop: Loop) -> dict[str, Any]:
        where = f"stage '{stage.name}', epoch {epoch}"
        tic = time.perf_counter()
        lr = loop.schedule.lr
        total = stage.epoch_budget
        batches = with_progress(path.train_batches(epoch), f"{stage.name} {epoch}/{total}", self.quiet)
        path.set_train_mode()
        steps = self.steps_per_epoch(path)
        train_loss, train_acc = loop.epoch(batches, path.batches_per_epoch, (epoch - 1) * steps, where)
        # Evaluation runs eagerly on the plain module: a compiled eval graph would cost a second compile for one pass.
        with self.scoring_weights():
            val, _ = score_batches(
                path.module, path.val_batches(), SINGLE_LABEL, self.hw, self.group, len(self.session.classes)
            )
        trainable, _ = count_parameters(self.model)
        row = {
            "stage": stage.name,
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "val_balanced_acc": val["balanced_acc"],
            "val_f1": val["f1"],
            "lr": lr,
            "seconds": time.perf_counter() - tic,
            "path": path.name,
            "trainable_params": trainable,
        }
        log.info(
            "[%s] epoch %d/%s - %.1fs - loss: %.4f - acc: %.4f - val_loss: %.4f - val_acc: %.4f"
            " - val_bal_acc: %.4f - val_f1: %.4f - lr: %.3g",
            stage.name,
            epoch,
            total if stage.epochs != "auto" else f"auto<={total}",
            row["seconds"],
            train_loss,
            train_acc,
            val["loss"],
            val["acc"],
            val["balanced_acc"],
            val["f1"],
            lr,
        )
        self.check_divergence(stage, epoch, max(train_loss, val["loss"]), lr)
        return row

    def record_epoch(self, index, stage, epoch, row, optimizer, schedule, stop: EarlyStopState, started) -> None:
        """History row, trackers, best.pt when it improved, and last.pt with what --resume needs."""
        self.run.add_epoch(row)
        for tracker in self.trackers:
            tracker.log_epoch(len(self.run.history), row)
        payload = self.checkpoint(stage, epoch, row)
        if improved(row, self.best_row, self.recipe.run.monitor):
            self.best_row, self.best_epoch = row, len(self.run.history)
            self.best_state = payload["model"]
            self.run.save_checkpoint(BEST_FILE, payload)
        ends = "stop" in row
        if ends and stage.early_stop and self.best_epoch != len(self.run.history):
            self.restore_best()
            note = f"stage '{stage.name}' {row['stop']}; restored the best weights so far (epoch {self.best_epoch})"
            log.info("%s", note)
            self.stage_notes.append(note)
            payload = self.checkpoint(stage, epoch, row)  # last.pt holds what the next stage starts from
        payload["resume"] = {
            "stage_index": index,
            "epoch": epoch,
            "stage_finished": ends,
            "epochs_done": len(self.run.history),
            "optimizer": optimizer_state(optimizer, self.model),
            "schedule": schedule.state_dict(),
            "rng": rng_state(),
            "early_stop": {"best": stop.best, "stale": stop.stale},
            "elapsed": time.perf_counter() - started,
            "stage_notes": self.stage_notes,
        }
        self.run.save_checkpoint(LAST_FILE, payload)

    def check_divergence(self, stage: Stage, epoch: int, loss: float, lr: float) -> None:
        """Warn (once per stage: later epochs would say the same) when the loss shows the stage diverged."""
        why = divergence(loss, len(self.session.classes))
        if why is None or stage.name in self.diverged:
            return
        self.diverged.add(stage.name)
        note = f"warning: stage '{stage.name}', epoch {epoch}: {why}; lower the learning rate ({lr:.3g})"
        log.warning("%s", note)
        self.stage_notes.append(note)

    # ------------------------------------------------------------------ after the stages

    def score_test(self) -> None:
        """Score the chosen model (best.pt's weights) on the test split, once; nothing is chosen by it."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        data = self.recipe.data
        pin = self.hw.device.type == "cuda"
        loader = make_loader(
            self.data.test,
            data.batch_size,
            False,
            data.workers,
            self.recipe.run.seed,
            pin,
            self.group.rank,
            self.group.world,
        )
        classes = len(self.session.classes)
        test, _ = score_batches(self.model, loader, SINGLE_LABEL, self.hw, self.group, classes)
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


def val_logits(trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """The current model's logits and the labels over the whole val split (one process: calibration is rank 0's)."""
    data, hw = trainer.recipe.data, trainer.hw
    loader = make_loader(trainer.data.val, data.batch_size, False, data.workers, trainer.recipe.run.seed)
    trainer.model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for inputs, targets in loader:
            with hw.autocast():
                logits.append(trainer.model(hw.to_input(inputs)).float().cpu())
            labels.append(targets)
    return torch.cat(logits), torch.cat(labels)


def calibrate_best(trainer: Trainer) -> Calibration | None:
    """Fit the temperature of best.pt's weights on the val split; best.pt, reliability.png and the notes get it."""
    if trainer.best_state is None or not trainer.group.is_main or not (trainer.run.path / BEST_FILE).is_file():
        return None
    trainer.model.load_state_dict(trainer.best_state)
    calibration = calibrate(*val_logits(trainer))
    checkpoint = load_checkpoint(trainer.run.path / BEST_FILE)
    checkpoint.update(temperature=calibration.temperature, calibration=calibration.to_dict())
    trainer.run.save_checkpoint(BEST_FILE, checkpoint)
    plot_reliability(calibration, trainer.run.path / RELIABILITY_FILE)
    trainer.stage_notes.append(calibration.summary_line())
    log.info("%s", calibration.summary_line())
    return calibration
