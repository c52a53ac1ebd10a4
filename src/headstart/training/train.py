"""Training a recipe: prepare the session, open (or reopen) the run folder, run the stages, write the summary.

Example:
    >>> import headstart
    >>> result = headstart.train("recipes/003_two_stage_vgg16.yaml")
    >>> result.best["val_acc"], result.run_dir
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from headstart.config.defaults import as_recipe
from headstart.config.recipe import Recipe
from headstart.core.checkpoint import ResumeState, load_checkpoint
from headstart.core.distributed import Group, leave
from headstart.core.errors import HeadstartError, Interrupted
from headstart.core.plots import plot_curves
from headstart.core.runs import (
    BEST_FILE,
    CURVES_FILE,
    LAST_FILE,
    PSEUDO_FILE,
    RECIPE_FILE,
    RUN_FILES,
    SUMMARY_FILE,
    RunFolder,
    read_history,
    read_test,
)
from headstart.model.freeze import count_parameters
from headstart.tasks.metrics import best_index
from headstart.training.fit_unknown import fit_unknown_best, wants_unknown
from headstart.training.hooks import Notes
from headstart.training.outputs import ModelOutputs
from headstart.training.precision import cpu_name
from headstart.training.resume import ResumePoint, set_rng_state
from headstart.training.scoring import calibrate_best, score_test
from headstart.training.session import Session, ensure_console, open_hardware, prepare, resolve, warn_if_cpu_busy
from headstart.training.stages import EpochCallback, Trainer
from headstart.training.tracking import open_trackers

log = logging.getLogger("headstart")


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


def default_run_name(recipe: Recipe, data_name: str) -> str:
    return recipe.run.name or f"{data_name}-{recipe.model.backbone}"


def train(
    recipe: Recipe | str | Path | dict | None = None,
    *,
    quiet: bool = False,
    resume: str | Path | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Run every stage of `recipe` (a Recipe, a YAML path, a dict, or None for the embedded default).

    Writes the run folder described in headstart.core.runs and returns its history. `resume=RUN_DIR`
    continues an interrupted run from its last finished epoch, with its own saved recipe.
    Under a distributed launcher (torchrun, accelerate launch) each process trains its share.
    `on_epoch(epochs_done, row)` is called after each epoch's history row is written (one process:
    tune's pruner); an exception it raises ends the run there, resumable (best.pt and last.pt, which
    within a stage are written at most every few seconds, get that epoch first), and reaches the
    caller unchanged.
    """
    point = None
    if resume is not None:
        if recipe is not None:
            raise HeadstartError("a resumed run uses the recipe saved in its folder; give the run folder alone")
        point = ResumePoint.read(resume)
        recipe = point.recipe
    recipe = resolve(as_recipe(recipe))
    hw, group = open_hardware(recipe)
    quiet = quiet or not group.is_main
    ensure_console(quiet)
    try:
        session = prepare(recipe, hw, group, check_data=point is None)
        # After the data is found and listed: a missing folder is the one message, not a CPU note first.
        warn_if_cpu_busy(hw, group)
        return _train(session, quiet, point, on_epoch)
    finally:
        leave(group)


def _train(
    session: Session, quiet: bool, point: ResumePoint | None, on_epoch: EpochCallback | None = None
) -> TrainResult:
    recipe, group, classes = session.recipe, session.group, session.classes
    if point is None:
        run = _new_run_folder(recipe, session.data.split.name, group)
    else:
        run = _reopen_run_folder(point, classes, group)
        session.model.load_state_dict(point.checkpoint.raw_model or point.checkpoint.model)
        if point.finished(recipe):
            missing = missing_after_stages(session, run)
            if not missing:
                log.info("%s finished all its stages already; nothing to resume", run.path)
                return TrainResult(run.path, run.history, classes, run.test, recipe.run.monitor)
            said = ", ".join(missing[:-1]) + " and " + missing[-1] if len(missing) > 1 else missing[0]
            log.info("%s finished all its stages but not its %s: doing that now", run.path, said)
    log_start(session, run, point)
    if session.pseudo is not None and group.is_main:
        run.write_text(PSEUDO_FILE, session.pseudo.csv_text(classes))
    trackers = start_trackers(recipe, run, point) if group.is_main else []
    trainer = Trainer(session, run, trackers, Notes(point.state.stage_notes if point else None), on_epoch)
    started = time.perf_counter() - (point.state.elapsed if point else 0.0)
    first_stage, inside = 0, None
    if point is not None:
        trainer.best.reload(run)
        trainer.average.load(point.checkpoint.model)
        first_stage = point.state.stage_index
        if not point.stage_done(recipe):
            inside = point.state  # stopped inside a stage: run_stage continues it
        else:
            first_stage += 1  # stopped between stages: the next one starts as it would have
            set_rng_state(point.state.rng)
    try:
        run_stages(trainer, first_stage, inside, started)
    except HeadstartError as err:
        raise HeadstartError(f"{err}; {kept_files(run.path)}") from None
    except KeyboardInterrupt:
        raise Interrupted(run.path, (run.path / LAST_FILE).is_file()) from None
    best = trainer.best
    log.info(
        "best (%s): epoch %d (%s) val_loss %.4f val_acc %.4f; files in %s",
        *(recipe.run.monitor, best.epoch, best.row["stage"], best.row["val_loss"], best.row["val_acc"], run.path),
    )
    return TrainResult(run.path, run.history, classes, run.test, recipe.run.monitor)


