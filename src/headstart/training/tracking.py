"""Optional experiment tracking through the libraries' own writers: TensorBoard and MLflow (both off by default).

    run:
      log: [tensorboard]            # RUN_DIR/tensorboard/, then: tensorboard --logdir runs/
      log: [mlflow]                 # to $MLFLOW_TRACKING_URI (mlflow's default when unset)

Every epoch's numbers go to each tracker with the epoch (counted over all stages) as the step;
MLflow also gets the recipe as parameters and the run folder's files as artifacts at the end.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from headstart.config.recipe import flatten
from headstart.core.errors import HeadstartError

log = logging.getLogger("headstart")

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc", "val_f1", "lr", "seconds")


class Tracker(Protocol):
    def log_epoch(self, step: int, row: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class TensorBoardTracker:
    def __init__(self, run_dir: Path, recipe_yaml: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise HeadstartError("run.log tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("recipe", f"```\n{recipe_yaml}\n```")

    def log_epoch(self, step: int, row: dict[str, Any]) -> None:
        for name in METRICS:
            # train/ and val/ prefixes put train and val curves of one metric side by side in TensorBoard.
            tag = (
                f"{name.split('_')[0]}/{name.split('_', 1)[1]}"
                if name.startswith(("train_", "val_"))
                else f"run/{name}"
            )
            self.writer.add_scalar(tag, row[name], step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowTracker:
    def __init__(self, run_dir: Path, recipe: dict[str, Any]):
        try:
            import mlflow
        except ImportError:
            raise HeadstartError(
                "run.log mlflow needs the mlflow package: pip install mlflow-skinny (or mlflow)"
            ) from None
        self.mlflow, self.run_dir = mlflow, run_dir
        mlflow.set_experiment("headstart")
        self.run = mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params({key: str(value)[:500] for key, value in flatten(recipe).items()})

    def log_epoch(self, step: int, row: dict[str, Any]) -> None:
        self.mlflow.log_metrics({name: float(row[name]) for name in METRICS}, step=step)

    def close(self) -> None:
        self.mlflow.log_artifacts(str(self.run_dir), artifact_path="run")
        self.mlflow.end_run()


def open_trackers(names: list[str], run_dir: Path, recipe) -> list[Tracker]:
    trackers: list[Tracker] = []
    for name in names:
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(run_dir, recipe.to_yaml()))
        elif name == "mlflow":
            trackers.append(MLflowTracker(run_dir, recipe.to_dict()))
    return trackers
