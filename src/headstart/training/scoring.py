"""After the stages: the chosen model's temperature fitted on val, then the test split scored once.

Nothing is chosen by the test split; the temperature (and a multi-label model's per-tag thresholds,
chosen on val for F1) go into best.pt and every export, with reliability.png and lines for
summary.txt; the test split is scored with them.
"""

from __future__ import annotations

import logging

import torch

from headstart.core.checkpoint import load_checkpoint
from headstart.core.plots import plot_reliability
from headstart.core.runs import BEST_FILE, RELIABILITY_FILE, RunFolder
from headstart.tasks.calibration import Calibration, calibrate
from headstart.tasks.metrics import TagDecision, score_batches
from headstart.tasks.multi_label import MULTI_LABEL
from headstart.tasks.tag_metrics import (
    choose_thresholds,
    per_tag_table,
    shared_cut,
    tag_scores,
    thresholds_or_default,
)
from headstart.training.hooks import BestModel, Notes
from headstart.training.outputs import ModelOutputs
from headstart.training.session import Session

log = logging.getLogger("headstart")


def score_test(session: Session, best: BestModel, run: RunFolder, outputs: ModelOutputs) -> None:
    """Score the chosen model (best.pt's weights) on the test split, once, into history.json's test record.

    A multi-label model is scored with the temperature and per-tag thresholds chosen on val (best.pt's).
    """
    if best.state is not None:
        session.model.load_state_dict(best.state)
    hw, group, test_set = session.hw, session.group, session.data.test
    assert test_set is not None  # run_stages scores only a run that has a test split
    module, batches = outputs.scoring("test")
    decision = group.share(tag_decision(session, run)) if session.task is MULTI_LABEL else None
    kind = session.recipe.run.multi_label_loss
    test = score_batches(module, batches, session.task, hw, group, len(session.classes), kind, decision)
    chosen = f"{best.row['stage']} epoch {best.row['epoch']}"
    run.set_test({"images": len(test_set), "model": chosen, **test})
    scores = " ".join(f"{name} {test[name]:.4f}" for name in session.task.metrics)
    log.info("test (%d images, %s): %s", len(test_set), chosen, scores)


def tag_decision(session: Session, run: RunFolder) -> TagDecision | None:
    """best.pt's temperature and thresholds (rank 0 reads them; the caller shares them)."""
    if not session.group.is_main or not (run.path / BEST_FILE).is_file():
        return None
    checkpoint = load_checkpoint(run.path / BEST_FILE)
    thresholds = thresholds_or_default(checkpoint.thresholds, len(session.classes)).tolist()
    return TagDecision(checkpoint.temperature, thresholds, session.classes)


def calibrate_best(
    session: Session, best: BestModel, run: RunFolder, notes: Notes, outputs: ModelOutputs
) -> Calibration | None:
    """Fit the temperature of best.pt's weights on the val split; best.pt, reliability.png and the notes get it.

    best.pt holds a temperature only where cross-validation on the val split found that it helps;
    its "calibration" record (and the summary line) says what was measured either way.
    """
    if best.state is None or not session.group.is_main or not (run.path / BEST_FILE).is_file():
        return None
    checkpoint = load_checkpoint(run.path / BEST_FILE)
    if checkpoint.calibration is not None:  # a resumed run calibrated before it was killed: keep what it found
        calibration = Calibration.from_dict(checkpoint.calibration)
        notes.add(calibration.summary_line())
        return calibration
    session.model.load_state_dict(best.state)
    logits, labels = outputs.val_logits()
    calibration = calibrate(logits, labels, task=session.task)
    checkpoint.temperature = calibration.temperature if calibration.applied else None
    checkpoint.calibration = calibration.to_dict()
    if session.task is MULTI_LABEL:
        checkpoint.thresholds = fit_thresholds(logits, labels, checkpoint.temperature, session.classes, notes)
    run.save_checkpoint(BEST_FILE, checkpoint)
    plot_reliability(calibration, run.path / RELIABILITY_FILE)
    notes.add(calibration.summary_line())
    return calibration


def fit_thresholds(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float | None, tags: list[str], notes: Notes
) -> list[float]:
    """Per tag, the F1-best threshold on val (calibrated probabilities), shrunk toward one shared threshold by
    THRESHOLD_PRIOR pseudo-positives (tasks.tag_metrics); the notes get the per-tag table."""
    probabilities = MULTI_LABEL.probabilities(logits, temperature).numpy()
    truth = labels.numpy()
    shared = shared_cut(probabilities, truth)
    thresholds = choose_thresholds(probabilities, truth, shared=shared)
    plain, chosen = tag_scores(probabilities, truth), tag_scores(probabilities, truth, thresholds)
    notes.add(
        f"thresholds: one per tag, chosen for F1 on {len(truth)} val images (each shrunk toward the shared "
        f"{shared:.3f} by its positives): micro-F1 {plain['f1_micro']:.4f} at 0.5 "
        f"-> {chosen['f1_micro']:.4f}, macro-F1 {plain['f1_macro']:.4f} -> {chosen['f1_macro']:.4f} "
        f"(on the images they were chosen on: the test split, where there is one, says it honestly); mAP {chosen['map']:.4f}"
    )
    for row in per_tag_table(probabilities, truth, thresholds, tags):
        ap = "n/a" if row["average_precision"] is None else f"{row['average_precision']:.3f}"
        notes.add(
            f"  val {row['label']}: threshold {row['threshold']:.3f} precision {row['precision']:.3f} "
            f"recall {row['recall']:.3f} f1 {row['f1']:.3f} AP {ap} ({row['support']} positives)"
        )
    return [float(t) for t in thresholds]