def start_trackers(recipe: Recipe, run: RunFolder, point: ResumePoint | None) -> list:
    """The run's trackers; where one cannot start (W&B not logged in), a run folder made for this run goes too."""
    try:
        return open_trackers(recipe.run.log, run.path, recipe)
    except HeadstartError as err:
        if point is None:  # nothing trained in it yet: an empty run folder would only mislead compare and report
            shutil.rmtree(run.path, ignore_errors=True)
        raise HeadstartError(f"{err} (no run folder was kept)" if point is None else str(err)) from None


def log_start(session: Session, run: RunFolder, point: ResumePoint | None) -> None:
    recipe, data, group = session.recipe, session.data, session.group
    resuming = f" (resuming after {point.checkpoint.stage} epoch {point.checkpoint.epoch})" if point else ""
    log.info(
        "headstart: %s, %d classes, %d train / %d val images -> %s%s",
        data.split.name,
        len(session.classes),
        len(data.train),
        len(data.val),
        run.path,
        resuming,
    )
    processes = f", {group.world} processes" if group.active else ""
    log.info(
        "model: %s (weights: %s), input %dpx, on %s%s",
        recipe.model.backbone,
        recipe.model.weights,
        data.preprocessing["image_size"],
        session.hw.describe(),
        processes,
    )


def missing_after_stages(session: Session, run: RunFolder) -> list[str]:
    """What a run whose stages all finished still lacks (killed before it): its test score, calibration, summary."""
    missing = ["test score"] if has_test_split(session) and run.test is None else []
    # Read on every process, so that all of them go on (or stop) together.
    best = load_checkpoint(run.path / BEST_FILE) if (run.path / BEST_FILE).is_file() else None
    if best is not None and best.calibration is None:
        missing.append("calibration")
    if best is not None and best.unknown is None and wants_unknown(session):
        missing.append("unknown-image detector")
    if not (run.path / SUMMARY_FILE).is_file():  # killed after calibrating, before the summary was written
        missing.append("summary")
    return missing


def has_test_split(session: Session) -> bool:
    return session.data.test is not None and len(session.data.test) > 0


def run_stages(trainer: Trainer, first: int, inside: ResumeState | None, started: float) -> None:
    """Every stage from `first` on; the curves and summary are written whatever happens, once an epoch finished.

    Then the calibration (with a multi-label model's thresholds), the unknown-image detector and the
    test score, each unless the run holds it already (a resumed run that was killed between them).
    """
    run, session = trainer.run, trainer.session
    try:
        try:
            run_each_stage(trainer, first, inside, started)
        finally:
            trainer.checkpoints.flush()  # the last finished epoch, whatever stopped the run (Ctrl-C included)
        # From the last cached stage's stored features where they hold for the chosen weights: no image runs again.
        outputs = ModelOutputs(session, trainer.build.cache_in_use)
        calibrate_best(session, trainer.best, run, trainer.notes, outputs)
        if has_test_split(session) and run.test is None:
            score_test(session, trainer.best, run, outputs)  # once, with the chosen weights; nothing is chosen by it
        fit_unknown_best(session, trainer.best, run, trainer.notes, outputs)
    finally:
        if run.history and session.group.is_main:
            kept = best_index(run.history, trainer.recipe.run.monitor) + 1
            plot_curves(run.history, run.path / CURVES_FILE, title=run.path.name, best=kept)
            run.write_text(SUMMARY_FILE, run_summary(trainer, time.perf_counter() - started))
        for tracker in trainer.trackers:
            tracker.close()


def run_each_stage(trainer: Trainer, first: int, inside: ResumeState | None, started: float) -> None:
    for index in range(first, len(trainer.recipe.stages)):
        if trainer.budget_spent():
            trainer.notes.add(f"stage '{trainer.recipe.stages[index].name}' skipped: run.budget is spent")
            break
        trainer.run_stage(index, started, inside if index == first else None)


