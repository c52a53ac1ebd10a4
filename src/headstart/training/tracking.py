"""Optional experiment tracking through the libraries' own writers (all off by default).

    run:
      log: [tensorboard]            # RUN_DIR/tensorboard/, then: tensorboard --logdir runs/
      log: [mlflow]                 # to $MLFLOW_TRACKING_URI (mlflow's default when unset)
      log: [wandb]                  # Weights & Biases (WANDB_MODE=offline: RUN_DIR/wandb/, then wandb sync)

Every epoch's numbers go to each tracker with the epoch (counted over all stages) as the step;
MLflow also gets the recipe as parameters and the run folder's files as artifacts at the end, W&B
the recipe as config and curves.png.
The trackers are registered by name in headstart.config.trackers, one module each in
headstart.training.trackers.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from headstart.config.trackers import TRACKERS
from headstart.core.runs import HISTORY_FIELDS

# Logged where the row has them (single-label rows have balanced accuracy and F1, multi-label rows mAP and the rest).
METRICS = tuple(f for f in HISTORY_FIELDS if f.startswith(("train_", "val_")) or f in ("lr", "seconds"))


class Tracker(Protocol):
    def log_epoch(self, step: int, row: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def tracker_class(name: str) -> type:
    """The class registered for `name` in TRACKERS, imported now (its library loads only for runs that use it)."""
    module, _, attribute = TRACKERS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def open_trackers(names: list[str], run_dir: Path, recipe) -> list[Tracker]:
    return [tracker_class(name)(run_dir, recipe) for name in names]
