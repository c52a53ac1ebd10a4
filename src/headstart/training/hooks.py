"""The trainer's hooks: small objects that each own one concern's state across epochs and stages.

    EarlyStopping   per stage: epochs without a min_delta improvement of run.monitor, and why a stage ends
    WeightAverage   the weight EMA (timm's ModelEmaV3) that scoring and best.pt use when it is on
    BestModel       the best epoch so far by run.monitor: its row, its number and its weights
    Checkpoints     what best.pt and last.pt hold for an epoch, written into the run folder
    Notes           the lines summary.txt gathers (stage plans, restores, divergence warnings, calibration)

Each one that a resumed run needs back has `state_dict()` / `load_state_dict()`; the trainer puts
their states into last.pt's ResumeState and hands them back on resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from headstart.config.recipe import Stage
from headstart.core.checkpoint import Checkpoint, ResumeState, load_checkpoint
from headstart.core.runs import BEST_FILE, LAST_FILE, RunFolder
from headstart.tasks.metrics import best_index, improved
from headstart.training.loop import divergence, weight_average
from headstart.training.resume import copied
from headstart.training.session import Session

log = logging.getLogger("headstart")


class EarlyStopping:
    """The stage's best monitored value so far and the epochs since it was beaten by min_delta; why the stage ends."""

    def __init__(self, stage: Stage, monitor: str, state: dict[str, Any] | None = None):
        self.stage, self.monitor = stage, monitor
        self.best: float | None = None
        self.stale = 0
        self.load_state_dict(state or {})

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.stale = state.get("best"), state.get("stale", 0)

    def after_epoch(self, row: dict[str, Any], epoch: int) -> str | None:
        """Count this epoch; the reason the stage ends after it, or None when it goes on."""
        value, rule = row[self.monitor], self.stage.early_stop
        min_delta = rule.min_delta if rule else 0.0
        lower_is_better = self.monitor == "val_loss"
        better = self.best is None or (
            value < self.best - min_delta if lower_is_better else value > self.best + min_delta
        )
        self.best, self.stale = (value, 0) if better else (self.best, self.stale + 1)
        if rule and self.stale >= rule.patience:
            return f"early stop: {self.monitor} did not improve for {plural(self.stale, 'epoch')}"
        if epoch == self.stage.epoch_budget:
            return (
                "reached the cap of max_epochs" if self.stage.epochs == "auto" else f"ran its {plural(epoch, 'epoch')}"
            )
        return None