def kept_files(run_dir: Path) -> str:
    """What a stopped run's folder holds, said as it is (after a failure in epoch 1 that is recipe.yaml alone)."""
    names = sorted(p.name for p in run_dir.glob("*") if p.name in RUN_FILES) if run_dir.is_dir() else []
    held = f"{run_dir} keeps {', '.join(names)}" if names else f"{run_dir} holds no run files"
    return held if BEST_FILE in names else f"{held} (no epoch finished)"


def _new_run_folder(recipe: Recipe, data_name: str, group: Group) -> RunFolder:
    """Rank 0 makes the folder and tells the other processes its name; they write nothing."""
    path = RunFolder.create(recipe.run.out_dir, default_run_name(recipe, data_name)).path if group.is_main else None
    run = RunFolder(Path(group.share(str(path) if path else None)), writes=group.is_main)
    run.write_text(RECIPE_FILE, recipe.to_yaml())
    return run


def _reopen_run_folder(point: ResumePoint, classes: list[str], group: Group) -> RunFolder:
    """The interrupted run's folder with its history up to the last epoch whose checkpoint was written."""
    if point.checkpoint.classes != classes:
        raise HeadstartError(
            f"cannot resume {point.run_dir}: its classes {point.checkpoint.classes} differ from the data's now {classes}"
        )
    run = RunFolder(point.run_dir, writes=group.is_main)
    if removed := run.remove_partial_writes():
        log.info("removed %d file(s) the interrupted run left half-written: %s", len(removed), ", ".join(removed))
    # history.json is written before last.pt: a kill between the two leaves one row too many.
    run.history = read_history(point.run_dir)[: point.state.epochs_done]
    run.test = read_test(point.run_dir)  # written after the last epoch: only a finished run has one
    return run


def run_summary(trainer: Trainer, seconds: float) -> str:
    split, recipe, best = trainer.session.data.split, trainer.recipe, trainer.best.row
    trainable, frozen = count_parameters(trainer.model)
    final = trainer.run.history[-1]
    lines = [
        f"run: {trainer.run.path}",
        f"data: {recipe.data.path or 'embedded digits'} ({split.name}): {len(split.classes)} classes, "
        f"{len(split.train)} train / {len(split.val)} val / {len(split.test)} test images, {len(split.skipped)} skipped",
        split.describe(),
        f"task: {split.task}, balance: {recipe.data.balance}, monitor: {recipe.run.monitor}",
        f"classes: {', '.join(split.classes)}",
        f"model: {' -> '.join([a.kind for a in recipe.model.adapters] + [recipe.model.backbone, recipe.model.head.kind])}, "
        f"weights {recipe.model.weights}, {trainable + frozen:,} parameters",
        f"preprocessing: {trainer.session.data.preprocessing}",
        f"hardware: {trainer.session.hw.describe()}, torch {torch.__version__}, {cpu_name()}",
        *([trainer.session.hardware_note] if trainer.session.hardware_note else []),
        *([trainer.session.pseudo.describe(split.classes)] if trainer.session.pseudo else []),
        *trainer.notes.lines,
        f"best: epoch {trainer.best.epoch} ({best['stage']} {best['epoch']}) "
        f"val_loss {best['val_loss']:.4f} val_acc {best['val_acc']:.4f}",
        f"final: val_loss {final['val_loss']:.4f} val_acc {final['val_acc']:.4f}",
        *score_lines(trainer),
        f"epochs: {len(trainer.run.history)}, wall time {seconds:.1f}s",
    ]
    return "\n".join(lines) + "\n"


def score_lines(trainer: Trainer) -> list[str]:
    """The best epoch's class-averaged (or, multi-label, tag) scores, and the test split's when there is one."""
    best, task = trainer.best.row, trainer.session.task
    nan = float("nan")
    more = " ".join(f"val_{name} {best.get(f'val_{name}', nan):.4f}" for name in task.metrics[2:])
    lines = [f"best {'balanced' if task.name == 'single-label' else 'tags (at 0.5)'}: {more}"]
    test = trainer.run.test
    if test:
        scores = " ".join(f"{name} {test.get(name, nan):.4f}" for name in task.metrics)
        lines.append(f"test ({test['images']} images, {test['model']}): {scores}")
        for row in test.get("per_label", []):
            ap = "n/a" if row["average_precision"] is None else f"{row['average_precision']:.3f}"
            lines.append(
                f"  test {row['label']}: precision {row['precision']:.3f} recall {row['recall']:.3f} "
                f"f1 {row['f1']:.3f} AP {ap} ({row['support']} positives)"
            )
    precision = trainer.session.hw.precision
    if precision != "fp32":  # the run scores in its own precision; loading and the exports compute in fp32
        lines.append(
            f"scores above computed in {precision}, as trained; `headstart evaluate`, `load` and the exports compute "
            "in fp32, which can move a few images either way (BENCHMARKS.md, 'A budget')"
        )
    return lines
