"""run.budget's ensemble: the recipe trained once per installed backbone, their models' probabilities averaged.

Chosen by `--budget` where every installed packaged backbone's default plan fits (Lite0 alone, without
the [lite] extra, is never an ensemble). Measured on the five dev sets, three seeds (BENCHMARKS.md,
"A budget"): the mean of Lite0's, Lite1's and Lite2's calibrated probabilities, each fine-tuned by
the default recipe, scored +0.010 test accuracy over the default on average, where fine-tuning one
backbone deeper had gained +0.002 (seed 0).

    RUN/
      ensemble.json    the member runs: headstart.load / predict / serve / export read RUN as one model
      ensemble-plan.json  the members and their planned time; `train --resume RUN` finishes an interrupted one
      members/NAME/    one ordinary run folder per backbone (recipe, history, best.pt, summary)
      recipe.yaml      the recipe as given, with its budget
      summary.txt      each member's scores, the ensemble's val and test scores, the plan

Unknown images: each member's detector score over its own threshold, averaged, with a threshold
fitted on the ensemble's val split (headstart.deploy.ensemble); ensemble.json keeps it.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from headstart.config.duration import format_duration
from headstart.config.recipe import Recipe
from headstart.core.errors import Interrupted
from headstart.core.fileio import atomic_write
from headstart.core.hardware import Hardware, pick_hardware
from headstart.core.paths import user_path
from headstart.core.runs import LAST_FILE, RECIPE_FILE, SUMMARY_FILE, RunFolder
from headstart.data.layouts import list_images
from headstart.data.splits import DataSplit
from headstart.deploy.ensemble import ENSEMBLE_METHOD, ensemble_model, largest_input, write_ensemble_folder
from headstart.deploy.evaluation import Evaluation
from headstart.deploy.predictor import Predictor
from headstart.deploy.tags import TagEvaluation
from headstart.tasks.metrics import scores
from headstart.tasks.unknown import UnknownRule, threshold_for
from headstart.training.train import TrainResult, train

log = logging.getLogger("headstart")

MEMBERS_FOLDER = "members"
PLAN_FILE = "ensemble-plan.json"  # the members and their planned shares; once scored, the result too


def switched(recipe: Recipe, backbone: str) -> dict:
    """The recipe's values with `backbone`: another one gets its own pretrained weights (none for a random-init
    recipe), its default arguments and its own input size."""
    values = recipe.to_dict()
    if backbone != recipe.model.backbone:
        weights = "none" if recipe.model.weights == "none" else None
        values["model"].update(backbone=backbone, weights=weights, backbone_args={})
        values["data"]["image_size"] = None
    return values


def member_recipe(recipe: Recipe, backbone: str, folder: Path, seconds: float) -> Recipe:
    """The budget's recipe for one member: its backbone with its own weights and input size, in RUN/members/."""
    values = switched(recipe, backbone)
    values["run"].update(out_dir=str(folder / MEMBERS_FOLDER), name=backbone, budget=f"{max(seconds, 1):.0f}s")
    return Recipe.from_dict(values, source="budget plan")


def scored(evaluation: Evaluation | TagEvaluation, images: int) -> dict[str, float]:
    """loss (the mean negative log of the true class's averaged probability), acc, balanced_acc, f1."""
    assert isinstance(evaluation, Evaluation)  # an ensemble is single-label (headstart.deploy.ensemble)
    assert evaluation.probabilities is not None and evaluation.truth is not None
    true = evaluation.probabilities[np.arange(len(evaluation.truth)), evaluation.truth]
    loss = float(-np.log(np.clip(true, 1e-12, None)).mean())
    return {"images": images, "loss": loss, **scores(evaluation.confusion)}


