"""Stages over the one loop: for each stage, its freeze plan, data path, optimizer, schedule and epochs.

The Trainer runs stages; each concern that lasts across epochs is a hook that owns its state
(training.hooks: early stopping, the weight EMA, the best weights, the summary's notes), each
stage's path and loop come from training.stagepath.StageBuilder, and what a checkpoint holds is
core.checkpoint's. A stage that stops early (or, with early_stop set, ends) leaves the model at the
best weights so far, which the next stage starts from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from headstart.config.duration import parse_duration
from headstart.config.recipe import Stage
from headstart.core.checkpoint import ResumeState
from headstart.core.progress import progress
from headstart.core.runs import RunFolder
from headstart.model.freeze import count_parameters
from headstart.tasks.metrics import score_batches
from headstart.training.hooks import BestModel, Checkpoints, EarlyStopping, Notes, WeightAverage
from headstart.training.loop import Loop
from headstart.training.optim import Schedule, build_optimizer
from headstart.training.resume import load_optimizer_state, optimizer_state, rng_state, set_rng_state
from headstart.training.session import Session
from headstart.training.stagepath import StageBuilder, StagePath
from headstart.training.tracking import Tracker

log = logging.getLogger("headstart")


# Called after each epoch is saved with (epochs done over all stages, the epoch's history row); see train().
EpochCallback = Callable[[int, dict[str, Any]], None]


class Trainer:
    """Runs a recipe's stages for one run folder; trackers get every epoch's row, then `on_epoch` once it is saved."""

    def __init__(
        self,
        session: Session,
        run: RunFolder,
        trackers: list[Tracker],
        notes: Notes,
        on_epoch: EpochCallback | None = None,
    ):
        self.session, self.run, self.trackers, self.notes = session, run, trackers, notes
        self.on_epoch = on_epoch
        self.recipe, self.model = session.recipe, session.model
        self.build = StageBuilder(session)
        self.average = WeightAverage(session.model, session.recipe.run.ema_decay)
        self.best = BestModel(session.recipe.run.monitor)
        self.checkpoints = Checkpoints(session, run)
        self.out_of_budget = False  # a stage ended because run.budget had no room for another epoch

    def run_stage(self, index: int, started: float, resume: ResumeState | None = None) -> None:
        """Every epoch of stage `index`; with `resume`, continue inside it where last.pt left it."""
        stage, plan = self.recipe.stages[index], self.session.plans[index]
        plan.apply(self.model)
        path = self.build.path(index, plan)
        optimizer = build_optimizer(self.model, stage)
        schedule = Schedule(optimizer, stage, self.build.steps_per_epoch(path))
        stopping = EarlyStopping(stage, self.recipe.run.monitor, resume.early_stop if resume else None)
        note = describe_stage(stage, path, self.model)
        if resume is not None:
            # Same optimizer moments, schedule position, random streams and patience as when it stopped.
            load_optimizer_state(optimizer, self.model, resume.optimizer)
            schedule.load_state_dict(resume.schedule)
            set_rng_state(resume.rng)
            log.info("%s", note)
        else:
            self.notes.add(note)
        loop = self.build.loop(stage, path, optimizer, schedule, self.average.ema)
        for epoch in range(resume.epoch + 1 if resume else 1, stage.epoch_budget + 1):
            row = self.run_epoch(stage, epoch, path, loop)
            ends = stopping.after_epoch(row, epoch) or self.out_of_time(row)
            if ends:
                row["stop"] = ends
            self.record_epoch(index, row, loop, stopping, started)
            if ends:
                break
        self.checkpoints.flush()  # the stage's last epoch, whether it stopped early or ran its count

    def out_of_time(self, row: dict[str, Any]) -> str | None:
        """Why the stage ends when another epoch like this one would pass run.budget (its last 5 % is for scoring)."""
        if self.session.deadline is None:
            return None
        left = self.session.deadline - time.perf_counter() - 0.05 * parse_duration(str(self.recipe.run.budget))
        if left >= 1.1 * row["seconds"]:
            return None
        self.out_of_budget = True  # the next stage does not start either
        return f"budget: {max(left, 0):.0f}s of run.budget {self.recipe.run.budget} left, less than an epoch"

    def budget_spent(self) -> bool:
        return self.out_of_budget or (self.session.deadline is not None and time.perf_counter() > self.session.deadline)

    def run_epoch(self, stage: Stage, epoch: int, path: StagePath, loop: Loop[Schedule]) -> dict[str, Any]:
        tic, lr, total = time.perf_counter(), loop.schedule.lr, stage.epoch_budget
        batches = progress(path.train_batches(epoch), f"{stage.name} {epoch}/{total}", path.batches_per_epoch, "batch")
        path.set_train_mode()
        first_step = (epoch - 1) * self.build.steps_per_epoch(path)
        where = f"stage '{stage.name}', epoch {epoch}"
        train_loss, train_acc = loop.epoch(batches, path.batches_per_epoch, first_step, where)
        # Evaluation runs eagerly on the plain module: a compiled eval graph would cost a second compile for one pass.
        s = self.session
        with self.average.scoring():
            kind = self.recipe.run.multi_label_loss
            val = score_batches(path.module, path.val_batches(), s.task, s.hw, s.group, len(s.classes), kind)
        row = {
            "stage": stage.name,
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            **{f"val_{name}": val[name] for name in s.task.metrics},
            "lr": lr,
            "seconds": time.perf_counter() - tic,
            "path": path.name,
            "trainable_params": count_parameters(self.model)[0],
        }
        budget = total if stage.epochs != "auto" else f"auto<={total}"
        scores = " - ".join(f"val_{name}: {val[name]:.4f}" for name in s.task.metrics)
        log.info(
            "[%s] epoch %d/%s - %.1fs - loss: %.4f - acc: %.4f - %s - lr: %.3g",
            *(stage.name, epoch, budget, row["seconds"], train_loss, train_acc, scores, lr),
        )
        # A multi-label model's chance level is per tag: ln 2.
        chance_classes = len(s.classes) if s.task.name == "single-label" else 2
        self.notes.check_divergence(stage, epoch, max(train_loss, val["loss"]), lr, chance_classes)
        return row

    def record_epoch(
        self, index: int, row: dict[str, Any], loop: Loop[Schedule], stopping: EarlyStopping, started: float
    ):
        """History row, trackers, best.pt when it improved, and last.pt with what --resume needs.

        Both are written now when the stage ends or WRITE_EVERY_S have passed, else with a later epoch
        (run_stages flushes them whatever stops the run; Checkpoints keeps copies meanwhile).
        """
        stage = self.recipe.stages[index]
        self.run.add_epoch(row)
        done = len(self.run.history)
        for tracker in self.trackers:
            tracker.log_epoch(done, row)
        checkpoint = self.checkpoints.of(stage, row, self.average)
        if self.best.offer(row, done, checkpoint.model):
            self.checkpoints.save_best(checkpoint)
        ends = "stop" in row
        if ends and stage.early_stop and self.best.epoch != done:
            self.best.restore(self.model, self.average)
            self.notes.add(
                f"stage '{stage.name}' {row['stop']}; restored the best weights so far (epoch {self.best.epoch})"
            )
            checkpoint = self.checkpoints.of(stage, row, self.average)  # last.pt holds what the next stage starts from
        resume = ResumeState(
            stage_index=index,
            epoch=row["epoch"],
            epochs_done=done,
            optimizer=optimizer_state(loop.optimizer, self.model),
            schedule=loop.schedule.state_dict(),
            rng=rng_state(),
            elapsed=time.perf_counter() - started,
            stage_finished=ends,
            early_stop=stopping.state_dict(),
            stage_notes=self.notes.lines,
        )
        self.checkpoints.save_last(checkpoint, resume, stage_ends=bool(ends))
        if self.on_epoch is not None:
            self.on_epoch(done, row)  # a callback that stops the run leaves it resumable: run_stages flushes


def describe_stage(stage: Stage, path: StagePath, model) -> str:
    """The stage's line in the log and summary.txt: what trains, how, for how long, and on which path."""
    trainable, frozen = count_parameters(model)
    epochs = f"up to {stage.max_epochs} epochs (auto)" if stage.epochs == "auto" else f"{stage.epochs} epoch(s)"
    early = f", early stop patience {stage.early_stop.patience}" if stage.early_stop else ""
    return (
        f"stage '{stage.name}': freeze {stage.freeze!r} (bn {stage.bn}), {trainable:,} trainable / {frozen:,} "
        f"frozen params, {stage.optimizer} lr {stage.lr:g} {stage.schedule}, {epochs}{early}, "
        f"path {path.name} ({path.reason})"
    )
