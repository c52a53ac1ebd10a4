"""After the stages: the chosen model scored on the test split once, then its temperature fitted on val.

Nothing is chosen by the test split; the temperature goes into best.pt (and every export), with
reliability.png and a line for summary.txt.
"""

from __future__ import annotations

import logging

import torch

from headstart.core.checkpoint import load_checkpoint
from headstart.core.plots import plot_reliability
from headstart.core.runs import BEST_FILE, RELIABILITY_FILE, RunFolder
from headstart.data.batches import make_loader
from headstart.tasks.calibration import Calibration, calibrate
from headstart.tasks.metrics import score_batches
from headstart.tasks.single_label import SINGLE_LABEL
from headstart.training.hooks import BestModel, Notes
from headstart.training.session import Session

log = logging.getLogger("headstart")


def score_test(session: Session, best: BestModel, run: RunFolder) -> None:
    """Score the chosen model (best.pt's weights) on the test split, once, into history.json's test record."""
    if best.state is not None:
        session.model.load_state_dict(best.state)
    data, hw, group, test_set = session.recipe.data, session.hw, session.group, session.data.test
    assert test_set is not None  # run_stages scores only a run that has a test split
    pin = hw.device.type == "cuda"
    loader = make_loader(
        test_set, data.batch_size, False, data.workers, session.recipe.run.seed, pin, group.rank, group.world
    )
    test, _ = score_batches(session.model, loader, SINGLE_LABEL, hw, group, len(session.classes))
    chosen = f"{best.row['stage']} epoch {best.row['epoch']}"
    run.set_test({"images": len(test_set), "model": chosen, **test})
    log.info(
        "test (%d images, %s): loss %.4f acc %.4f balanced_acc %.4f f1 %.4f",
        *(len(test_set), chosen, test["loss"], test["acc"], test["balanced_acc"], test["f1"]),
    )


def val_logits(session: Session) -> tuple[torch.Tensor, torch.Tensor]:
    """The current model's logits and the labels over the whole val split (one process: calibration is rank 0's)."""
    data, hw, model = session.recipe.data, session.hw, session.model
    loader = make_loader(session.data.val, data.batch_size, False, data.workers, session.recipe.run.seed)
    model.eval()
    logits, labels = [], []
    with torch.no_grad():
        for inputs, targets in loader:
            with hw.autocast():
                logits.append(model(hw.to_input(inputs)).float().cpu())
            labels.append(targets)
    return torch.cat(logits), torch.cat(labels)


def calibrate_best(session: Session, best: BestModel, run: RunFolder, notes: Notes) -> Calibration | None:
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
    calibration = calibrate(*val_logits(session))
    checkpoint.temperature = calibration.temperature if calibration.applied else None
    checkpoint.calibration = calibration.to_dict()
    run.save_checkpoint(BEST_FILE, checkpoint)
    plot_reliability(calibration, run.path / RELIABILITY_FILE)
    notes.add(calibration.summary_line())
    return calibration
