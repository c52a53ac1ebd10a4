"""run.budget: plan a run to fit a wall-clock budget, then run it (`headstart train DATA --budget 10m`).

Where two or more packaged backbones are installed (the [lite] extra), the data is single-label and
every backbone's default plan fits one after another, the run is an ensemble: the recipe trained
once per backbone, their calibrated probabilities averaged (headstart.experiments.budget_ensemble).

Otherwise one model is planned. The candidates are the installed packaged backbones
(tf_efficientnet_lite0; lite1/lite2 with the [lite] extra) times how deep fine-tuning goes: the
default's top:1 stage alone, or continued by a top:2 and then a top:3 stage (gradual unfreezing),
each starting from the best weights so far and keeping its best epoch, so a deeper plan is the
shallower one continued and its monitored val score never worse. (Fine-tuning top:2 or top:3 from
the head directly, at the default's learning rate, scored below top:1 on tiles: BENCHMARKS.md, "A
budget".) Each plan's cost is estimated from figures measured here on the plan's own model with
random inputs: one forward pass of the whole model per image (the one feature pass over every
image), and for each fine-tuning stage one training step (forward + backward) per image of the part
after its cut, on stored activations, times the stage's epoch cap. With several backbones, `probe`
trains each one's cached head first (its time counts against the budget) and ranks them by val
score. The plan run is the best probed backbone's deepest plan whose estimate fits what is left;
the trainer ends a stage whose next epoch would not fit and skips the stages after it (run.budget
is its deadline).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from headstart.config.duration import format_duration, parse_duration
from headstart.config.recipe import Recipe
from headstart.core.errors import HeadstartError
from headstart.core.hardware import Hardware, pick_hardware
from headstart.data.layouts import list_images
from headstart.data.splits import SINGLE
from headstart.experiments.budget_ensemble import (
    add_to_summary,
    is_ensemble_run,
    resume_ensemble,
    spent_line,
    switched,
    train_ensemble,
)
from headstart.model.build import build_model, resolve_preprocessing
from headstart.model.cut import find_cut
from headstart.model.freeze import plan_freeze
from headstart.model.weights import installed_packaged_backbones
from headstart.training.precision import seconds_per_image

log = logging.getLogger("headstart")

DEPTHS = (1, 2, 3)
BATCH = 8
# Start-up, the precision measurement, calibration, the test score and the unknown-image fit: measured
# at 5-10 % of a default run on the dev sets; planned as this share of the budget.
OVERHEAD = 0.15


@dataclass
class Plan:
    backbone: str
    depth: int
    seconds: float  # estimated wall time
    score: float | None = None  # the backbone's probed val score, where several were probed
    members: tuple[str, ...] = ()  # an ensemble: one run per backbone (top:1 each), their models averaged
    parts: tuple[float, ...] = ()  # the members' estimated seconds

    def describe(self) -> str:
        if self.members:
            names = ", ".join(member.removeprefix("tf_efficientnet_") for member in self.members)
            return f"ensemble of {names}, top:1 fine-tuning each (~{format_duration(self.seconds)})"
        score = "" if self.score is None else f", probe val {self.score:.4f}"
        depth = {0: "head only", 1: "top:1 fine-tuning"}.get(self.depth, f"top:1..top:{self.depth} fine-tuning")
        return f"{self.backbone} {depth} (~{format_duration(self.seconds)}{score})"


def timed(step, repeats: int = 2) -> float:
    """Seconds per image of `step` on a batch: the fastest of `repeats` after a warm-up (other processes only slow it)."""
    step()  # warm-up: kernel selection and allocation are not the steady state
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        step()
        times.append(time.perf_counter() - tic)
    return min(times) / BATCH


def plan_model(recipe: Recipe, backbone: str, classes: int, hw: Hardware):
    """(the backbone's model with random weights on the device, its input size): speed needs no weights."""
    plan = Recipe.from_dict(switched(recipe, backbone), source="budget plan")
    config = plan.model.model_copy(update={"weights": "none"})
    size = resolve_preprocessing(plan.data, config)["image_size"]
    return build_model(config, classes, size).to(hw.device), size


def forward_cost(model, size: int, hw: Hardware) -> float:
    """Seconds per image of one forward pass of the whole model: the feature pass's rate, timed as the precision choice times it."""
    with torch.no_grad():
        return seconds_per_image(model, hw, size)


def step_cost(model, size: int, depth: int, hw: Hardware) -> float | None:
    """Seconds per image of a training step of top:depth on stored activations; None where the backbone has no such cut."""
    try:
        cut = find_cut(model, plan_freeze(model, f"top:{depth}", "frozen"), size)
    except HeadstartError:  # fewer stages than depth
        return None
    if cut is None:
        return None
    with torch.no_grad(), hw.autocast():
        stored = cut.prefix(hw.to_input(torch.randn(BATCH, 3, size, size))).float()
    model.train()

    def step() -> None:
        with hw.autocast():
            loss = cut.suffix(stored).float().square().mean()
        loss.backward()

    return timed(step)


def stage_seconds(recipe: Recipe, counts: dict[str, int], step: float) -> float:
    """Seconds for one fine-tuning stage at its epoch cap (val each epoch at ~1/3 a step)."""
    finetune = recipe.stages[-1]
    epochs = finetune.max_epochs if finetune.epochs == "auto" else int(finetune.epochs)
    return epochs * (counts["train"] * step + counts["val"] * step / 3)


def with_plan(recipe: Recipe, plan: Plan, seconds_left: float) -> Recipe:
    """The plan as a recipe whose run.budget is the time left for training (the saved recipe says what ran)."""
    values = switched(recipe, plan.backbone)
    if plan.depth:
        finetune = values["stages"][-1]
        finetune["freeze"] = "top:1"
        for depth in range(2, plan.depth + 1):
            values["stages"].append({**finetune, "name": f"{finetune['name']}-top{depth}", "freeze": f"top:{depth}"})
    else:
        values["stages"] = values["stages"][:1]
    values["run"]["budget"] = f"{max(seconds_left, 1):.0f}s"
    return Recipe.from_dict(values, source="budget plan")


def candidate_backbones(recipe: Recipe) -> list[str]:
    """The installed packaged backbones when the recipe uses one of them (its own first), else the recipe's alone."""
    installed = installed_packaged_backbones()
    if recipe.model.backbone not in installed:
        return [recipe.model.backbone]
    return [recipe.model.backbone] + [b for b in installed if b != recipe.model.backbone]


def probe_scores(recipe: Recipe, backbones: list[str], quiet: bool) -> dict[str, float]:
    """Backbone -> val accuracy of its cached head on the recipe's own splits (probe), best first.

    Ties, common on a small val split, go to the lower val loss. The probe's folder is named after the
    recipe's digest: the same budgeted command again reuses its finished probe, another recipe gets its own.
    """
    from headstart.experiments.probe import probe

    base = recipe.model_copy(update={"run": recipe.run.model_copy(update={"budget": None})})
    digest = hashlib.sha1(json.dumps(base.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = f"probe-{base.run.name or Path(str(base.data.path)).stem}-{digest}"
    found = probe(str(base.data.path), backbones, seeds=1, out=base.run.out_dir, name=name, recipe=base, quiet=quiet)
    mean = statistics.mean
    rows = sorted(found.rows, key=lambda row: (-mean(row["val acc"]), mean(row["val loss"])))
    return {row["backbone"]: mean(row["val acc"]) for row in rows}


def costed_plans(recipe: Recipe, backbone: str, counts: dict[str, int], classes: int, budget: float) -> list[Plan]:
    """The backbone's plans, deepest first: fine-tuning top:1, then top:2, then top:3, then the head stage alone.

    A plan of depth d fine-tunes in d stages, one block deeper each, every one starting from the best
    weights so far and keeping its best epoch: a deeper plan is the shallower one continued, so its
    monitored val score is never worse. Depths are measured shallow to deep and stop at the first
    whose estimate passes the budget: a deeper one costs more still.
    """
    hw = pick_hardware(recipe.run.device, recipe.run.precision, recipe.run.channels_last is not False)
    model, size = plan_model(recipe, backbone, classes, hw)
    seconds = forward_cost(model, size, hw) * sum(counts.values())  # the one feature pass over every image
    plans = [Plan(backbone, 0, seconds / (1 - OVERHEAD))]
    for depth in DEPTHS:
        step = step_cost(model, size, depth, hw)
        if step is None:
            break
        seconds += stage_seconds(recipe, counts, step)
        plans.append(Plan(backbone, depth, seconds / (1 - OVERHEAD)))
        if plans[-1].seconds > budget:
            break
    return plans[::-1]


def ensemble_plan(costed: dict[str, list[Plan]], counts: dict[str, int]) -> Plan | None:
    """Every backbone's top:1 plan one after another, then their averaged model scored on val and test; None with one."""
    members = {b: plan for b, plans in costed.items() for plan in plans if plan.depth == 1}
    if len(members) < 2:
        return None
    scored = (counts["val"] + counts["test"]) / max(sum(counts.values()), 1)  # the share of a pass scoring takes
    scoring = scored * sum(plans[-1].seconds for plans in costed.values())
    parts = tuple(plan.seconds for plan in members.values())
    return Plan(next(iter(members)), 1, sum(parts) + scoring, members=tuple(members), parts=parts)


def ranked_plans(
    recipe: Recipe, costed: dict[str, list[Plan]], left: float, val_images: int, quiet: bool
) -> list[Plan]:
    """Every plan, the best probed backbone's first; with one backbone, or no time to probe, the recipe's alone.

    Probing trains each backbone's cached head (about its head-only plan's time); it runs only where the
    budget covers it and then still the dearest head-only plan, so whichever backbone wins can be trained.
    """
    if len(costed) == 1:
        return next(iter(costed.values()))
    probe_cost = sum(plans[-1].seconds for plans in costed.values())
    if probe_cost + max(plans[-1].seconds for plans in costed.values()) > left:
        log.info(
            "budget: not probing %s (~%s of the %s left): the recipe's %s is planned",
            ", ".join(costed),
            format_duration(probe_cost),
            format_duration(left),
            recipe.model.backbone,
        )
        return costed[recipe.model.backbone]
    scores = probe_scores(recipe, list(costed), quiet)
    ranked = []
    for backbone in trusted_order(scores, recipe.model.backbone, val_images):
        ranked += [Plan(p.backbone, p.depth, p.seconds, scores[backbone]) for p in costed[backbone]]
    return ranked


def trusted_order(scores: dict[str, float], own: str, val_images: int) -> list[str]:
    """The probed backbones best first, but the recipe's own first unless another beats it by more than noise.

    Noise is one standard error of the own backbone's val accuracy, sqrt(p(1-p)/n): on a val split
    of 120 images one image is 0.008, and a backbone ahead by that is ahead by chance as often as
    not (textures, seed 0: lite2's head 0.900 against lite0's 0.892 on val; its run 0.891 against
    the default's 0.914 on test).
    """
    best, own_score = next(iter(scores)), scores.get(own)
    if own_score is None or best == own:
        return list(scores)
    noise = math.sqrt(own_score * (1 - own_score) / max(val_images, 1))
    if scores[best] - own_score > noise:
        return list(scores)
    log.info(
        "budget: %s's probe val %.4f is within noise (%.4f) of %s's %.4f: %s is kept",
        *(best, scores[best], noise, own, own_score, own),
    )
    return [own] + [backbone for backbone in scores if backbone != own]


def check_budgeted(recipe: Recipe) -> None:
    stages = recipe.stages
    if len(stages) != 2 or stages[0].freeze != "backbone":
        raise HeadstartError(
            "--budget plans the default recipe's two stages (a cached head, then fine-tuning); "
            f"this recipe has {len(stages)} stage(s) ({', '.join(s.name for s in stages)}): drop --budget or the stages"
        )


def raise_too_small(recipe: Recipe, cheapest: Plan, spent: float) -> None:
    raise HeadstartError(
        f"--budget {recipe.run.budget}: the cheapest plan, {cheapest.describe()}, needs about "
        f"{format_duration(cheapest.seconds + spent)} here with planning ({format_duration(spent)}); give at least that"
    )


def plan_run(recipe: Recipe, quiet: bool = False) -> tuple[Recipe, Plan, list[Plan], float]:
    """(the recipe of the plan chosen, that plan, every plan considered, seconds spent planning)."""
    assert recipe.run.budget is not None
    budget = parse_duration(recipe.run.budget, "--budget")
    check_budgeted(recipe)
    started = time.perf_counter()
    split = list_images(recipe.data)
    counts = {"train": len(split.train), "val": len(split.val), "test": len(split.test)}
    costed = {b: costed_plans(recipe, b, counts, len(split.classes), budget) for b in candidate_backbones(recipe)}
    everything = [plan for plans in costed.values() for plan in plans]
    cheapest = min(everything, key=lambda plan: plan.seconds)
    if cheapest.seconds > budget - (time.perf_counter() - started):
        raise_too_small(recipe, cheapest, time.perf_counter() - started)
    # An ensemble averages single-label probabilities; a multi-label model's tags each have a threshold per run.
    ensemble = ensemble_plan(costed, counts) if split.task == SINGLE else None
    if ensemble is not None and ensemble.seconds <= budget - (time.perf_counter() - started):
        plans = [ensemble] + everything  # no probe: every backbone trains anyway
    else:
        plans = ranked_plans(recipe, costed, budget - (time.perf_counter() - started), counts["val"], quiet)
    spent = time.perf_counter() - started
    fitting = [plan for plan in plans if plan.seconds <= budget - spent]
    if not fitting:
        raise_too_small(recipe, min(plans, key=lambda plan: plan.seconds), spent)
    chosen = fitting[0]
    log.info(
        "budget %s: %s chosen; considered %s",
        recipe.run.budget,
        chosen.describe(),
        "; ".join(p.describe() for p in plans),
    )
    return with_plan(recipe, chosen, budget - spent), chosen, plans, spent


def choice_lines(chosen: Plan, plans: list[Plan]) -> tuple[str, ...]:
    return f"plan: {chosen.describe()}", "considered: " + "; ".join(plan.describe() for plan in plans)


def train_planned(recipe=None, *, quiet: bool = False, resume=None, on_epoch=None):
    """headstart.train: a recipe with run.budget is planned to fit it first; any other runs as given."""
    import os

    from headstart.config.defaults import as_recipe
    from headstart.training.session import ensure_console
    from headstart.training.train import train

    if resume is not None:  # the saved recipe (the plan, not re-planned), or the ensemble's members
        if is_ensemble_run(resume):
            ensure_console(quiet)
            return resume_ensemble(resume, quiet, on_epoch)
        return train(resume=resume, quiet=quiet, on_epoch=on_epoch)
    recipe = as_recipe(recipe)
    if recipe.run.budget is None:
        return train(recipe, quiet=quiet, on_epoch=on_epoch)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise HeadstartError("--budget plans on one process; under torchrun train the plan's recipe.yaml without it")
    ensure_console(quiet)
    started = time.perf_counter()
    planned, chosen, plans, spent = plan_run(recipe, quiet)
    choice = choice_lines(chosen, plans)
    if chosen.members:  # its summary gets these lines when it is scored, which a resume may do
        left = parse_duration(recipe.run.budget, "--budget") - spent
        return train_ensemble(recipe, chosen.members, chosen.parts, left, quiet, on_epoch, choice, spent)
    result = train(planned, quiet=quiet, on_epoch=on_epoch)
    add_to_summary(Path(result.run_dir), [spent_line(recipe.run.budget, time.perf_counter() - started, spent), *choice])
    return result
