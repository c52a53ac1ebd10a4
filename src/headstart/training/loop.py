"""The one training loop: a step and an epoch, with the hooks stages and the LR range test need.

`Loop.epoch` runs forward, loss, backward and optimizer steps over a stage's batches, with
gradient accumulation (one optimizer step per `accumulate` batches, each batch's loss weighted
by its share of the group, so k accumulated batches equal one k-times batch), Mixup/CutMix soft
targets (timm.data.Mixup; torch's cross entropy takes the soft targets as they are), a weight EMA
(timm's ModelEmaV3) updated after every optimizer step, fp16 loss scaling where fp16 is the
precision, and an `on_step` hook that sees every batch's loss and may end the epoch (lr_find's
divergence rule). Every process stops together on a non-finite loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.utils import ModelEmaV3
from torch import nn

from headstart.core.distributed import SOLO, Group
from headstart.core.errors import HeadstartError
from headstart.core.hardware import Hardware
from headstart.tasks.registry import Task
from headstart.tasks.single_label import SINGLE_LABEL

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
# (batch index in the epoch, its loss) -> True to end the epoch now.
StepHook = Callable[[int, float], bool]


class StepSchedule(Protocol):
    """What the loop asks of a schedule: optim.Schedule in stages, optim.Ramp in lr_find."""

    @property
    def lr(self) -> float: ...

    def after_step(self, step: int) -> None: ...


ScheduleT = TypeVar("ScheduleT", bound=StepSchedule)


class SoftTargets:
    """Mixup/CutMix of a batch with its soft targets; an odd-sized batch (Mixup pairs images) gets smoothed targets.

    Multi-label targets (rows of 0/1 per tag) are mixed as they are, smoothing moving each towards 0.5.
    """

    def __init__(self, mixup: float, cutmix: float, smoothing: float, classes: int, multi_label: bool = False):
        self.mix = Mixup(
            mixup_alpha=mixup,
            cutmix_alpha=cutmix,
            label_smoothing=smoothing,
            num_classes=classes,
            multi_label=multi_label,
        )
        self.smoothing, self.classes, self.multi_label = smoothing, classes, multi_label

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(labels) % 2:
            return inputs, mixup_target(labels, self.classes, smoothing=self.smoothing, multi_label=self.multi_label)
        return self.mix(inputs, labels)


@dataclass
class Loop(Generic[ScheduleT]):
    """What one stage steps: `module` (the trained part, maybe DDP-wrapped/compiled), its optimizer and schedule."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: ScheduleT
    criterion: nn.Module
    hw: Hardware
    task: Task = SINGLE_LABEL
    group: Group = SOLO
    accumulate: int = 1
    soft_targets: SoftTargets | None = None
    ema: ModelEmaV3 | None = None
    ema_of: nn.Module | None = None  # the whole model the EMA follows (the trained module may be a part of it)
    on_step: StepHook | None = None

    def __post_init__(self):
        self.scaler = torch.amp.GradScaler(self.hw.device.type) if self.hw.precision == "fp16" else None
        self.stopped = False

    def epoch(self, batches: Batches, count: int, first_step: int, where: str) -> tuple[float, float]:
        """One pass over `count` batches; returns mean loss and accuracy as seen in training, over all processes.

        Accuracy is the task's: the top class right, or (multi-label) every tag right at 0.5.

        Optimizer steps are numbered from `first_step` for the schedule.
        """
        total_loss, correct, seen = 0.0, 0, 0
        step = first_step
        self.optimizer.zero_grad(set_to_none=True)
        for index, (inputs, labels) in enumerate(batches):
            inputs, labels = self.hw.to_input(inputs), labels.to(self.hw.device, non_blocking=True)
            targets = labels
            if self.soft_targets is not None:
                inputs, targets = self.soft_targets(inputs, labels)
            with self.hw.autocast():
                logits = self.module(inputs)
                loss = self.criterion(logits.float(), targets)
            if self.on_step is not None and self.on_step(index, loss.item()):
                self.stopped = True
                break
            # Every process stops together, or the others would wait for this one forever.
            if self.group.any(not torch.isfinite(loss).item()):
                raise HeadstartError(
                    f"loss became {loss.item()} in {where}, step {index + 1}; {likely_cause(self.optimizer)}"
                )
            group_start = index - index % self.accumulate
            share = 1 / min(self.accumulate, count - group_start)  # the last group may be short
            self.backward(loss * share)
            if index + 1 == count or (index + 1) % self.accumulate == 0:
                step += 1
                self.optimizer_step(step)
            total_loss += loss.item() * len(labels)
            correct += self.task.correct(logits.detach(), labels)
            seen += len(labels)
        loss_sum, correct_sum, seen_sum = self.group.sum([total_loss, correct, seen])  # over all processes
        return loss_sum / max(seen_sum, 1), correct_sum / max(seen_sum, 1)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def optimizer_step(self, step: int) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.after_step(step)
        if self.ema is not None:
            self.ema.update(self.ema_of, step=step)  # step numbers the stage's warm-up


