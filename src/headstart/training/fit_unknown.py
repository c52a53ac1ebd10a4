"""After calibration: the unknown-image detector of best.pt's weights, fitted on the train split, thresholded on val.

The train images go through the eval transform (no augmentation), as images to predict will; at
most MAX_TRAIN_IMAGES of them (a seeded sample), since class means and one covariance need far
fewer than a large data set holds and the pass costs an eval epoch over them.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset, Subset

from headstart.core.checkpoint import load_checkpoint
from headstart.core.runs import BEST_FILE, RunFolder
from headstart.data.batches import make_loader
from headstart.data.images import ImageDataset, train_view
from headstart.tasks.unknown import UnknownDetector, fit_unknown
from headstart.training.hooks import BestModel, Notes
from headstart.training.session import Session

log = logging.getLogger("headstart")

MAX_TRAIN_IMAGES = 20_000


def penultimate_features(session: Session, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The current model's penultimate features and the labels of `dataset`, in eval mode (rank 0 alone)."""
    data, hw, model = session.recipe.data, session.hw, session.model
    loader = make_loader(dataset, data.batch_size, False, data.workers, session.recipe.run.seed)
    model.eval()
    features, labels = [], []
    with torch.no_grad():
        for inputs, targets in loader:
            # In float32, without the run's autocast: predict runs float32, and the threshold must hold there.
            features.append(model.penultimate(hw.to_input(inputs)).float().cpu())
            labels.append(targets)
    return torch.cat(features), torch.cat(labels)


def sampled(dataset: ImageDataset, count: int, seed: int) -> Dataset:
    """At most `count` of the images, a seeded sample (decoded images stay where they are: memory or disk)."""
    if len(dataset) <= count:
        return dataset
    keep = sorted(torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count].tolist())
    return Subset(dataset, keep)


def wants_unknown(session: Session) -> bool:
    return session.recipe.run.unknown and session.task.name == "single-label"


def fit_unknown_best(session: Session, best: BestModel, run: RunFolder, notes: Notes) -> UnknownDetector | None:
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
    plain_train = sampled(train_view(session.data, "none"), MAX_TRAIN_IMAGES, session.recipe.run.seed)
    train_features, train_labels = penultimate_features(session, plain_train)
    val_features, _ = penultimate_features(session, session.data.val)
    detector = fit_unknown(train_features, train_labels, val_features)
    checkpoint.unknown = detector.to_dict()
    run.save_checkpoint(BEST_FILE, checkpoint)
    notes.add(detector.summary_line())
    return detector
