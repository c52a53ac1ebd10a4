"""The experiment trackers a recipe may name in `run.log`, each with the class that feeds it.

A new tracker is one module under headstart/training/trackers/ (a class taking (run_dir, recipe)
with `log_epoch(step, row)` and `close()`) plus one line here. The recipe's allowed names and the
CLI's `--log` choices are read from this dict. Classes are named by "module:Class" strings, not
imported: config may not import training (tests/test_architecture.py), and a tracker's library
loads only in runs that use it (headstart.training.tracking.open_trackers).
"""

from __future__ import annotations

TRACKERS: dict[str, str] = {
    "tensorboard": "headstart.training.trackers.tensorboard:TensorBoardTracker",
    "mlflow": "headstart.training.trackers.mlflow:MLflowTracker",
    "wandb": "headstart.training.trackers.wandb:WandbTracker",
}
