"""Parameter groups, the optimizer and the per-step learning-rate schedule of a stage.

Optimizers and schedules are timm's and torch's; this module only maps the recipe's names onto
them. To add an optimizer: one entry in OPTIMIZERS (any name timm.optim.create_optimizer_v2
knows) and the name in recipe.Stage.optimizer's Literal (tests pin that the two agree).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.optim import create_optimizer_v2, param_groups_layer_decay
from timm.scheduler import create_scheduler_v2

from headstart.config.recipe import Stage
from headstart.core.errors import HeadstartError
from headstart.model.build import Classifier

# Recipe optimizer names -> timm's optimizer factory names. Our 'sgd' is plain momentum SGD, as in Keras.
OPTIMIZERS = {"sgd": "momentum", "nesterov": "nesterov", "adam": "adam", "adamw": "adamw"}


def lr_scales(model: Classifier, stage: Stage) -> dict[str, float]:
    """Per-parameter LR multipliers of the stage's rule: timm's layer decay, or one multiplier for the body."""
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
    return scales


def param_groups(model: Classifier, stage: Stage) -> list[dict[str, Any]]:
    """Trainable parameters in groups with explicit lr and weight decay (none for biases and norms)."""
    scales = lr_scales(model, stage)
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
        groups, opt=OPTIMIZERS[stage.optimizer], lr=stage.lr, momentum=stage.momentum, weight_decay=stage.weight_decay
    )


class Schedule:
    """Per-step learning rate: constant, timm's cosine (with warmup), or torch's one-cycle.

    It spans the stage's epoch budget (its cap when epochs is 'auto'); an early stop cuts it short.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, stage: Stage, steps_per_epoch: int):
        self.kind = stage.schedule
        self.optimizer = optimizer
        epochs = stage.epoch_budget
        if self.kind == "cosine":
            self.scheduler, _ = create_scheduler_v2(
                optimizer,
                sched="cosine",
                num_epochs=epochs,
                warmup_epochs=stage.warmup_epochs,
                warmup_lr=stage.lr * 0.01,
                min_lr=0.0,
                step_on_epochs=False,
                updates_per_epoch=steps_per_epoch,
            )
        elif self.kind == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[g["lr"] for g in optimizer.param_groups],
                total_steps=max(epochs * steps_per_epoch, 1),
                pct_start=0.25,
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


class Ramp:
    """The LR range test's schedule: every group's LR rises exponentially from start to end over `steps`,
    keeping the ratios between groups the stage's rule set (lr_find runs the training loop with it)."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, start: float, end: float, steps: int):
        self.optimizer, self.start, self.end, self.steps = optimizer, start, end, steps
        self.ratios = [group["lr"] / base_lr for group in optimizer.param_groups]
        self.after_step(0)

    def lr_at(self, step: int) -> float:
        return self.start * (self.end / self.start) ** (step / (self.steps - 1))

    def after_step(self, step: int) -> None:
        lr = self.lr_at(min(step, self.steps - 1))
        for group, ratio in zip(self.optimizer.param_groups, self.ratios):
            group["lr"] = lr * ratio

    @property
    def lr(self) -> float:
        return max(group["lr"] for group in self.optimizer.param_groups)
