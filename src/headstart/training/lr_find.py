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

from headstart.config.defaults import as_recipe
from headstart.config.recipe import Recipe
from headstart.core.checkpoint import load_checkpoint
from headstart.core.errors import HeadstartError
from headstart.core.fileio import atomic_write
from headstart.core.plots import plot_lr_find
from headstart.core.runs import RunFolder
from headstart.training.optim import Ramp, build_optimizer
from headstart.training.session import Session, ensure_console, prepare, resolve
from headstart.training.stagepath import StageBuilder

log = logging.getLogger("headstart")


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None  # the steepest descent; None where it lies at the range's edge
    minimum_tenth: float
    folder: Path
    steepest: float = float("nan")  # the steepest descent, even at the edge
    warning: str | None = None  # why there is no suggestion, and what to try


def edge_warning(lrs: list[float], steepest: float, start_lr: float, end_lr: float) -> str | None:
    """Why `steepest` is no recommendation (it lies at the tested range's first or last steps), or None."""
    index = lrs.index(steepest)
    if 1 < index < len(lrs) - 2:
        return None
    where = "start" if index <= 1 else "end"
    if where == "start":
        hint = f"the loss fell fastest at the very first steps: start lower (--start-lr {start_lr / 100:g})"
    else:
        hint = f"the loss still fell fastest at the last steps: end higher (--end-lr {end_lr * 100:g})"
    return (
        f"no suggestion: the steepest descent ({steepest:.3g}) is at the {where} of the range {start_lr:g}..{end_lr:g}; "
        f"{hint}, or test from a trained run (--from RUN, say after the head stage)"
    )


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
    ensure_console(quiet)
    if not 0 < start_lr < end_lr:
        raise HeadstartError(f"the LR range {start_lr:g}..{end_lr:g} must rise from a positive start")
    if steps < 5:
        raise HeadstartError(f"--steps {steps}: the range test needs at least 5 steps")
    recipe = resolve(as_recipe(recipe))
    names = [s.name for s in recipe.stages]
    if stage is not None and stage not in names:
        raise HeadstartError(f"no stage named '{stage}'; stages: {', '.join(names)}")
    index = names.index(stage) if stage is not None else 0
    chosen = recipe.stages[index]
    session = prepare(recipe)
    if weights_from is not None:
        load_weights(session, weights_from)
    name = f"lr-find-{recipe.run.name or session.data.split.name}-{chosen.name}"
    folder = RunFolder.create(out or recipe.run.out_dir, name).path
    lrs, losses, smoothed, path_name = ramp(session, index, start_lr, end_lr, steps, quiet)
    if len(lrs) < 3:
        raise HeadstartError(f"the loss diverged within {len(lrs)} steps from {start_lr:g}: start lower (--start-lr)")
    minimum_tenth, steepest = suggest(lrs, smoothed)
    warning = edge_warning(lrs, steepest, start_lr, end_lr)
    rows = "lr,loss,smoothed\n" + "".join(f"{a:.6g},{b:.6g},{c:.6g}\n" for a, b, c in zip(lrs, losses, smoothed))
    atomic_write(folder / "lr_find.csv", rows.encode())
    plot_lr_find(
        lrs,
        losses,
        smoothed,
        steepest,
        minimum_tenth,
        folder / "lr_find.png",
        title=f"stage '{chosen.name}' ({path_name})",
        at_edge=warning is not None,
    )
    if warning:
        log.warning("lr-find: stage '%s': %s; plot in %s", chosen.name, warning, folder / "lr_find.png")
    else:
        log.info(
            "lr-find: suggested lr %.3g for stage '%s' (steepest descent; minimum/10 is %.3g); try --lr %s=%.3g; plot in %s",
            steepest,
            chosen.name,
            minimum_tenth,
            chosen.name,
            steepest,
            folder / "lr_find.png",
        )
    suggestion = None if warning else steepest
    return LRFindResult(lrs, losses, smoothed, suggestion, minimum_tenth, folder, steepest, warning)


def load_weights(session: Session, weights_from: str | Path) -> None:
    checkpoint = load_checkpoint(weights_from)
    if checkpoint.classes != session.classes:
        raise HeadstartError(
            f"--from {weights_from}: its classes {checkpoint.classes} differ from the data's {session.classes}"
        )
    session.model.load_state_dict(checkpoint.model)


def ramp(session: Session, index: int, start_lr: float, end_lr: float, steps: int, quiet: bool):
    """Train stage `index` on the one loop with the LR rising exponentially; (lrs, losses, smoothed, path name)."""
    stage, plan = session.recipe.stages[index], session.plans[index]
    plan.apply(session.model)
    # The stage's batches reach the model exactly as in train: cached features where the stage qualifies.
    build = StageBuilder(session, compiling=False)
    path = build.path(index, plan)
    optimizer = build_optimizer(session.model, stage)
    schedule = Ramp(optimizer, stage.lr, start_lr, end_lr, steps)
    log.info("lr-find: stage '%s', path %s, %d steps from %g to %g", stage.name, path.name, steps, start_lr, end_lr)
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    # fastai's fixed 0.98 lags about 50 steps behind, half of a 100-step test; this keeps the lag near a tenth.
    beta = min(0.98, max(0.8, 1 - 10 / steps))
    average = [0.0]

    def record(_index: int, loss: float) -> bool:
        """Keep this step's loss; end the test at a non-finite loss, after the last step, or at divergence."""
        if not math.isfinite(loss) or len(lrs) == steps:
            return True
        average[0] = beta * average[0] + (1 - beta) * loss
        lrs.append(schedule.lr_at(len(lrs)))
        losses.append(loss)
        smoothed.append(average[0] / (1 - beta ** len(lrs)))  # bias-corrected, as fastai does
        return len(lrs) > 6 and smoothed[-1] > 4 * min(smoothed)

    # One LR per batch (no accumulation): the test reads each batch's loss at its own LR.
    loop = build.loop(stage, path, optimizer, schedule, accumulate=1, on_step=record)
    for epoch in itertools.count(1):
        path.set_train_mode()
        loop.epoch(path.train_batches(epoch), path.batches_per_epoch, len(lrs), f"lr-find, stage '{stage.name}'")
        if loop.stopped:
            break
    return lrs, losses, smoothed, path.name