class TrainedPartEma(ModelEmaV3):
    """timm's ModelEmaV3, stepping only the tensors that can move: what trains, buffers, and what already differs.

    A frozen parameter never changes, so its average stays the copy the EMA started from; timm's own
    update interpolates every tensor of the model each step, which on a cached head stage (a few
    thousand trained weights beside 3.4 M frozen ones in Lite0) made the steps 12-26 % slower. A
    parameter an earlier stage trained (or a resumed EMA holds apart) differs from the model and is
    kept moving, so the average is timm's in every case.
    """

    _moving: list[str]
    _moving_for: tuple[int, ...] | None = None  # the model and frozen set `_moving` was worked out for
    _pairs: tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]] | None

    def moving(self, model: nn.Module) -> list[str]:
        """The state names the EMA steps (and scoring swaps), worked out again whenever the frozen set changes."""
        key = (id(model), *(not p.requires_grad for p in model.parameters()))
        if self._moving_for != key:
            ema_state, model_state = self.module.state_dict(), model.state_dict()
            can_change = changing_names(model)
            self._moving = [
                name
                for name, value in model_state.items()
                if name in ema_state and (name in can_change or not torch.equal(ema_state[name], value))
            ]
            self._moving_for, self._pairs = key, None
        return self._moving

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Averaged weights from a checkpoint; what moves is worked out again, as they may differ where they did not."""
        self.module.load_state_dict(state)
        self._moving_for = None

    def apply_update_(self, model: nn.Module, decay: float) -> None:
        names = self.moving(model)
        if self._pairs is None:
            # state_dict() values share storage with the tensors (load_state_dict copies in place),
            # so these lists stay valid until the frozen set changes.
            ema_state, model_state = self.module.state_dict(), model.state_dict()
            floats = [n for n in names if ema_state[n].is_floating_point()]
            exact = [(ema_state[n], model_state[n]) for n in names if not ema_state[n].is_floating_point()]
            self._pairs = [ema_state[n] for n in floats], [model_state[n] for n in floats], exact
        averaged, current, exact = self._pairs
        for ema_v, model_v in exact:
            ema_v.copy_(model_v)
        self._foreach_lerp_(averaged, current, weight=1.0 - decay)


def changing_names(model: nn.Module) -> set[str]:
    """What training can change: the parameters that require grad, and every buffer (BatchNorm statistics)."""
    return {name for name, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}


def weight_average(model: nn.Module, decay: float | None) -> TrainedPartEma | None:
    """timm's weight EMA with warm-up (decay 1 - (1 + step)^-2/3 until it reaches `decay`); None when off.

    Fine-tuning runs here take hundreds of optimizer steps, not timm's hundreds of thousands: a fixed
    0.999 would still be mostly the initial (random) head at the end of a short stage.
    """
    return TrainedPartEma(model, decay=decay, use_warmup=True) if decay else None


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