def scoring_predictor(recipe: Recipe, members: list[Path]) -> tuple[Predictor, Hardware]:
    """The ensemble on the precision and layout its members trained and scored with (bf16 here), not load's fp32:
    its val and test scores are then measured as every run's are, and cost about what the plan estimated."""
    ensemble, checkpoints, _ = ensemble_model(members, scored=True)
    hw = pick_hardware(recipe.run.device, recipe.run.precision, recipe.run.channels_last is not False)
    ensemble.to(hw.device).to(memory_format=torch.channels_last if hw.channels_last else torch.contiguous_format)

    def forward(batch: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        with hw.autocast():
            output = ensemble(batch)
        return (output[0].float(), output[1].float()) if isinstance(output, tuple) else output.float()

    first = largest_input(checkpoints)
    # A rule that flags nothing, so that evaluating val returns the scores its threshold is fitted on.
    unknown = UnknownRule(math.inf, ENSEMBLE_METHOD) if ensemble.thresholds is not None else None
    return Predictor(forward, first.classes, first.preprocessing, hw.to_input, task=first.task, unknown=unknown), hw


def train_ensemble(
    recipe: Recipe,
    backbones: tuple[str, ...],
    estimates: tuple[float, ...],
    seconds: float,
    quiet: bool,
    on_epoch=None,
    choice: tuple[str, ...] = (),
    planning: float = 0.0,
) -> TrainResult:
    """Train `recipe` once per backbone within `seconds` (each member's share in proportion to its estimate); the ensemble run.

    `choice` (the budget's plan lines) and `planning` (seconds spent choosing) end the summary once the
    ensemble is scored, in this call or in the `train --resume` that finishes it.
    """
    split = list_images(recipe.data)
    folder = RunFolder.create(recipe.run.out_dir, recipe.run.name or f"{split.name}-ensemble")
    folder.write_text(RECIPE_FILE, recipe.to_yaml())
    # What `train --resume RUN` needs to finish an interrupted ensemble: the members, their planned shares,
    # and for the summary the plan chosen and the time spent so far.
    plan = {
        "members": list(backbones),
        "estimates": list(estimates),
        "seconds": seconds,
        "choice": list(choice),
        "planning": planning,
        "elapsed": planning,
        "sessions": 1,
    }
    save_plan(folder, plan)
    return members_then_ensemble(recipe, split, folder, plan, quiet, on_epoch)


def is_ensemble_run(run_dir: str | Path) -> bool:
    return (user_path(run_dir) / PLAN_FILE).is_file()


def resume_ensemble(run_dir: str | Path, quiet: bool, on_epoch=None) -> TrainResult:
    """An interrupted ensemble finished: members that finished are kept, an interrupted one resumes, the rest train."""
    folder = RunFolder(user_path(run_dir))
    plan = json.loads((folder.path / PLAN_FILE).read_text())
    if "result" in plan:
        log.info("%s finished all its members already; nothing to resume", folder.path)
        done = plan["result"]
        return TrainResult(folder.path, [done["row"]], done["classes"], done["test"], done["monitor"])
    log.info("resuming the ensemble in %s: %s", folder.path, ", ".join(plan["members"]))
    plan["sessions"] = plan.get("sessions", 1) + 1
    recipe = Recipe.from_yaml(folder.path / RECIPE_FILE)
    return members_then_ensemble(recipe, list_images(recipe.data), folder, plan, quiet, on_epoch)


def member_folder(folder: Path, backbone: str) -> Path:
    """Where member_recipe's run of `backbone` goes (out_dir RUN/members, named after the backbone)."""
    return folder / MEMBERS_FOLDER / backbone


def member_run(recipe: Recipe, backbone: str, folder: Path, share: float, quiet: bool, on_epoch) -> TrainResult:
    """One member trained, or resumed from its last epoch where an earlier run of the ensemble stopped."""
    earlier = member_folder(folder, backbone)
    if (earlier / LAST_FILE).is_file():
        return train(resume=earlier, quiet=quiet, on_epoch=on_epoch)  # a finished member returns at once
    if earlier.is_dir():  # stopped before its first epoch ended: it holds nothing to keep, and its name is the member's
        shutil.rmtree(earlier)
    return train(member_recipe(recipe, backbone, folder, share), quiet=quiet, on_epoch=on_epoch)


def members_then_ensemble(
    recipe: Recipe, split: DataSplit, folder: RunFolder, plan: dict, quiet: bool, on_epoch
) -> TrainResult:
    backbones, estimates = plan["members"], plan["estimates"]
    # Members with a checkpoint already spent their share (a resumed one keeps its own budget); the rest share theirs.
    started = [(member_folder(folder.path, b) / LAST_FILE).is_file() for b in backbones]
    left_share = sum(e for e, s in zip(estimates, started, strict=True) if not s) / sum(estimates)
    began = time.perf_counter()
    deadline = began + plan["seconds"] * left_share
    members = []
    try:
        for index, backbone in enumerate(backbones):
            to_come = sum(e for e, s in zip(estimates[index:], started[index:], strict=True) if not s)
            share = (deadline - time.perf_counter()) * estimates[index] / to_come if not started[index] else 0.0
            members.append(member_run(recipe, backbone, folder.path, share, quiet, on_epoch))
        result = score_ensemble(recipe, split, folder, members)
    except KeyboardInterrupt:  # the ensemble resumes as a whole, not the member that was training (or scoring)
        plan["elapsed"] = plan.get("elapsed", 0.0) + time.perf_counter() - began
        save_plan(folder, plan)
        raise Interrupted(folder.path, True) from None
    spent = plan.get("elapsed", 0.0) + time.perf_counter() - began
    budget = spent_line(recipe.run.budget, spent, plan.get("planning", 0.0), plan.get("sessions", 1))
    add_to_summary(folder.path, [budget, *plan.get("choice", [])])
    plan["result"] = {
        "row": result.history[0],
        "classes": result.classes,
        "test": result.test,
        "monitor": result.monitor,
    }
    save_plan(folder, plan)
    log.info("ensemble trained in %s: %s", format_duration(time.perf_counter() - began), folder.path)
    return result


def fitted_rule(val_scores: np.ndarray) -> UnknownRule:
    """The threshold on the ensemble's score that keeps new known images known (split conformal, as each member's)."""
    scores = torch.from_numpy(val_scores)
    threshold = threshold_for(scores)
    return UnknownRule(threshold, ENSEMBLE_METHOD, float((scores > threshold).double().mean()))


def unknown_summary_line(rule: UnknownRule | None, val_images: int, on_test: Evaluation | None) -> str:
    if rule is None:
        return "unknown images: not flagged (a member has no detector)"
    test = f"; it flags {on_test.unknown['rate']:.1%} of the test images" if on_test and on_test.unknown else ""
    return f"unknown images: {rule.method}, threshold {rule.threshold:.4g} flags {rule.val_rate:.1%} of {val_images} val images{test}"


def save_plan(folder: RunFolder, plan: dict) -> None:
    folder.write_text(PLAN_FILE, json.dumps(plan, indent=1))


def spent_line(budget: str | None, spent: float, planning: float, sessions: int = 1) -> str:
    """What a budgeted run took: its time over every session it needed, planning included."""
    over = f" over {sessions} sessions" if sessions > 1 else ""
    return f"budget: {budget}, spent {format_duration(spent)}{over} (planning {format_duration(planning)})"


def add_to_summary(run_dir: Path, lines: list[str]) -> None:
    """`lines` logged and appended to the run's summary.txt (one atomic write), where it has one."""
    summary = run_dir / SUMMARY_FILE
    if summary.is_file():
        atomic_write(summary, (summary.read_text() + "\n".join(lines) + "\n").encode())
    for line in lines:
        log.info(line)


def score_ensemble(recipe: Recipe, split: DataSplit, folder: RunFolder, members: list[TrainResult]) -> TrainResult:
    """The ensemble scored on val (where its unknown-image threshold is fitted) and test, ensemble.json, its summary."""
    predictor, hw = scoring_predictor(recipe, [member.run_dir for member in members])
    on_val = predictor.evaluate_samples(split.val, where="val")
    assert isinstance(on_val, Evaluation)  # an ensemble is single-label (headstart.deploy.ensemble)
    if on_val.unknown_scores is not None:
        predictor.unknown = fitted_rule(on_val.unknown_scores)
    write_ensemble_folder(folder.path, [member.run_dir for member in members], predictor.unknown)
    val = scored(on_val, len(split.val))
    on_test = predictor.evaluate_samples(split.test, where="test") if split.test else None
    assert on_test is None or isinstance(on_test, Evaluation)
    test = scored(on_test, len(split.test)) if on_test is not None else None
    lines = [f"ensemble of {len(members)} models (the mean of their calibrated probabilities):"]
    for member in members:
        own = f", test acc {member.test['acc']:.4f}" if member.test else ""
        lines.append(f"  {member.run_dir.name}: val acc {member.best['val_acc']:.4f}{own}")
    lines.append(f"scored on {hw.describe()}, as each run scores its splits (headstart.load runs it in fp32)")
    lines.append("val: " + " ".join(f"{k} {v:.4f}" for k, v in val.items() if k != "images"))
    if test is not None:
        lines.append(
            f"test ({test['images']} images): " + " ".join(f"{k} {v:.4f}" for k, v in test.items() if k != "images")
        )
    lines.append(unknown_summary_line(predictor.unknown, len(split.val), on_test))
    folder.write_text(SUMMARY_FILE, "\n".join(lines) + "\n")
    for line in lines:
        log.info(line)
    row = {
        "epoch": 1,
        "stage": "ensemble",
        "val_loss": val["loss"],
        **{f"val_{k}": v for k, v in val.items() if k not in ("images", "loss")},
    }
    return TrainResult(folder.path, [row], members[0].classes, test, members[0].monitor)