class WeightAverage:
    """timm's weight EMA of the model when run.ema_decay is set; the weights scored and saved as best then."""

    def __init__(self, model: nn.Module, decay: float | None):
        self.model = model
        self.ema = weight_average(model, decay)

    def scored_state(self) -> dict[str, torch.Tensor]:
        """A copy of the weights validation scores and best.pt holds: the EMA's when there is one, else the model's."""
        source = self.ema.module if self.ema is not None else self.model
        return {k: v.detach().clone() for k, v in source.state_dict().items()}

    def trained_state(self) -> dict[str, torch.Tensor] | None:
        """With an EMA, a copy of the trained weights (what training continues from); None without one."""
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()} if self.ema is not None else None

    @contextlib.contextmanager
    def scoring(self) -> Iterator[None]:
        """The model holds the EMA's weights inside the block (so cached and full paths score them alike)."""
        if self.ema is None:
            yield
            return
        # Only what training changes differs between the two (frozen weights are equal): swap just that.
        state, averaged = self.model.state_dict(), self.ema.module.state_dict()
        names = self.ema.moving(self.model)
        raw = {name: state[name].clone() for name in names}
        with torch.no_grad():
            for name in names:
                state[name].copy_(averaged[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name in names:
                    state[name].copy_(raw[name])

    def load(self, state: dict[str, torch.Tensor]) -> None:
        if self.ema is not None:
            self.ema.load(state)


class BestModel:
    """The best epoch so far by run.monitor: its history row, its number (over all stages) and its weights.

    The weights are kept on every process, for restoring at the end of an early-stopped stage and
    for scoring the test split.
    """

    def __init__(self, monitor: str):
        self.monitor = monitor
        self.row: dict[str, Any] = {}
        self.epoch = 0
        self.state: dict[str, torch.Tensor] | None = None

    def offer(self, row: dict[str, Any], epoch: int, state: dict[str, torch.Tensor]) -> bool:
        """Keep this epoch if it improved on the best; whether it did."""
        if not improved(row, self.row, self.monitor):
            return False
        self.row, self.epoch, self.state = row, epoch, state
        return True

    def restore(self, model: nn.Module, average: WeightAverage) -> None:
        """Model (and EMA) back to the best weights so far: what an early-stopped stage ends at."""
        if self.state is not None:
            model.load_state_dict(self.state)
            average.load(self.state)

    def reload(self, run: RunFolder) -> None:
        """The best so far of an interrupted run, from its history and best.pt."""
        if run.history:
            self.epoch = best_index(run.history, self.monitor) + 1
            self.row = run.history[self.epoch - 1]
            if (run.path / BEST_FILE).is_file():
                self.state = load_checkpoint(run.path / BEST_FILE).model


# Inside a stage, best.pt and last.pt are written at most this often (and always when the stage ends or
# the run stops): on stored features an epoch takes milliseconds, while one write of last.pt (22 MB for
# Lite0 with the optimizer's moments, fsynced) took 40-95 ms here; a default run wrote some 30 of them.
WRITE_EVERY_S = 5.0


class Checkpoints:
    """Builds the epoch's Checkpoint (the scored weights and what predicting it needs) and writes best.pt / last.pt.

    Writes wait (up to WRITE_EVERY_S) until `flush`: a checkpoint given here must not share tensors
    with the model or optimizer that training goes on changing.
    """

    def __init__(self, session: Session, run: RunFolder):
        self.session, self.run = session, run
        self.pending: dict[str, Checkpoint] = {}
        self.written = time.perf_counter()

    def due(self) -> bool:
        """Whether the epoch just finished should be written now rather than with a later one."""
        return time.perf_counter() - self.written >= WRITE_EVERY_S

    def of(self, stage: Stage, row: dict[str, Any], average: WeightAverage) -> Checkpoint:
        data = self.session.data
        return Checkpoint(
            model=average.scored_state(),
            raw_model=average.trained_state(),  # with an EMA, what training continues from
            recipe=self.session.recipe.to_dict(),
            classes=data.split.classes,
            preprocessing={k: list(v) if isinstance(v, tuple) else v for k, v in data.preprocessing.items()},
            stage=stage.name,
            epoch=row["epoch"],
            val_loss=row["val_loss"],
            val_acc=row["val_acc"],
            task=data.split.task,
        )

    def save_best(self, checkpoint: Checkpoint) -> None:
        self.pending[BEST_FILE] = checkpoint

    def save_last(self, checkpoint: Checkpoint, resume: ResumeState, stage_ends: bool) -> None:
        """last.pt: the checkpoint with where to continue; written now when the stage ends or a write is
        due, else by a later flush, holding copies of the optimizer's and schedule's state meanwhile."""
        now = stage_ends or self.due()
        checkpoint.resume = resume if now else kept(resume)
        self.pending[LAST_FILE] = checkpoint
        if now:
            self.flush()

    def flush(self) -> None:
        """Write what waits: best.pt first, so a last.pt on disk never runs ahead of the best.pt beside it."""
        for name in (BEST_FILE, LAST_FILE):
            checkpoint = self.pending.pop(name, None)
            if checkpoint is not None:
                self.run.save_checkpoint(name, checkpoint)
        self.written = time.perf_counter()


def kept(resume: ResumeState) -> ResumeState:
    """`resume` with its own copy of every state that training goes on changing in place."""
    return dataclasses.replace(
        resume,
        optimizer=copied(resume.optimizer),
        schedule=copied(resume.schedule),
        stage_notes=list(resume.stage_notes),
    )


class Notes:
    """The lines summary.txt gathers, and the divergence warning (once per stage: later epochs say the same)."""

    def __init__(self, lines: list[str] | None = None):
        self.lines = list(lines or [])
        self.diverged: set[str] = set()

    def add(self, line: str, warning: bool = False) -> None:
        (log.warning if warning else log.info)("%s", line)
        self.lines.append(line)

    def check_divergence(self, stage: Stage, epoch: int, loss: float, lr: float, n_classes: int) -> None:
        why = divergence(loss, n_classes)
        if why is None or stage.name in self.diverged:
            return
        self.diverged.add(stage.name)
        self.add(f"warning: stage '{stage.name}', epoch {epoch}: {why}; lower the learning rate ({lr:.3g})", True)


def plural(count: int, noun: str) -> str:
    """'1 epoch', '3 epochs'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
