"""The learning-rate range test (Smith 2015, fastai's lr_find): raise the LR exponentially, one step per batch, watch the loss.

    headstart lr-find RECIPE|DATA [--stage finetune] [--from RUN_DIR]

It trains the named stage exactly as `train` would (same freeze, BatchNorm mode, optimizer, param
groups and their ratios, cached features where the stage qualifies) from the model as built, or
from a run's best weights with --from (say, after the head stage). The loss is smoothed with an
exponential average (bias-corrected, its lag about a tenth of the steps); the test stops when it climbs past four times its minimum. Two suggestions:
'steepest' (where the smoothed loss falls fastest), printed as the suggestion, and 'minimum/10'
(a tenth of the LR at the lowest loss, the classic rule). On hymenoptera's head stage the
classic rule said 0.129 and training with it ended at val loss 1.03; the steepest point said
0.004 and gave 0.156 (BENCHMARKS.md), so the steepest point is the one suggested.

Writes OUT/lr_find.csv (lr, loss, smoothed) and OUT/lr_find.png.

Example:
    >>> found = headstart.lr_find("recipes/003_two_stage_offline.yaml", stage="finetune")
    >>> found.suggestion
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from headstart.errors import HeadstartError
from headstart.recipe import Recipe

log = logging.getLogger("headstart")


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float  # the steepest descent
    minimum_tenth: float
    folder: Path


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, float]:
    """(LR at the smoothed minimum / 10, LR where the smoothed loss falls fastest before that minimum)."""
    lowest = int(np.argmin(smoothed))
    if lowest < 2:
        return lrs[lowest] / 10, lrs[lowest]
    slopes = np.gradient(np.array(smoothed[: lowest + 1]), np.log(np.array(lrs[: lowest + 1])))
    return lrs[lowest] / 10, lrs[int(np.argmin(slopes))]


def lr_find(
    recipe: Recipe | str | Path | dict | None = None,
    *,
    stage: str | None = None,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    weights_from: str | Path | None = None,
    out: str | Path | None = None,
    quiet: bool = False,
) -> LRFindResult:
    from headstart.data import prepare_data
    from headstart.freeze import plan_freeze
    from headstart.hardware import pick_hardware
    from headstart.model import build_model, resolve_preprocessing
    from headstart.plots import plot_lr_find
    from headstart.runs import RunFolder, atomic_write, load_checkpoint
    from headstart.train import _Trainer, as_recipe, build_optimizer, ensure_console, resolve, seed_everything

    ensure_console(quiet)
    if not 0 < start_lr < end_lr:
        raise HeadstartError(f"the LR range {start_lr:g}..{end_lr:g} must rise from a positive start")
    if steps < 5:
        raise HeadstartError(f"--steps {steps}: the range test needs at least 5 steps")
    recipe = resolve(as_recipe(recipe))
    names = [s.name for s in recipe.stages]
    chosen = recipe.stages[0] if stage is None else next((s for s in recipe.stages if s.name == stage), None)
    if chosen is None:
        raise HeadstartError(f"no stage named '{stage}'; stages: {', '.join(names)}")
    index = names.index(chosen.name)
    seed_everything(recipe.run.seed)
    hw = pick_hardware(recipe.run.device, recipe.run.precision, recipe.run.channels_last)
    preprocessing = resolve_preprocessing(recipe.data, recipe.model)
    data = prepare_data(recipe.data, preprocessing)
    model = build_model(recipe.model, len(data.split.classes), preprocessing["image_size"])
    if weights_from is not None:
        checkpoint = load_checkpoint(weights_from)
        if checkpoint["classes"] != data.split.classes:
            raise HeadstartError(
                f"--from {weights_from}: its classes {checkpoint['classes']} differ from the data's {data.split.classes}"
            )
        model.load_state_dict(checkpoint["model"])
    plan = plan_freeze(model, chosen.freeze, chosen.bn)
    model.to(hw.device)
    if hw.channels_last:
        model.to(memory_format=torch.channels_last)
    folder = RunFolder.create(
        out or recipe.run.out_dir, f"lr-find-{recipe.run.name or data.split.name}-{chosen.name}"
    ).path

    plan.apply(model)
    # The stage's batches reach the model exactly as in train: cached features where the stage qualifies.
    path = _Trainer(recipe, model, data, hw, RunFolder(folder, writes=False), quiet).stage_path(index, plan)
    optimizer = build_optimizer(model, chosen)
    ratios = [group["lr"] / chosen.lr for group in optimizer.param_groups]
    criterion = nn.CrossEntropyLoss(label_smoothing=chosen.label_smoothing)
    log.info("lr-find: stage '%s', path %s, %d steps from %g to %g", chosen.name, path.name, steps, start_lr, end_lr)

    batches = itertools.chain.from_iterable(path.train_batches(epoch) for epoch in itertools.count(1))
    lrs, losses, smoothed, average = [], [], [], 0.0
    # fastai's fixed 0.98 lags about 50 steps behind, half of a 100-step test; this keeps the lag near a tenth.
    beta = min(0.98, max(0.8, 1 - 10 / steps))
    path.set_train_mode()
    for step, (inputs, labels) in zip(range(steps), batches):
        lr = start_lr * (end_lr / start_lr) ** (step / (steps - 1))
        for group, ratio in zip(optimizer.param_groups, ratios):
            group["lr"] = lr * ratio
        inputs, labels = hw.to_input(inputs), labels.to(hw.device)
        with hw.autocast():
            loss = criterion(path.module(inputs).float(), labels)
        value = loss.item()
        if not math.isfinite(value):
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        average = beta * average + (1 - beta) * value
        lrs.append(lr)
        losses.append(value)
        smoothed.append(average / (1 - beta ** (step + 1)))  # bias-corrected, as fastai does
        if step > 5 and smoothed[-1] > 4 * min(smoothed):
            break
    if len(lrs) < 3:
        raise HeadstartError(f"the loss diverged within {len(lrs)} steps from {start_lr:g}: start lower (--start-lr)")
    minimum_tenth, steepest = suggest(lrs, smoothed)
    rows = "lr,loss,smoothed\n" + "".join(f"{a:.6g},{b:.6g},{c:.6g}\n" for a, b, c in zip(lrs, losses, smoothed))
    atomic_write(folder / "lr_find.csv", rows.encode())
    plot_lr_find(
        lrs,
        losses,
        smoothed,
        steepest,
        minimum_tenth,
        folder / "lr_find.png",
        title=f"stage '{chosen.name}' ({path.name})",
    )
    log.info(
        "lr-find: suggested lr %.3g for stage '%s' (steepest descent; minimum/10 is %.3g); try --lr %s=%.3g; plot in %s",
        steepest,
        chosen.name,
        minimum_tenth,
        chosen.name,
        steepest,
        folder / "lr_find.png",
    )
    return LRFindResult(lrs, losses, smoothed, steepest, minimum_tenth, folder)
