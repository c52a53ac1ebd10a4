"""After calibration: the unknown-image detector of best.pt's weights, fitted on the train split, thresholded on val.

The train images go through the eval transform (no augmentation), as images to predict will; at
most MAX_TRAIN_IMAGES of them (a seeded sample), since class means and one covariance need far
fewer than a large data set holds, and where the features are not cached (training.outputs) the pass costs
an eval epoch over them.
"""

from __future__ import annotations

import logging

import torch

from headstart.core.checkpoint import load_checkpoint
from headstart.core.runs import BEST_FILE, RunFolder
from headstart.tasks.unknown import UnknownDetector, fit_unknown
from headstart.training.hooks import BestModel, Notes
from headstart.training.outputs import ModelOutputs
from headstart.training.session import Session

log = logging.getLogger("headstart")

MAX_TRAIN_IMAGES = 20_000


def sampled_rows(count: int, most: int, seed: int) -> list[int] | None:
    """At most `most` of `count` training images, a seeded sample (None: all of them)."""
    if count <= most:
        return None
    return sorted(torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:most].tolist())


def wants_unknown(session: Session) -> bool:
    return session.recipe.run.unknown and session.task.name == "single-label"


def fit_unknown_best(
    session: Session, best: BestModel, run: RunFolder, notes: Notes, outputs: ModelOutputs
) -> UnknownDetector | None:
    """Fit the detector for best.pt's weights unless run.unknown is off or best.pt holds one (a resumed run).

    A multi-label model gets none: an image with no tag above its threshold is already its "none of these".
    """
    if not wants_unknown(session) or best.state is None or not session.group.is_main:
        return None
    if not (run.path / BEST_FILE).is_file():
        return None
    checkpoint = load_checkpoint(run.path / BEST_FILE)
    if checkpoint.unknown is not None:
        detector = UnknownDetector.from_dict(checkpoint.unknown)
        notes.add(detector.summary_line())
        return detector
    session.model.load_state_dict(best.state)
    rows = sampled_rows(len(session.data.train), MAX_TRAIN_IMAGES, session.recipe.run.seed)
    train_features, train_labels = outputs.penultimate("train", rows)
    val_features, _ = outputs.penultimate("val")
    detector = fit_unknown(train_features, train_labels, val_features)
    checkpoint.unknown = detector.to_dict()
    run.save_checkpoint(BEST_FILE, checkpoint)
    notes.add(detector.summary_line())
    return detector
